"""Secrets: from MAILER_* environment variables or from files only their owner can read."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from mailer.errors import ConfigError

# Settings field → environment variable; these never come from YAML (files end up in git).
SECRETS = {"secret_key": "MAILER_SECRET_KEY", "smtp_password": "MAILER_SMTP_PASSWORD",
           "dkim_key": "MAILER_DKIM_KEY", "metrics_token": "MAILER_METRICS_TOKEN",
           "bounce_password": "MAILER_BOUNCE_PASSWORD",
           "mailgun_signing_key": "MAILER_MAILGUN_SIGNING_KEY",
           "webhook_user": "MAILER_WEBHOOK_USER", "webhook_password": "MAILER_WEBHOOK_PASSWORD"}


def read_secret_file(path: str | os.PathLike[str], *, field: str | None = None) -> str:
    """The contents of a secret file, without its trailing newline.

    Raises:
        ConfigError: the file is missing, empty, or readable by group or others.
    """
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ConfigError(f"secret file has mode {mode:04o}, other users may read it; "
                              f"run chmod 600 {path}", file=str(path), field=field)
        text = path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read secret file: {exc}", file=str(path), field=field) from None
    if not text:
        raise ConfigError("secret file is empty", file=str(path), field=field)
    return text


def secret_from_env(var: str, env: Mapping[str, str]) -> SecretStr | None:
    """`var`, else the contents of the file named by `var`_FILE; None when neither is set.

    Raises:
        ConfigError: both are set, or the file is unsafe or unreadable.
    """
    value, file = env.get(var), env.get(f"{var}_FILE")
    if value and file:
        raise ConfigError(f"set {var} or {var}_FILE, not both", field=var)
    if file:
        return SecretStr(read_secret_file(file, field=f"{var}_FILE"))
    return SecretStr(value) if value else None
