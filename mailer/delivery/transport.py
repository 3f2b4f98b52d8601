"""SMTP transport: one persistent aiosmtplib connection per worker, and RFC 5321 reply classes."""

from __future__ import annotations

import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
from aiosmtplib import (
    SMTPDataError,
    SMTPRecipientRefused,
    SMTPResponse,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPStatus,
    SMTPTimeoutError,
)

from mailer.errors import (
    ConfigError,
    DeliveryError,
    DeliveryInDoubt,
    PermanentFailure,
    TemporaryFailure,
    TransactionWithdrawn,
)


@dataclass(frozen=True)
class SmtpTarget:
    """Where and how to connect, parsed from `smtp_url`."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    use_tls: bool = False  # smtps:// — TLS from the first byte (port 465)
    start_tls: bool | None = None  # None: upgrade if the server offers it
    validate_certs: bool = True
    timeout: float = 60.0


def parse_smtp_url(url: str, *, password: str | None = None) -> SmtpTarget:
    """`smtp://user@host:587?starttls=true`, `smtps://host:465`, `smtp://127.0.0.1:2525`.

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
        validate_certs=query.get("verify", "true") not in ("0", "false", "no"),
        timeout=float(query.get("timeout", "60")),
    )


def classify(code: int, reply: str, recipient: str | None = None) -> DeliveryError:
    """The error for an SMTP reply code.

    RFC 5321 §4.2.1: 4yz is transient, 5yz permanent. 552 (mailbox full / storage) is
    treated as transient on purpose: §4.5.3.1.10 notes clients should treat it as 452,
    and a full mailbox empties.
    """
    message = f"{code} {reply}".strip()
    if code >= 500 and code != 552:
        return PermanentFailure(message, code=code, reply=reply, recipient=recipient)
    return TemporaryFailure(message, code=code, reply=reply, recipient=recipient)


_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"^\.", re.MULTILINE)


def wire_form(message: bytes) -> bytes:
    """A message as SMTP DATA carries it: CRLF line ends, dot-stuffed (RFC 5321 §4.5.2),
    ending in CRLF — what aiosmtplib's data() does to every message it sends."""
    message = _LINE_ENDS.sub(b"\r\n", message)
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return _LEADING_DOT.sub(b"..", message)


# An address MAIL and RCPT can carry between brackets as it is (RFC 5321 §4.1.2: a
# dot-string local part at a domain name). Every subscriber address is one: normalize_email
# keeps the IDNA form and refuses quoted local parts and SMTPUTF8.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")


