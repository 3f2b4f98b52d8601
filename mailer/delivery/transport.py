"""SMTP transport: one persistent aiosmtplib connection per worker, and RFC 5321 reply classes.

What fails here is told apart by whose it is: the relay's (RelayUnavailable: no connection,
a refusing greeting, STARTTLS or login failed, 421), the recipient's (a 4xx or 5xx reply to
its transaction), or nobody knows (DeliveryInDoubt: the whole message was sent and no
reply came)."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Awaitable, Callable

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

from mailer.delivery.targets import SmtpTarget, SmtpTimeouts
from mailer.delivery.wire import CLOSING, PLAIN_ADDRESS, classify, wire_form
from mailer.errors import (
    DeliveryInDoubt,
    RelayUnavailable,
    TemporaryFailure,
    TransactionWithdrawn,
)


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
        if self.is_ehlo_or_helo_needed or not PLAIN_ADDRESS.fullmatch(sender):
            # mail() greets the server first where connect() did not (no TLS, no auth).
            await self.mail(sender, timeout=timeout)
        else:
            reply = await self.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(),
                                               timeout=timeout)
            if reply.code != SMTPStatus.completed:
                raise SMTPSenderRefused(reply.code, reply.message, sender)
        if not PLAIN_ADDRESS.fullmatch(recipient):
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


async def open_socket(host: str, port: int, *, timeout: float) -> socket.socket:  # noqa: ASYNC109
    """A connected TCP socket, within `timeout` for the handshake alone.

    aiosmtplib waits for the TCP connection and the greeting with one timeout; the greeting
    may take 5 minutes (RFC 5321 §4.5.3.2.1), a host that drops SYNs must not.

    Raises:
        OSError: no address of the host took the connection in time.
    """
    loop = asyncio.get_running_loop()
    last: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in await loop.getaddrinfo(
            host, port, type=socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)  # proto IPPROTO_TCP: asyncio sets NODELAY
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, address), timeout)
            return sock
        except TimeoutError:
            sock.close()
            last = OSError(f"no answer from {host}:{port} within {timeout:g} s")
        except OSError as exc:
            sock.close()
            last = exc
    raise last


def _why(exc: BaseException) -> str:
    # The reason as one line a person reads: aiosmtplib's messages, or the OS's words.
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}".strip()
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)  # CERTIFICATE_VERIFY_FAILED, WRONG_VERSION_NUMBER…
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # asyncio's own words name the address again
    return str(exc).strip() or type(exc).__name__


class SmtpTransport:
    """A reusable SMTP connection to one relay: connects on first use and again after a drop
    or a 421."""

    def __init__(self, target: SmtpTarget, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.target = target
        self._tls_context = tls_context
        self._client: _WireDataSMTP | None = None
        self._carried = 0  # transactions the open connection has finished
        self._aborted = False

    @property
    def _waits(self) -> SmtpTimeouts:
        return self.target.timeouts

    async def _connection(self) -> _WireDataSMTP:
        """The open connection, or a new one.

        Raises:
            RelayUnavailable: no connection, a greeting other than 220, STARTTLS or AUTH
                failed: whatever went wrong is the relay's.
        """
        if self._client is not None and self._client.is_connected:
            return self._client
        t, waits = self.target, self._waits
        try:
            sock = await open_socket(t.host, t.port, timeout=waits.connect)
        except OSError as exc:
            raise RelayUnavailable(t.name, f"cannot connect: {_why(exc)}") from exc
        client = _WireDataSMTP(
            hostname=t.host, sock=sock, username=t.username, password=t.password,
            use_tls=t.use_tls, start_tls=t.start_tls, validate_certs=t.validate_certs,
            tls_context=self._tls_context, timeout=waits.greeting,
        )
        try:
            await client.connect()
        except aiosmtplib.SMTPAuthenticationError as exc:
            raise RelayUnavailable(t.name, f"login refused: {_why(exc)}") from exc
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise RelayUnavailable(t.name, f"greeting refused: {_why(exc)}") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
            tls = isinstance(cause, ssl.SSLError) or "TLS" in str(exc)
            raise RelayUnavailable(t.name, f"{'TLS' if tls else 'connection'} failed: "
                                           f"{_why(cause)}") from exc
        # The socket is the transport's from here: aiosmtplib's close() on a failed connect
        # closes it (closing it here too would pull it from under the transport).
        self._client = client
        self._carried = 0
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
            RelayUnavailable: the relay could not be reached or closed the channel (421)
                before the body; nothing was delivered and no recipient is to blame.
            TemporaryFailure: 4xx, or this connection was lost before the body.
            PermanentFailure: 5xx.
            DeliveryInDoubt: the connection died while the server held the whole message.
            TransactionWithdrawn: `before_body` said no; the connection was dropped.
        """
        if not wire_ready:
            data = wire_form(data)
        waits = self._waits
        client = await self._connection()
        stale = self._carried > 0
        try:
            try:
                await client.envelope(sender, recipient, timeout=waits.command)
            except (SMTPServerDisconnected, ConnectionError):
                if not stale:
                    raise
                # A kept-alive connection the server closed while idle (RFC 5321 §4.5.3.2.7
                # lets it after 5 minutes): not the recipient's fault, so once more, afresh.
                self._drop()
                client = await self._connection()
                await client.envelope(sender, recipient, timeout=waits.command)
            await client.start_data(timeout=waits.data_start)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset_or_drop(client, exc.code)
            if exc.code == CLOSING:
                raise RelayUnavailable(self.target.name, f"closing: {_why(exc)}") from exc
            raise classify(exc.code, exc.message, recipient) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()
            raise TemporaryFailure(f"connection lost: {_why(exc)}", recipient=recipient) from exc
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
            response = await client.finish_data(data, timeout=waits.data_end)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset_or_drop(client, exc.code)
            raise classify(exc.code, exc.message, recipient) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            by_us, self._aborted = self._aborted, False
            self._drop()
            what = "cut by this process" if by_us else "no reply to the final dot"
            raise DeliveryInDoubt(f"{what}: {_why(exc)}", recipient=recipient,
                                  by_us=by_us) from exc
        self._carried += 1
        return response.code, response.message

    async def _reset_or_drop(self, client: aiosmtplib.SMTP, code: int) -> None:
        # 421 means the server is closing the channel (RFC 5321 §3.8): reconnect next time.
        if code == CLOSING or not client.is_connected:
            self._drop()
            return
        try:
            await client.rset(timeout=self._waits.command)
        except (aiosmtplib.SMTPException, OSError):
            self._drop()

    def abort(self) -> None:
        """Cut the connection now, mid-transaction if need be (a shutdown out of grace).

        The transaction in progress then fails like any lost connection and is recorded;
        one cut after its body is this process's doing, so it is not resent.
        """
        if self._client is not None:
            self._aborted = True
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
                await client.quit(timeout=self._waits.command)
            except (aiosmtplib.SMTPException, OSError):
                client.close()
