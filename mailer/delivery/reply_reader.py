"""Our own reader of SMTP replies, lent the connection for one pipelined transaction.

aiosmtplib's protocol keeps one pending reply and drops whatever arrives while it is not
waiting for one, so replies to commands written together (RFC 2920) would be lost. For the
length of a transaction this protocol takes the transport's reads over, queues every reply
in order (replies.ReplyParser), and hands the transport back; aiosmtplib keeps EHLO,
STARTTLS, AUTH, RSET and QUIT.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from mailer.delivery.replies import MalformedReply, Reply, ReplyParser


class ConnectionLostError(ConnectionError):
    """The server closed the connection, or sent what is not SMTP (then we closed it)."""


class ReplyReader(asyncio.Protocol):
    """Replies in the order they come, for commands written without waiting."""

    def __init__(self, transport: asyncio.Transport, previous: asyncio.BaseProtocol) -> None:
        self._transport = transport
        self._previous = previous
        self._parser = ReplyParser()
        self._waiter: asyncio.Future[None] | None = None
        self._lost: ConnectionLostError | None = None

    def write(self, data: bytes) -> None:
        """Hand `data` to the transport (the kernel sends it as one flight where it can).

        Raises:
            ConnectionLostError: the connection is gone.
        """
        if self._lost is not None or self._transport.is_closing():
            raise self._lost or ConnectionLostError("connection lost")
        self._transport.write(data)

    async def read(self, timeout: float) -> Reply:  # noqa: ASYNC109
        """The next reply, waiting at most `timeout` seconds for it.

        Replies that arrived before the connection was lost are still handed out first.

        Raises:
            ConnectionLostError: the connection was lost before the reply came.
            TimeoutError: no reply within `timeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (reply := self._parser.next_reply()) is None:
            if self._lost is not None:
                raise self._lost
            self._waiter = loop.create_future()
            try:
                await asyncio.wait_for(self._waiter, max(0.0, deadline - loop.time()))
            finally:
                self._waiter = None
        return reply

    # -- asyncio.Protocol -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed(data)
        except MalformedReply as exc:
            # The stream can no longer be paired with our commands: give it up.
            self._lose(f"malformed reply: {exc}")
            self._transport.close()
        self._wake()

    def eof_received(self) -> bool:
        self._lose("connection closed by the server")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose(f"connection lost: {exc}" if exc else "connection lost")
        # aiosmtplib's protocol learns of it too, so its client knows it is disconnected.
        self._previous.connection_lost(exc)

    # Write flow control is aiosmtplib's state: it outlives this transaction.
    def pause_writing(self) -> None:
        self._previous.pause_writing()

    def resume_writing(self) -> None:
        self._previous.resume_writing()

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = ConnectionLostError(why)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@contextlib.contextmanager
def reading_replies(transport: asyncio.Transport,
                    previous: asyncio.BaseProtocol) -> Iterator[ReplyReader]:
    """Lend `transport`'s reads to a ReplyReader, and give them back to `previous` after.

    Between transactions nothing is in flight, so no byte is left between the two readers.
    """
    reader = ReplyReader(transport, previous)
    transport.set_protocol(reader)
    try:
        yield reader
    finally:
        transport.set_protocol(previous)