class _WireDataSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, plus an envelope and DATA for parts already in wire form.

    `data()` normalises line endings and dot-stuffs every message with two regular
    expression passes; for a body prepared once per issue (CRLF, dot-stuffed, ending in
    CRLF) that is a fifth of the sender's CPU spent finding nothing to change. `mail()`
    and `rcpt()` parse each address with email.utils (9% of it) to quote what a plain
    address never needs.
    """

    async def envelope(self, sender: str, recipient: str, *,
                       timeout: float | None) -> None:  # noqa: ASYNC109
        """MAIL FROM and RCPT TO, through mail()/rcpt() only for an address needing quoting.

        Raises:
            SMTPSenderRefused, SMTPRecipientRefused: the server refused either.
            SMTPServerDisconnected, SMTPTimeoutError: the connection is gone.
        """
        if self.is_ehlo_or_helo_needed or not _PLAIN_ADDRESS.fullmatch(sender):
            # mail() greets the server first where connect() did not (no TLS, no auth).
            await self.mail(sender, timeout=timeout)
        else:
            reply = await self.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(),
                                               timeout=timeout)
            if reply.code != SMTPStatus.completed:
                raise SMTPSenderRefused(reply.code, reply.message, sender)
        if not _PLAIN_ADDRESS.fullmatch(recipient):
            await self.rcpt(recipient, timeout=timeout)
            return
        reply = await self.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode(),
                                           timeout=timeout)
        if reply.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            raise SMTPRecipientRefused(reply.code, reply.message, recipient)

    async def start_data(self, *, timeout: float | None) -> None:  # noqa: ASYNC109
        """Send DATA and expect 354: nothing of the message has left yet.

        Raises:
            SMTPDataError: the server refused DATA.
            SMTPServerDisconnected, SMTPTimeoutError: the connection is gone.
        """
        start = await self.execute_command(b"DATA", timeout=timeout)
        if start.code != SMTPStatus.start_input:
            raise SMTPDataError(start.code, start.message)

    async def finish_data(self, data: bytes, *,
                          timeout: float | None) -> SMTPResponse:  # noqa: ASYNC109
        """Send a body in wire form (`PreparedMessage.personalize(wire=True)`) and the end mark.

        Raises:
            SMTPDataError: the server refused the message.
            SMTPServerDisconnected, SMTPTimeoutError: the connection is gone.
        """
        if self.protocol is None:
            raise SMTPServerDisconnected("Connection lost")
        try:
            # Nothing runs between the write and read_response() arming its waiter, so
            # the reply cannot arrive unexpected (one transaction per client at a time).
            self.protocol.write(data + b".\r\n")
            response = await self.protocol.read_response(timeout=timeout)
        except (SMTPServerDisconnected, SMTPTimeoutError):
            self.close()
            raise
        if response.code != SMTPStatus.completed:
            raise SMTPDataError(response.code, response.message)
        return response


class SmtpTransport:
    """A reusable SMTP connection: connects on first use and again after a drop or a 421."""

    def __init__(self, target: SmtpTarget, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.target = target
        self._tls_context = tls_context
        self._client: _WireDataSMTP | None = None

    async def _connection(self) -> _WireDataSMTP:
        if self._client is not None and self._client.is_connected:
            return self._client
        t = self.target
        client = _WireDataSMTP(
            hostname=t.host, port=t.port, username=t.username, password=t.password,
            use_tls=t.use_tls, start_tls=t.start_tls, validate_certs=t.validate_certs,
            tls_context=self._tls_context, timeout=t.timeout,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException as exc:
            raise classify(exc.code, exc.message) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TemporaryFailure(f"cannot connect to {t.host}:{t.port}: {exc}") from exc
        self._client = client
        return client

    async def send(self, sender: str, recipient: str, data: bytes, *,
                   wire_ready: bool = False,
                   before_body: Callable[[], Awaitable[bool]] | None = None,
                   ) -> tuple[int, str]:
        """Run one SMTP transaction; returns the server's final (code, reply).

        `wire_ready`: `data` is already CRLF and dot-stuffed (see _WireDataSMTP).
        `before_body` is awaited once the server said 354 and before any byte of the
        message leaves: the sender records there that the outcome may become ambiguous,
        and answers whether the body may go.

        Raises:
            TemporaryFailure: 4xx or a connection problem before the data was handed over.
            PermanentFailure: 5xx.
            DeliveryInDoubt: the connection died while the server held the whole message.
            TransactionWithdrawn: `before_body` said no; the connection was dropped.
        """
        if not wire_ready:
            data = wire_form(data)
        client = await self._connection()
        try:
            await client.envelope(sender, recipient, timeout=self.target.timeout)
            await client.start_data(timeout=self.target.timeout)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset_or_drop(client, exc.code)
            raise classify(exc.code, exc.message, recipient) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()
            raise TemporaryFailure(f"connection lost: {exc}", recipient=recipient) from exc
        if before_body is not None:
            try:
                go_on = await before_body()
            except BaseException:
                # Mid-DATA there is no RSET: hanging up makes the server drop the message.
                self._drop()
                raise
            if not go_on:
                self._drop()
                raise TransactionWithdrawn(f"withdrawn before the body left: {recipient}")
        try:
            response = await client.finish_data(data, timeout=self.target.timeout)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset_or_drop(client, exc.code)
            raise classify(exc.code, exc.message, recipient) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()
            raise DeliveryInDoubt(f"connection lost during DATA: {exc}",
                                  recipient=recipient) from exc
        return response.code, response.message

    async def _reset_or_drop(self, client: aiosmtplib.SMTP, code: int) -> None:
        # 421 means the server is closing the channel (RFC 5321 §3.8): reconnect next time.
        if code == 421 or not client.is_connected:
            self._drop()
            return
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError):
            self._drop()

    def abort(self) -> None:
        """Cut the connection now, mid-transaction if need be (a shutdown out of grace).

        The transaction in progress then fails like any lost connection and is recorded.
        """
        self._drop()

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        """Say QUIT politely; a server that is already gone is fine."""
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()
