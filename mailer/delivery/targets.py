"""Where the relays are and how long to wait for each of their answers (pure: no I/O).

`smtp_url` names one relay or a list of them in order of preference; each becomes an
SmtpTarget. The waits are RFC 5321 §4.5.3.2's, per stage of the transaction, scaled by one
factor (`smtp_timeout_scale`) so tests can run the same rules in seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from mailer.errors import ConfigError


@dataclass(frozen=True)
class SmtpTimeouts:
    """Seconds to wait for each stage's reply (RFC 5321 §4.5.3.2 minimums as defaults).

    A slow relay's content filter can take minutes to answer the final dot, and giving up
    sooner turns a delivered message into one in doubt (§4.5.3.2.6 asks for 10 minutes).
    """

    connect: float = 30.0  # the TCP handshake; not in the RFC, long enough for any route
    greeting: float = 300.0  # §4.5.3.2.1 initial 220; also EHLO, STARTTLS and AUTH
    command: float = 300.0  # §4.5.3.2.2 MAIL, §4.5.3.2.3 RCPT; also RSET and QUIT
    data_start: float = 120.0  # §4.5.3.2.4 DATA initiation (the 354)
    # §4.5.3.2.5 (3 minutes per data block) is not waited for on its own: the body is
    # handed to the kernel in one write, and §4.5.3.2.6's wait below covers its transfer.
    data_end: float = 600.0  # §4.5.3.2.6 DATA termination (the reply to the final dot)

    def scaled(self, factor: float) -> SmtpTimeouts:
        """Every wait multiplied by `factor` (1: the RFC's)."""
        return SmtpTimeouts(self.connect * factor, self.greeting * factor,
                            self.command * factor, self.data_start * factor,
                            self.data_end * factor)


@dataclass(frozen=True)
class SmtpTarget:
    """One relay: where and how to connect, parsed from an `smtp_url`."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    use_tls: bool = False  # smtps:// — TLS from the first byte (port 465)
    start_tls: bool | None = None  # None: upgrade if the server offers it
    validate_certs: bool = True
    pipelining: bool = True  # ?pipelining=off: one command per round trip even if offered
    timeouts: SmtpTimeouts = SmtpTimeouts()

    @property
    def name(self) -> str:
        """How logs, metrics and `mailer status` name the relay: never with a password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_OFF = ("0", "false", "no", "off")


def parse_smtp_url(url: str, *, password: str | None = None,
                   timeouts: SmtpTimeouts | None = None) -> SmtpTarget:
    """`smtp://user@host:587?starttls=true`, `smtps://host:465`, `smtp://127.0.0.1:2525`.

    Query flags: `starttls`, `verify` (the certificate) and `pipelining` (RFC 2920, on
    where the server offers it).

    Raises:
        ConfigError: an unknown scheme, no host, or a password written into the URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError("expected capture, smtp://[user@]host[:port] or smtps://host[:port]",
                          field="settings.smtp_url")
    if parts.password:
        raise ConfigError("put the password in MAILER_SMTP_PASSWORD, not in the URL",
                          field="settings.smtp_url")
    query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
    use_tls = parts.scheme == "smtps"
    start_tls: bool | None = None
    if "starttls" in query:
        start_tls = query["starttls"] in ("1", "true", "yes")
    return SmtpTarget(
        host=parts.hostname,
        port=parts.port or (465 if use_tls else 587 if start_tls else 25),
        username=unquote(parts.username) if parts.username else None,
        password=password,
        use_tls=use_tls,
        start_tls=start_tls,
        validate_certs=query.get("verify", "true") not in _OFF,
        pipelining=query.get("pipelining", "on") not in _OFF,
        timeouts=timeouts or SmtpTimeouts(),
    )


def parse_relays(urls: Sequence[str], *, password: str | None = None,
                 timeouts: SmtpTimeouts | None = None) -> list[SmtpTarget]:
    """The relays of `smtp_url` in order of preference (one password for all of them:
    MAILER_SMTP_PASSWORD; a relay without a user name never logs in).

    Raises:
        ConfigError: as parse_smtp_url, for the first URL that is wrong.
    """
    return [parse_smtp_url(url, password=password, timeouts=timeouts) for url in urls]
