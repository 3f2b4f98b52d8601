"""The process-wide Settings model and its validators."""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mailer.config.paths import absolute, root_of
from mailer.errors import MailerError


class Settings(BaseModel):
    """Process-wide settings; secrets are SecretStr and only ever come from the environment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = "http://127.0.0.1:8025"
    database_url: str = "sqlite:///var/mailer.db"
    # One relay, or a list in order of preference (failover; MAILER_SMTP_URL: comma-separated).
    smtp_url: str | tuple[str, ...] = "capture"
    # Multiplies every SMTP wait (RFC 5321's per-stage timeouts, the relay's retry backoff
    # and send-now's 30 s give-up): 1 in use, small in tests.
    smtp_timeout_scale: float = Field(1.0, gt=0)
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
    # The DKIM key's file (mode 0600), read only by commands that sign; MAILER_DKIM_KEY_FILE
    # gives it instead, for a key that lives in the daemon's environment only.
    dkim_key_file: Path | None = None
    # The way back (VERP): each message's envelope sender is bounce_address with a signed
    # per-delivery token; bounces come in by SMTP on bounce_listen (host:port, `mailer run`)
    # or from the IMAP(S) mailbox bounce_mailbox (password: MAILER_BOUNCE_PASSWORD).
    bounce_address: str | None = None
    bounce_listen: str | None = None
    bounce_mailbox: str | None = None
    bounce_password: SecretStr | None = None
    bounce_poll_seconds: float = Field(60, gt=0)  # how often bounce_mailbox is looked at
    # This many soft bounces within this many days make an address bounced (a delivery
    # that gets through in between starts the count again).
    # Provider webhooks: Mailgun's HMAC key; Postmark's basic-auth user and password; the
    # SNS topics whose SES notifications are believed (any AWS account can sign its own
    # topic's messages, so the signature alone proves nothing about the sender).
    mailgun_signing_key: SecretStr | None = None
    webhook_user: SecretStr | None = None
    webhook_password: SecretStr | None = None
    ses_topic_arns: tuple[str, ...] = ()
    soft_bounce_limit: int = Field(3, ge=1)
    soft_bounce_days: float = Field(30, gt=0)
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
            value = f"{match[1]}:///{absolute(Path(path), root_of(info))}{sep}{query}"
        return value

    @field_validator("smtp_url", mode="before")
    @classmethod
    def _relay_list(cls, value: Any) -> Any:
        # The environment gives one string: "smtp://a:25, smtp://b:25" is a list of two.
        if isinstance(value, str) and "," in value:
            return tuple(u for u in re.split(r"[\s,]+", value) if u)
        if isinstance(value, list):
            return value[0] if len(value) == 1 else tuple(value)
        return value

    @field_validator("smtp_url")
    @classmethod
    def _valid_smtp_url(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        urls = (value,) if isinstance(value, str) else value
        if not urls:
            raise ValueError("expected capture, one relay URL or a list of them")
        if "capture" in urls and len(urls) > 1:
            raise ValueError("capture is the only relay or none: it cannot be in a list")
        for url in urls:
            parts = urlsplit(url)
            if url != "capture" and (parts.scheme not in ("smtp", "smtps")
                                     or not parts.hostname):
                raise ValueError("expected capture, smtp://user@host:587?starttls=true "
                                 f"or smtps://host:465, got {url!r}")
        return value

    @field_validator("bounce_address")
    @classmethod
    def _valid_bounce_address(cls, value: str | None) -> str | None:
        if value is not None:
            from mailer.returns.verp import split_bounce_address  # pure

            try:
                split_bounce_address(value)
            except MailerError as exc:
                raise ValueError(exc.message) from None
        return value

    @field_validator("bounce_listen")
    @classmethod
    def _valid_listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)  # its ValueError is pydantic's validation error
        return value

    @property
    def smtp_urls(self) -> tuple[str, ...]:
        """The relays of smtp_url in order of preference (one for a single URL)."""
        return (self.smtp_url,) if isinstance(self.smtp_url, str) else self.smtp_url

    @field_validator("var_dir", "dkim_key_file")
    @classmethod
    def _absolute_paths(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else absolute(value, root_of(info))

    @field_validator("test_now")
    @classmethod
    def _aware_test_now(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value

    @field_validator("trusted_proxies", "ses_topic_arns", mode="before")
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


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (`[::1]:2526` for IPv6) as (host, port); port 0 = any free port.

    Raises:
        ValueError: not host:port.
    """
    host, _, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port like 127.0.0.1:2526, got {listen!r}")
    return host, int(port)
