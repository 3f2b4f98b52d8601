"""Relative paths in schedules.yaml: resolved against the config file's folder."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationInfo


def root_of(info: ValidationInfo) -> Path:
    """The folder relative paths start from: the config file's, passed as validation context."""
    return Path((info.context or {}).get("root") or Path.cwd())


def absolute(path: Path, root: Path) -> Path:
    """`path` (`~` expanded) made absolute against `root`, without resolving symlinks."""
    return Path(os.path.normpath(root / path.expanduser()))
