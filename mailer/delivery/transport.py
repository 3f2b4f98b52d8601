"""SMTP transport: one persistent aiosmtplib connection per worker, and RFC 5321 reply classes.

What fails here is told apart by whose it is: the relay's (RelayUnavailable: no connection,
a refusing greeting, STARTTLS or login failed, 421), the recipient's (a 4xx or 5xx reply to
its transaction), or nobody knows (DeliveryInDoubt: the whole message was sent and no
reply came).

Where the relay offers PIPELINING (RFC 2920), MAIL, RCPT and DATA leave in one write and
the body in a second: two round trips per message instead of four. The SENDING mark is
still made durable after the 354 and before the first byte of the body.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

import aiosmtplib

from mailer.delivery.replies import START_INPUT, Reply, envelope_flight, first_refusal
from mailer.delivery.reply_reader import ConnectionLostError, ReplyReader, reading_replies
from mailer.delivery.smtp_client import WireDataSMTP, describe, open_socket
from mailer.delivery.targets import SmtpTarget, SmtpTimeouts
from mailer.delivery.wire import CLOSING, PLAIN_ADDRESS, classify, wire_form
from mailer.errors import (
    DeliveryInDoubt,
    RelayUnavailable,
    TemporaryFailure,
    TransactionWithdrawn,
)

BeforeBody = Callable[[], Awaitable[bool]]
COMPLETED = 250


class _Stale(Exception):
    """A kept-alive connection was found closed before the server answered anything."""


class SmtpTransport:
    """A reusable SMTP connection to one relay: connects on first use and again after a drop
    or a 421."""

    def __init__(self, target: SmtpTarget, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.target = target
        self._tls_context = tls_context
        self._client: WireDataSMTP | None = None
        self._carried = 0  # transactions the open connection has finished
        self._aborted = False

    @property
    def _waits(self) -> SmtpTimeouts:
        return self.target.timeouts

    async def _connection(self) -> WireDataSMTP:
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
            raise RelayUnavailable(t.name, f"cannot connect: {describe(exc)}") from exc
        client = WireDataSMTP(
            hostname=t.host, sock=sock, username=t.username, password=t.password,
            use_tls=t.use_tls, start_tls=t.start_tls, validate_certs=t.validate_certs,
            tls_context=self._tls_context, timeout=waits.greeting,
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
        self._client = client
        self._carried = 0
        return client

    async def send(self, sender: str, recipient: str, data: bytes, *,
                   wire_ready: bool = False, before_body: BeforeBody | None = None,
                   ) -> tuple[int, str]:
        """Run one SMTP transaction; returns the server's final (code, reply).

        `wire_ready`: `data` is already CRLF and dot-stuffed (see WireDataSMTP).
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
        try:
            return await self._transaction(await self._connection(), sender, recipient, data,
                                           before_body)
        except _Stale:
            # A kept-alive connection the server closed while idle (RFC 5321 §4.5.3.2.7
            # lets it after 5 minutes): not the recipient's fault, so once more, afresh
            # (a fresh connection has carried nothing, so it is never stale).
            return await self._transaction(await self._connection(), sender, recipient, data,
                                           before_body)

    async def _transaction(self, client: WireDataSMTP, sender: str, recipient: str,
                           data: bytes, before_body: BeforeBody | None) -> tuple[int, str]:
        # Pipelined only for addresses sent as they are: the rest go through aiosmtplib's
        # mail()/rcpt(), which quote them.
        if (self.target.pipelining and client.pipelining
                and PLAIN_ADDRESS.fullmatch(sender) and PLAIN_ADDRESS.fullmatch(recipient)):
            return await self._pipelined(client, sender, recipient, data, before_body)
        return await self._one_by_one(client, sender, recipient, data, before_body)

    async def _one_by_one(self, client: WireDataSMTP, sender: str, recipient: str,
                          data: bytes, before_body: BeforeBody | None) -> tuple[int, str]:
        # Each command waits for its reply: four round trips.
        waits = self._waits
        try:
            try:
                await client.envelope(sender, recipient, timeout=waits.command)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                self._drop()
                if self._carried > 0:
                    raise _Stale from exc
                raise
            await client.start_data(timeout=waits.data_start)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset_or_drop(client, exc.code)
            if exc.code == CLOSING:
                raise RelayUnavailable(self.target.name, f"closing: {describe(exc)}") from exc
            raise classify(exc.code, exc.message, recipient) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            self._drop()
            raise TemporaryFailure(f"connection lost: {describe(exc)}",
                                   recipient=recipient) from exc
        await self._hand_over(before_body, recipient)
        try:
            response = await client.finish_data(data, timeout=waits.data_end)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset_or_drop(client, exc.code)
            raise classify(exc.code, exc.message, recipient) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._in_doubt(exc, recipient) from exc
        self._carried += 1
        return response.code, response.message

    async def _pipelined(self, client: WireDataSMTP, sender: str, recipient: str,
                         data: bytes, before_body: BeforeBody | None) -> tuple[int, str]:
        # RFC 2920: MAIL, RCPT and DATA in one write, their replies read in order; then the
        # body. Two round trips.
        protocol = client.protocol
        assert protocol is not None  # _connection() hands out connected clients only
        final: Reply | None = None
        with reading_replies(cast(asyncio.Transport, protocol.transport), protocol) as reader:
            replies, lost = await self._flight(reader, sender, recipient)
            refusal = first_refusal(replies)
            if lost is None and refusal is None:
                await self._hand_over(before_body, recipient)
                try:
                    reader.write(data + b".\r\n")
                except ConnectionLostError as exc:
                    # Found gone before a byte of the body left: nothing can be delivered.
                    self._drop()
                    raise TemporaryFailure(f"connection lost before the body: {exc}",
                                           recipient=recipient) from exc
                try:
                    final = await reader.read(self._waits.data_end)
                except (ConnectionLostError, TimeoutError) as exc:
                    raise self._in_doubt(exc, recipient) from exc
        # aiosmtplib reads the connection again from here (RSET, QUIT).
        if refusal is not None:
            if lost is not None or any(r.code == START_INPUT for r in replies):
                # Gone, or mid-DATA where no RSET is heard (a server that said 354 with no
                # recipient): hanging up makes the server drop the transaction.
                self._drop()
            else:
                await self._reset_or_drop(client, refusal.code)
            if refusal.code == CLOSING:
                raise RelayUnavailable(self.target.name,
                                       f"closing: {refusal.code} {refusal.text}".strip())
            raise classify(refusal.code, refusal.text, recipient)
        if lost is not None:
            self._drop()
            # As in _one_by_one: lost before the RCPT reply on a kept-alive connection.
            if (self._carried > 0 and len(replies) < 2 and not self._aborted
                    and isinstance(lost, ConnectionLostError)):
                raise _Stale from lost
            raise TemporaryFailure(f"connection lost: {_said(lost)}",
                                   recipient=recipient) from lost
        assert final is not None
        if final.code != COMPLETED:
            await self._reset_or_drop(client, final.code)
            raise classify(final.code, final.text, recipient)
        self._carried += 1
        return final.code, final.text

    async def _flight(self, reader: ReplyReader, sender: str, recipient: str,
                      ) -> tuple[list[Reply], Exception | None]:
        # The envelope's replies as far as they came, and why the rest did not.
        waits = self._waits
        replies: list[Reply] = []
        try:
            reader.write(envelope_flight(sender, recipient))
            for wait in (waits.command, waits.command, waits.data_start):
                replies.append(await reader.read(wait))
                if replies[-1].code == CLOSING:
                    break  # the server hangs up after it (RFC 5321 §3.8)
        except (ConnectionLostError, TimeoutError) as exc:
            return replies, exc
        return replies, None

    async def _hand_over(self, before_body: BeforeBody | None, recipient: str) -> None:
        # The SENDING mark, made durable between the 354 and the body's first byte.
        if before_body is None:
            return
        try:
            go_on = await before_body()
        except BaseException:
            # Mid-DATA there is no RSET: hanging up makes the server drop the message.
            self._drop()
            raise
        if not go_on:
            self._drop()
            raise TransactionWithdrawn(f"withdrawn before the body left: {recipient}")

    def _in_doubt(self, exc: BaseException, recipient: str) -> DeliveryInDoubt:
        # The whole message left and no reply came: only the server knows (RFC 5321 §6.1).
        by_us, self._aborted = self._aborted, False
        self._drop()
        what = "cut by this process" if by_us else "no reply to the final dot"
        return DeliveryInDoubt(f"{what}: {_said(exc)}", recipient=recipient, by_us=by_us)

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


def _said(exc: BaseException) -> str:
    # Our reader's errors in the words aiosmtplib's would use.
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out waiting for the server's reply"
    return describe(exc)
