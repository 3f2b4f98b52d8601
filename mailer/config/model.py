"""schedules.yaml plus MAILER_* environment variables → frozen, validated Config objects."""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path
from typing import Any, NoReturn, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mailer.config.yamlfile import Lines, line_of, load_yaml
from mailer.errors import ConfigError
from mailer.schedule import ScheduleSpec

__all__ = ["Config", "Newsletter", "ScheduleSpec", "Settings", "load", "read_secret_file"]

BUNDLED_TEMPLATES = Path(__file__).parents[1] / "starter" / "templates"
# Settings field → environment variable; these never come from YAML (files end up in git).
SECRETS = {"secret_key": "MAILER_SECRET_KEY", "smtp_password": "MAILER_SMTP_PASSWORD",
           "dkim_key": "MAILER_DKIM_KEY", "metrics_token": "MAILER_METRICS_TOKEN"}
_NOT_YAML_KEYS = {"id", *SECRETS}
def _root(info: ValidationInfo) -> Path:
    return Path((info.context or {}).get("root") or Path.cwd())


def _absolute(path: Path, root: Path) -> Path:
    return Path(os.path.normpath(root / path.expanduser()))


class Settings(BaseModel):
    """Process-wide settings; secrets are SecretStr and only ever come from the environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = "http://127.0.0.1:8025"
    database_url: str = "sqlite:///var/mailer.db"
    smtp_url: str = "capture"
    concurrency: int = Field(10, ge=1)
    rate_per_second: float = Field(0, ge=0)
    max_per_hour: int = Field(0, ge=0)
    postal_address: str = ""
    host: str = "127.0.0.1"
    port: int = Field(8025, ge=0, le=65535)
    var_dir: Path = Path("var")
    secret_key: SecretStr | None = None
    smtp_password: SecretStr | None = None
    dkim_key: SecretStr | None = None
    # GET /metrics for `Authorization: Bearer <token>` only; unset: for loopback clients only.
    metrics_token: SecretStr | None = None
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    confirm_token_days: int = Field(7, ge=1)
    max_attempts: int = Field(5, ge=1)
    retry_base_seconds: float = Field(30.0, ge=0)
    hard_bounce_limit: int = Field(1, ge=1)
    # A send pauses itself when this share of its last `error_window` attempts failed:
    # a dead relay must not burn through the whole list.
    max_error_rate: float = Field(0.5, gt=0, le=1)
    error_window: int = Field(50, ge=1)
    check_deliverability: bool = False
    subscribe_rate_per_minute: int = Field(10, ge=0)
    # Reverse proxies whose X-Forwarded-For names the client (addresses or networks);
    # anyone else's is ignored, or a changing header would pass the rate limit.
    trusted_proxies: tuple[str, ...] = ()
    test_now: datetime | None = None
    log_json: bool = False
    # `mailer run`: seconds in-flight SMTP transactions get after SIGTERM/SIGINT; how late a
    # missed slot is still caught up; how often files are checked for edits (0: SIGHUP only);
    # a progress line every so many messages.
    shutdown_grace_seconds: float = Field(30.0, ge=0)
    catch_up_hours: float = Field(24.0, ge=0)
    watch_seconds: float = Field(2.0, ge=0)
    log_progress_every: int = Field(100, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _derive_defaults(cls, data: Any) -> Any:
        # Links follow host/port and the database lives in var_dir unless told otherwise.
        if isinstance(data, dict):
            data = dict(data)
            host = str(data.get("host") or "127.0.0.1")
            host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
            host = f"[{host}]" if ":" in host else host
            data.setdefault("base_url", f"http://{host}:{data.get('port', 8025)}")
            data.setdefault("var_dir", "var")
            data.setdefault("database_url", f"sqlite:///{data['var_dir']}/mailer.db")
        return data

    @field_validator("base_url")
    @classmethod
    def _valid_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL like https://news.example.com, "
                             f"got {value!r}")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _absolute_sqlite(cls, value: str, info: ValidationInfo) -> str:
        if "://" not in value:
            raise ValueError("expected a database URL like sqlite:///var/mailer.db "
                             "or postgresql+asyncpg://user@host/db")
        match = re.fullmatch(r"(sqlite(?:\+\w+)?):///(.*)", value, re.S)
        if match and match[2] and not match[2].startswith(("/", ":memory:", "?")):
            # Relative to the config file, not to wherever the daemon happens to be started.
            path, sep, query = match[2].partition("?")
            value = f"{match[1]}:///{_absolute(Path(path), _root(info))}{sep}{query}"
        return value

    @field_validator("smtp_url")
    @classmethod
    def _valid_smtp_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value != "capture" and (parts.scheme not in ("smtp", "smtps") or not parts.hostname):
            raise ValueError("expected capture, smtp://user@host:587?starttls=true "
                             f"or smtps://host:465, got {value!r}")
        return value

    @field_validator("var_dir")
    @classmethod
    def _absolute_var_dir(cls, value: Path, info: ValidationInfo) -> Path:
        return _absolute(value, _root(info))

    @field_validator("test_now")
    @classmethod
    def _aware_test_now(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxy_list(cls, value: Any) -> Any:
        # MAILER_TRUSTED_PROXIES="10.0.0.1, 10.1.0.0/16": the environment gives one string.
        return [p for p in re.split(r"[\s,]+", value) if p] if isinstance(value, str) else value

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_proxies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for proxy in value:
            try:  # what uvicorn accepts; it would take anything else as a name never matched
                ipaddress.ip_network(proxy)
            except ValueError:
                raise ValueError(f"expected IP addresses or networks like 10.0.0.1 or "
                                 f"10.0.0.0/8 (no host bits after the /), got {proxy!r}") from None
        return value

    @model_validator(mode="after")
    def _dkim_complete(self) -> Settings:
        given = [self.dkim_key is not None, bool(self.dkim_selector), bool(self.dkim_domain)]
        if any(given) and not all(given):
            raise ValueError("DKIM signing needs dkim_selector, dkim_domain and "
                             "MAILER_DKIM_KEY_FILE together")
        return self


class Newsletter(BaseModel):
    """One newsletter: who sends it, where its issues live, and when it goes out."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    id: str = Field(pattern=r"^[a-z0-9-]+$")
    name: str = Field(min_length=1)
    sender: str = Field(alias="from")
    reply_to: str | None = None
    issues: Path
    template: str = "newsletter.mjml.j2"
    schedule: ScheduleSpec | None = None
    accent_color: str = Field("#2563eb", pattern=r"^#(?:[0-9a-fA-F]{3}){1,2}$")
    logo_url: str | None = Field(None, pattern=r"^https?://\S+$")
    footer_text: str = ""
    allow_html: bool = False

    @field_validator("sender", "reply_to")
    @classmethod
    def _valid_address(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if any(c in value for c in "\r\n\0"):
            raise ValueError("must be one line")
        name, addr = parseaddr(value)
        try:
            # Syntax only: the From address of a self-hosted sender may be on a local domain.
            addr = validate_email(addr, check_deliverability=False,
                                  globally_deliverable=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(f"expected 'Name <address>' or an address: {exc}") from None
        # Address() quotes a name that needs it ("Lab, Inc." stays one mailbox).
        return str(Address(display_name=name, addr_spec=addr)) if name else addr

    @field_validator("issues")
    @classmethod
    def _existing_issues(cls, value: Path, info: ValidationInfo) -> Path:
        path = _absolute(value, _root(info))
        if not path.is_dir():
            raise ValueError(f"issues folder not found: {path}")
        return path

    @field_validator("template")
    @classmethod
    def _relative_template(cls, value: str) -> str:
        if Path(value).is_absolute() or ".." in Path(value).parts:
            raise ValueError("expected a file name under templates/")
        return value

    @property
    def tz(self) -> ZoneInfo:
        """The newsletter's time zone (its schedule's, else UTC): naive issue dates use it."""
        return ZoneInfo(self.schedule.timezone if self.schedule else "UTC")


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


def _secret(var: str, env: Mapping[str, str]) -> SecretStr | None:
    value, file = env.get(var), env.get(f"{var}_FILE")
    if value and file:
        raise ConfigError(f"set {var} or {var}_FILE, not both", field=var)
    if file:
        return SecretStr(read_secret_file(file, field=f"{var}_FILE"))
    return SecretStr(value) if value else None


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
    if urlsplit(str(raw.get("smtp_url", ""))).password:
        raise ConfigError("secrets only from the environment: drop the password from smtp_url "
                          "and set MAILER_SMTP_PASSWORD", file=file,
                          line=lines.get(("settings", "smtp_url")), field="settings.smtp_url")
    data, from_env = dict(raw), {}
    for name in Settings.model_fields.keys() - SECRETS.keys():
        var = f"MAILER_{name.upper()}"
        if env.get(var):  # an empty variable means unset, as in most shells' `X= cmd`
            data[name], from_env[name] = env[var], var
    for name, var in SECRETS.items():
        data[name] = _secret(var, env)
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
