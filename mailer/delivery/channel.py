"""One SMTP connection's life under the transport: opened on first use and again after a
drop or a 421, the SENDING mark handed over before a body, and how a cut is told apart.

A held body (see transport.py) belongs to the connection it was announced on: when that
connection goes before the body left, the message is settled as never sent.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiosmtplib

from mailer.delivery.smtp_client import WireDataSMTP, connect, describe
from mailer.delivery.targets import SmtpTarget, SmtpTimeouts
from mailer.delivery.wire import CLOSING
from mailer.errors import (
    DeliveryInDoubt,
    TemporaryFailure,
    TransactionWithdrawn,
)

BeforeBody = Callable[[], Awaitable[bool]]
# Told a held message's fate, once: its final (code, reply), or what send() would raise.
Settle = Callable[[tuple[int, str] | None, BaseException | None], None]
COMPLETED = 250


@dataclass(frozen=True, slots=True)
class Held:
    """A message the server said 354 to, whose SENDING mark is durable and whose body (with
    its final dot) has not left yet."""

    recipient: str
    body: bytes
    settle: Settle


class Stale(Exception):
    """A kept-alive connection was found closed before the server answered anything."""


class Channel:
    """A reusable SMTP connection to one relay, and a body held on it."""

    def __init__(self, target: SmtpTarget, *, tls_context: ssl.SSLContext | None = None) -> None:
        self.target = target
        self._tls_context = tls_context
        self._client: WireDataSMTP | None = None
        self._carried = 0  # transactions the open connection has finished
        self._aborted = False
        self._held: Held | None = None  # set only while its body is unwritten

    @property
    def holding(self) -> bool:
        """A body is held: it leaves at the head of the next send's write, or on flush()."""
        return self._held is not None

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
        self._drop()  # a held body never outlives its connection (it would lose its envelope)
        self._client = await connect(self.target, self._tls_context)
        self._carried = 0
        return self._client

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
        return DeliveryInDoubt(f"{what}: {said(exc)}", recipient=recipient, by_us=by_us)

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
        # A held body has nothing in flight: it is settled as never sent.
        self._aborted = self._client is not None and self._held is None
        self._drop()

    def _drop(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            # Its body never left: a clean retry, as a cut before the body always was.
            held.settle(None, TemporaryFailure("connection lost before the body",
                                               recipient=held.recipient))
        if self._client is not None:
            self._client.close()
            self._client = None


def said(exc: BaseException) -> str:
    # Our reader's errors in the words aiosmtplib's would use.
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out waiting for the server's reply"
    return describe(exc)
