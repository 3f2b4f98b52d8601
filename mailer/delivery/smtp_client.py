"""Our aiosmtplib client: an envelope and DATA for messages in wire form, and the socket under it.

Everything here talks one command at a time; the pipelined transaction (RFC 2920) reads its
replies through reply_reader.ReplyReader instead, on the same connection.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

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

from mailer.delivery.targets import SmtpTarget
from mailer.delivery.wire import PLAIN_ADDRESS
from mailer.errors import RelayUnavailable


class WireDataSMTP(aiosmtplib.SMTP):
    """aiosmtplib's client, plus an envelope and DATA for parts already in wire form.

    `data()` normalises line endings and dot-stuffs every message with two regular
    expression passes; for a body prepared once per issue (CRLF, dot-stuffed, ending in
    CRLF) that is a fifth of the sender's CPU spent finding nothing to change. `mail()`
    and `rcpt()` parse each address with email.utils (9% of it) to quote what a plain
    address never needs.
    """

    async def greet(self) -> None:
        """EHLO (HELO if refused) where connect() did not say it: to learn the extensions.

        Raises:
            SMTPHeloError: the server refused both.
            SMTPServerDisconnected, SMTPTimeoutError: the connection is gone.
        """
        if self.is_ehlo_or_helo_needed:
            await self._ehlo_or_helo_if_needed()

    @property
    def pipelining(self) -> bool:
        """Whether the server's EHLO offered PIPELINING (RFC 2920)."""
        return self.supports_extension("pipelining")

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


def describe(exc: BaseException) -> str:
    # The reason as one line a person reads: aiosmtplib's messages, or the OS's words.
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}".strip()
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)  # CERTIFICATE_VERIFY_FAILED, WRONG_VERSION_NUMBER…
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()  # asyncio's own words name the address again
    return str(exc).strip() or type(exc).__name__


async def connect(target: SmtpTarget, tls_context: ssl.SSLContext | None) -> WireDataSMTP:
    """A connected, greeted client for `target`.

    Raises:
        RelayUnavailable: no connection, a greeting other than 220, STARTTLS or AUTH
            failed: whatever went wrong is the relay's.
    """
    t, waits = target, target.timeouts
    try:
        sock = await open_socket(t.host, t.port, timeout=waits.connect)
    except OSError as exc:
        raise RelayUnavailable(t.name, f"cannot connect: {describe(exc)}") from exc
    client = WireDataSMTP(
        hostname=t.host, sock=sock, username=t.username, password=t.password,
        use_tls=t.use_tls, start_tls=t.start_tls, validate_certs=t.validate_certs,
        tls_context=tls_context, timeout=waits.greeting,
    )
    try:
        await client.connect()
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise RelayUnavailable(t.name, f"login refused: {describe(exc)}") from exc
    except aiosmtplib.SMTPConnectResponseError as exc:
        raise RelayUnavailable(t.name, f"greeting refused: {describe(exc)}") from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
        tls = isinstance(cause, ssl.SSLError) or "TLS" in str(exc)
        raise RelayUnavailable(t.name, f"{'TLS' if tls else 'connection'} failed: "
                                       f"{describe(cause)}") from exc
    try:
        await client.greet()  # the extensions (PIPELINING) before the first MAIL
    except (aiosmtplib.SMTPException, OSError) as exc:
        client.close()
        raise RelayUnavailable(t.name, f"greeting refused: {describe(exc)}") from exc
    # The socket is the transport's from here: aiosmtplib's close() on a failed connect
    # closes it (closing it here too would pull it from under the transport).
    return client
