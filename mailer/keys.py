"""The token-signing key: from the environment, a 0600 file, or generated once into var/;
and the private folders and files mailer keeps there (0700 and 0600)."""

from __future__ import annotations

import os
import secrets
import stat
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from mailer.errors import ConfigError

if TYPE_CHECKING:
    from mailer.config import Settings


def token_key(settings: Settings) -> str:
    """The token-signing key of an installation: MAILER_SECRET_KEY, else var/secret.key.

    Raises:
        ConfigError: see load_or_create_secret_key.
    """
    configured = settings.secret_key.get_secret_value() if settings.secret_key else None
    return load_or_create_secret_key(configured, settings.var_dir)


def load_or_create_secret_key(configured: str | None, var_dir: Path) -> str:
    """The key that signs confirm/unsubscribe tokens.

    A configured key (MAILER_SECRET_KEY or its file) wins. Otherwise the key kept in
    var/secret.key is used, and made on first use with mode 0600, saying so on stderr:
    the key must survive restarts, or every unsubscribe link already sent would break.

    Raises:
        ConfigError: var/secret.key exists but others can read it, or it is empty.
    """
    if configured:
        return configured
    path = var_dir / "secret.key"
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"mode {mode:o} lets others read the key; run: chmod 600 {path}",
                              file=str(path))
        key = path.read_text().strip()
        if not key:
            raise ConfigError("the key file is empty", file=str(path))
        return key
    make_private_dir(var_dir)
    # Written whole into a private temporary file, then linked into place: link() fails if
    # the name exists, so two processes starting at once agree on one key, and no one ever
    # reads a half-written (empty) file.
    fd, tmp = tempfile.mkstemp(dir=var_dir, prefix=".secret.key.")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            return load_or_create_secret_key(None, var_dir)
    finally:
        os.unlink(tmp)
    print(f"mailer: generated a token-signing key in {path} (mode 0600); keep it, "
          "or set MAILER_SECRET_KEY", file=sys.stderr)
    return path.read_text().strip()


def make_private_dir(path: Path) -> None:
    """Create `path` and its missing parents with mode 0700 (var/ holds the key, the whole
    list of subscribers and their mail). A folder that exists is left as it is: its modes
    are its owner's choice (a database in /tmp, a shared folder)."""
    missing = [path]
    while not missing[-1].parent.exists():
        missing.append(missing[-1].parent)
    for folder in reversed(missing):
        # exist_ok: never chmod-s a folder that exists; the umask can only take bits away.
        folder.mkdir(mode=0o700, exist_ok=True)


def create_private_file(path: Path) -> None:
    """Create `path` empty with mode 0600, unless it exists (then it is left as it is).

    Created with that mode, not chmod-ed afterwards: no one else can open it in between
    and keep reading what is written later.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    os.close(fd)
