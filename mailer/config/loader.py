"""load(): schedules.yaml plus MAILER_* environment overrides → one frozen Config."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn, get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, ValidationError

from mailer.config.newsletter import Newsletter
from mailer.config.secrets import SECRETS, secret_from_env
from mailer.config.settings import Settings
from mailer.config.yamlfile import Lines, line_of, load_yaml
from mailer.errors import ConfigError

# The templates a project without its own templates/ folder renders with.
BUNDLED_TEMPLATES = Path(__file__).parents[1] / "starter" / "templates"
_NOT_YAML_KEYS = {"id", *SECRETS}


class Config(BaseModel):
    """The whole loaded configuration: where it came from, settings and newsletters."""

    model_config = ConfigDict(frozen=True)

    path: Path
    root: Path
    templates_dir: Path
    settings: Settings
    newsletters: dict[str, Newsletter]

    def newsletter(self, id: str) -> Newsletter:
        """The newsletter called `id`.

        Raises:
            ConfigError: no such newsletter.
        """
        if id not in self.newsletters:
            known = ", ".join(sorted(self.newsletters)) or "none"
            raise ConfigError(f"unknown newsletter {id!r} (known: {known})", file=str(self.path))
        return self.newsletters[id]


def _fail(exc: ValidationError, *, file: str, prefix: tuple[str, ...], lines: Lines,
          model: type[BaseModel], from_env: Mapping[str, str] | None = None) -> NoReturn:
    error = exc.errors(include_url=False)[0]
    loc = tuple(str(part) for part in error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "required key is missing"
    elif error["type"] == "extra_forbidden":
        message = f"unknown key (expected one of: {', '.join(_keys_at(model, loc))})"
    elif error["type"] != "value_error" and loc and loc[0] not in SECRETS:
        message += f", got {str(error['input'])[:60]!r}"
    line = line_of(lines, prefix + loc)
    if from_env and loc and loc[0] in from_env:
        message, line = f"{message} (from {from_env[loc[0]]})", None
    raise ConfigError(message, file=file, line=line, field=".".join(prefix + loc)) from None


def _keys_at(model: type[BaseModel], loc: tuple[str, ...]) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        nested = [t for t in get_args(field.annotation) if isinstance(t, type)] if field else []
        models = [t for t in nested if issubclass(t, BaseModel)]
        if not models:
            return []
        model = models[0]
    names = (f.alias or n for n, f in model.model_fields.items() if n not in _NOT_YAML_KEYS)
    return sorted(names)


def _mapping(value: Any, *, what: str, file: str, field: str, lines: Lines) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping of {what}", file=file,
                          line=line_of(lines, tuple(field.split("."))), field=field)
    return value


def _load_settings(raw: dict[Any, Any], *, env: Mapping[str, str], file: str, lines: Lines,
                   root: Path) -> Settings:
    for key, var in SECRETS.items():
        if key in raw:
            raise ConfigError(f"secrets only from the environment: set {var} or {var}_FILE",
                              file=file, line=lines.get(("settings", key)),
                              field=f"settings.{key}")
    urls = raw.get("smtp_url", "")
    if any(urlsplit(str(url)).password for url in (urls if isinstance(urls, list) else [urls])):
        raise ConfigError("secrets only from the environment: drop the password from smtp_url "
                          "and set MAILER_SMTP_PASSWORD", file=file,
                          line=lines.get(("settings", "smtp_url")), field="settings.smtp_url")
    data, from_env = dict(raw), {}
    secret_files = {f"{var}_FILE" for var in SECRETS.values()}
    for name in Settings.model_fields.keys() - SECRETS.keys():
        var = f"MAILER_{name.upper()}"
        # An empty variable means unset, as in most shells' `X= cmd`. MAILER_DKIM_KEY_FILE is
        # the key's own variable (read below), not the dkim_key_file setting's.
        if env.get(var) and var not in secret_files:
            data[name], from_env[name] = env[var], var
    for name, var in SECRETS.items():
        data[name] = secret_from_env(var, env)
    try:
        return Settings.model_validate(data, context={"root": root})
    except ValidationError as exc:
        _fail(exc, file=file, prefix=("settings",), lines=lines, model=Settings, from_env=from_env)


def _load_newsletter(id: Any, raw: Any, *, file: str, lines: Lines, root: Path) -> Newsletter:
    field = f"newsletters.{id}"
    raw = _mapping(raw, what="name, from, issues, schedule, …", file=file, field=field,
                   lines=lines)
    if not isinstance(id, str) or not re.fullmatch(r"[a-z0-9-]+", id):
        raise ConfigError("a newsletter id is lower-case letters, digits and '-'", file=file,
                          line=lines.get(("newsletters", str(id))), field=field)
    if "id" in raw:
        raise ConfigError("unknown key: the id is the key above", file=file,
                          line=lines.get(("newsletters", id, "id")), field=f"{field}.id")
    try:
        return Newsletter.model_validate({**raw, "id": id}, context={"root": root})
    except ValidationError as exc:
        _fail(exc, file=file, prefix=("newsletters", id), lines=lines, model=Newsletter)


def load(path: Path | str | None = None, env: Mapping[str, str] = os.environ) -> Config:
    """Load `path` (default: $MAILER_CONFIG, else ./schedules.yaml) with MAILER_* overrides.

    Raises:
        ConfigError: naming the file, the YAML line where known, the dotted key and what
            was expected.
    """
    path = Path(path or env.get("MAILER_CONFIG") or "schedules.yaml").expanduser().absolute()
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("config file not found (pass --config PATH or set MAILER_CONFIG)",
                          file=file) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file: {exc}", file=file) from None
    data, lines = load_yaml(text, file=file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping with settings: and newsletters:", file=file, line=1)
    for key in data:
        if key not in ("settings", "newsletters"):
            raise ConfigError("unknown key (expected one of: newsletters, settings)", file=file,
                              line=lines.get((str(key),)), field=str(key))
    root = path.parent
    settings = _load_settings(
        _mapping(data.get("settings"), what="settings", file=file, field="settings", lines=lines),
        env=env, file=file, lines=lines, root=root)
    raw_newsletters = _mapping(data.get("newsletters"), what="newsletter ids", file=file,
                               field="newsletters", lines=lines)
    newsletters = {str(id): _load_newsletter(id, raw, file=file, lines=lines, root=root)
                   for id, raw in raw_newsletters.items()}
    templates = root / "templates"
    return Config(path=path, root=root, settings=settings, newsletters=newsletters,
                  templates_dir=templates if templates.is_dir() else BUNDLED_TEMPLATES)
