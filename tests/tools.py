"""The outside tools the email-quality tests drive, found on this machine or reported missing.

A missing tool skips its tests with the reason, unless the run demands it:
MAILER_TEST_REQUIRE_BROWSER=1 (Chromium) or MAILER_TEST_REQUIRE_TOOLS=1 (mjml, SpamAssassin)
turn the skip into a failure, so CI cannot pass by quietly testing less.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
# Debian's Chromium, driven by Playwright; Playwright never downloads a browser of its own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
# Where scripts/test installs the official mjml package from npm.
MJML_CANDIDATES = [REPO / ".cache/node/node_modules/.bin/mjml", REPO / "node_modules/.bin/mjml"]


def _required(variable: str) -> bool:
    return os.environ.get(variable, "") not in ("", "0")


def _missing(reason: str, variable: str) -> None:
    if _required(variable):
        pytest.fail(f"{variable}=1 but {reason}")
    pytest.skip(reason)


def chromium() -> str:
    """Chromium's executable, with Playwright's Python package to drive it."""
    path = os.environ.get("MAILER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        _missing("Debian's chromium is not installed (apt-get install chromium)",
                 "MAILER_TEST_REQUIRE_BROWSER")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("Playwright's Python package is missing (pip install -e '.[test]')",
                 "MAILER_TEST_REQUIRE_BROWSER")
    return path


def mjml() -> str:
    """The official mjml command line (npm), as installed by scripts/test."""
    found = next((str(p) for p in MJML_CANDIDATES if p.exists()), None) or shutil.which("mjml")
    if found is None:
        _missing("the official mjml CLI is not installed (scripts/test installs it with npm "
                 "into .cache/node)", "MAILER_TEST_REQUIRE_TOOLS")
    assert found is not None
    return found


def spamassassin() -> str:
    """Debian's spamassassin command."""
    found = shutil.which("spamassassin")
    if found is None:
        _missing("SpamAssassin is not installed (apt-get install spamassassin)",
                 "MAILER_TEST_REQUIRE_TOOLS")
    assert found is not None
    return found


def artifact(name: str) -> Path:
    """A path under test-artifacts/ (git-ignored) for a file worth looking at after a run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


@cache
def png(width: int, height: int) -> bytes:
    """A plain grey PNG of the given size: stands in for an issue's remote images offline."""
    row = b"\x00" + b"\x9c\xa3\xaf" * width
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(row * height, 9)) + chunk(b"IEND", b""))
