"""The starter project `mailer init` writes: schedules.yaml, templates/ and one sample issue.

The files are not kept here twice. `mailer/starter/` holds relative symlinks to the repository's
own `schedules.yaml`, `templates/` and `content/`, so the example a developer edits is the one
users get; setuptools follows the links when it builds a wheel and ships real files.
"""

from __future__ import annotations

import contextlib
import os
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

from mailer.errors import InputError, MailerError

__all__ = ["starter_files", "write"]

#: What a starter consists of, relative to the starter root, and whether each is a folder.
PARTS = (("schedules.yaml", False), ("templates", True), ("content", True))


def _walk(node: Traversable, rel: PurePosixPath) -> list[tuple[PurePosixPath, Traversable]]:
    if node.is_file():
        return [(rel, node)]
    found: list[tuple[PurePosixPath, Traversable]] = []
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name.startswith(".") or child.name == "__pycache__":
            continue
        found.extend(_walk(child, rel / child.name))
    return found


def starter_files() -> list[tuple[PurePosixPath, Traversable]]:
    """Every file of the starter: its path relative to the project root, and its source.

    Raises:
        MailerError: the installed package lacks its starter files (a broken build).
    """
    root = files("mailer") / "starter"
    found: list[tuple[PurePosixPath, Traversable]] = []
    for part, is_folder in PARTS:
        node = root / part
        # A checkout without symlink support (git core.symlinks=false) has small text files
        # where the links should be: refuse rather than hand the user a file called templates.
        if not (node.is_dir() if is_folder else node.is_file()):
            raise MailerError(f"this mailer installation has no starter {part!r}: "
                              "reinstall the package", file=str(node))
        found.extend(_walk(node, PurePosixPath(part)))
    return found


def _obstacle(directory: Path, rel: PurePosixPath) -> Path | None:
    """The first existing path that stops `rel` from being written as a new file, if any."""
    if os.path.lexists(directory) and not directory.is_dir():
        return directory
    path = directory
    for i, name in enumerate(rel.parts):
        path = path / name
        is_last = i == len(rel.parts) - 1
        if is_last and os.path.lexists(path):
            return path  # a file, folder or even a dangling link: never overwrite it
        if not is_last and os.path.lexists(path) and not path.is_dir():
            return path  # a file where a folder has to go
    return None


def write(directory: Path) -> list[Path]:
    """Write a working starter project into `directory`, creating it if needed.

    Everything is checked before anything is written: when any target already exists, not a
    single file is written. Files are created exclusively, so one that appears meanwhile is
    not overwritten either; whatever was written up to then is removed again.

    Returns:
        The paths written, in order: schedules.yaml, the templates, the sample issue(s).

    Raises:
        InputError: a file (or something else) already exists where the starter writes one,
            naming the first such path; nothing was written.
        MailerError: the files could not be written (permissions, disk full); nothing is left.
    """
    plan = starter_files()
    obstacles = [hit for rel, _ in plan if (hit := _obstacle(directory, rel)) is not None]
    if obstacles:
        more = f" (and {len(obstacles) - 1} more)" if len(obstacles) > 1 else ""
        raise InputError(f"already exists{more}; nothing written, no file overwritten",
                         file=str(obstacles[0]))
    written: list[Path] = []
    made_dirs: list[Path] = []
    try:
        for rel, source in plan:
            target = directory.joinpath(*rel.parts)
            for folder in reversed([target.parent, *target.parent.parents]):
                if not folder.exists():
                    folder.mkdir()
                    made_dirs.append(folder)
            with target.open("xb") as out:  # "x": fail rather than overwrite
                written.append(target)
                out.write(source.read_bytes())
    except OSError as exc:
        _undo(written, made_dirs)
        if isinstance(exc, FileExistsError):
            raise InputError("already exists (appeared while writing); nothing written",
                             file=exc.filename) from None
        raise MailerError(f"cannot write the starter: {exc.strerror or exc}",
                          file=exc.filename) from None
    return written


def _undo(written: list[Path], made_dirs: list[Path]) -> None:
    for path in reversed(written):
        path.unlink(missing_ok=True)
    for folder in reversed(made_dirs):
        with contextlib.suppress(OSError):  # something else now lives there: leave it
            folder.rmdir()
