"""SMTP transport: one persistent aiosmtplib connection per worker, and RFC 5321 reply classes.

What fails here is told apart by whose it is: the relay's (RelayUnavailable: no connection,
a refusing greeting, STARTTLS or login failed, 421), the recipient's (a 4xx or 5xx reply to
its transaction), or nobody knows (DeliveryInDoubt: the whole message was sent and no
reply came).

Where the relay offers PIPELINING (RFC 2920), MAIL, RCPT and DATA leave in one write and
the body in a second: two round trips per message instead of four. The SENDING mark is
still made durable after the 354 and before the first byte of the body. A caller that has
the next message at hand can have a body held (`then`): it leaves at the head of the next
envelope's write (RFC 2920 §3.1 lets message content open a group), one round trip each.
"""

from __future__ import annotations

import asyncio
from typing import cast

import aiosmtplib

from mailer.delivery.channel import (
    COMPLETED,
    BeforeBody,
    Channel,
    Held,
    Settle,
    Stale,
    said,
)
from mailer.delivery.replies import (
    START_INPUT,
    Reply,
    envelope_flight,
    final_dot,
    first_refusal,
)
from mailer.delivery.reply_reader import ConnectionLostError, ReplyReader, reading_replies
from mailer.delivery.smtp_client import WireDataSMTP, describe
from mailer.delivery.wire import CLOSING, PLAIN_ADDRESS, classify, wire_form
from mailer.errors import RelayUnavailable, TemporaryFailure

__all__ = ["BeforeBody", "Settle", "SmtpTransport"]


class SmtpTransport(Channel):
    """A reusable SMTP connection to one relay: connects on first use and again after a drop
    or a 421."""

    async def send(self, sender: str, recipient: str, data: bytes, *,
                   wire_ready: bool = False, before_body: BeforeBody | None = None,
                   ) -> tuple[int, str]:
        """Run one SMTP transaction; returns the server's final (code, reply) (see
        send_or_hold() for what it raises)."""
        reply = await self.send_or_hold(sender, recipient, data, wire_ready=wire_ready,
                                        before_body=before_body)
        assert reply is not None  # only a `then` holds a body
        return reply

    async def send_or_hold(self, sender: str, recipient: str, data: bytes, *,
                           wire_ready: bool = False, before_body: BeforeBody | None = None,
                           then: Settle | None = None) -> tuple[int, str] | None:
        """Run one SMTP transaction; returns the server's final (code, reply), or None when
        its body is held.

        With `then`, a pipelined transaction holds the body once `before_body` let it go:
        it leaves at the head of the next send's write, or on flush(), and `then` is told
        its outcome. A body already held always leaves before this envelope.

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
                                           before_body, then)
        except Stale:
            # A kept-alive connection the server closed while idle (RFC 5321 §4.5.3.2.7
            # lets it after 5 minutes): not the recipient's fault, so once more, afresh
            # (a fresh connection has carried nothing, so it is never stale).
            return await self._transaction(await self._connection(), sender, recipient, data,
                                           before_body, then)

    async def _transaction(self, client: WireDataSMTP, sender: str, recipient: str,
                           data: bytes, before_body: BeforeBody | None,
                           then: Settle | None) -> tuple[int, str] | None:
        # Pipelined only for addresses sent as they are: the rest go through aiosmtplib's
        # mail()/rcpt(), which quote them.
        if (self.target.pipelining and client.pipelining
                and PLAIN_ADDRESS.fullmatch(sender) and PLAIN_ADDRESS.fullmatch(recipient)):
            return await self._pipelined(client, sender, recipient, data, before_body, then)
        await self.flush()
        return await self._one_by_one(await self._connection(), sender, recipient, data,
                                      before_body)

    async def flush(self) -> None:
        """Send a held body on its own and settle it (nothing follows at once)."""
        if self._held is None:
            return
        client = self._client  # the held body's own connection, never a new one
        if client is None or not client.is_connected or client.protocol is None:
            self._drop()  # settles it as never sent
            return
        protocol = client.protocol
        with reading_replies(cast(asyncio.Transport, protocol.transport), protocol) as reader:
            try:
                reader.write(self._held.body)
            except ConnectionLostError:
                self._drop()  # found gone before a byte of it left: never sent
                return
            final = await self._settle_held(reader)
        if final is not None and final.code != COMPLETED:
            await self._reset_or_drop(client, final.code)

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
                    raise Stale from exc
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
                         data: bytes, before_body: BeforeBody | None,
                         then: Settle | None) -> tuple[int, str] | None:
        # RFC 2920: [a held body,] MAIL, RCPT and DATA in one write, their replies read in
        # order; then the body, or it is held for the next write.
        protocol = client.protocol
        assert protocol is not None  # _connection() hands out connected clients only
        final: Reply | None = None
        behind = self._held is not None
        with reading_replies(cast(asyncio.Transport, protocol.transport), protocol) as reader:
            replies, lost = await self._flight(reader, sender, recipient)
            refusal = first_refusal(replies)
            if lost is None and refusal is None:
                await self._hand_over(before_body, recipient)
                if then is not None:
                    # Nothing is in flight: the server waits for the body, which leaves at
                    # the head of the next write (or on flush()).
                    self._held = Held(recipient, final_dot(data), then)
                    return None
                try:
                    reader.write(final_dot(data))
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
            # As in _one_by_one: lost before the RCPT reply on a kept-alive connection (not
            # one that carried a body in this flight: that body's fate is settled already).
            if (self._carried > 0 and len(replies) < 2 and not self._aborted and not behind
                    and isinstance(lost, ConnectionLostError)):
                raise Stale from lost
            raise TemporaryFailure(f"connection lost: {said(lost)}",
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
            ahead = self._held.body if self._held is not None else b""
            reader.write(ahead + envelope_flight(sender, recipient))
            if ahead:
                final = await self._settle_held(reader)
                if final is None:
                    return replies, ConnectionLostError("connection lost after a body")
                if final.code == CLOSING:
                    # The channel closes behind the previous message: this envelope is the
                    # relay's trouble, as a 421 to its own MAIL would be.
                    return [final], None
            for wait in (waits.command, waits.command, waits.data_start):
                replies.append(await reader.read(wait))
                if replies[-1].code == CLOSING:
                    break  # the server hangs up after it (RFC 5321 §3.8)
        except (ConnectionLostError, TimeoutError) as exc:
            return replies, exc
        return replies, None

    async def _settle_held(self, reader: ReplyReader) -> Reply | None:
        # The held body was just written: its final reply is read and the message settled;
        # None when no reply came (then it is in doubt).
        held = self._held
        assert held is not None
        self._held = None  # from here the body has left: its fate is the final reply's
        try:
            final = await reader.read(self._waits.data_end)
        except (ConnectionLostError, TimeoutError) as exc:
            held.settle(None, self._in_doubt(exc, held.recipient))
            return None
        if final.code == COMPLETED:
            self._carried += 1
            held.settle((final.code, final.text), None)
        else:
            # The final reply ends the transaction either way (RFC 5321 §4.1.1.4): the
            # next MAIL needs no RSET before it.
            held.settle(None, classify(final.code, final.text, held.recipient))
        return final

    async def aclose(self) -> None:
        """Send a held body, then say QUIT politely; a server already gone is fine."""
        await self.flush()
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await client.quit(timeout=self._waits.command)
            except (aiosmtplib.SMTPException, OSError):
                client.close()

