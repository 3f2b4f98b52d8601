"""One SMTP connection's loop: take a recipient, wait its turn, build, send, record the outcome."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from mailer.delivery.build import MessageBuilder
from mailer.delivery.journal import Journal, PendingOutcomes
from mailer.delivery.message import message_id
from mailer.delivery.outcomes import DispatchSettings, outcome_of
from mailer.delivery.throttle import TokenBucket
from mailer.delivery.transport import SmtpTransport
from mailer.errors import (
    DeliveryInDoubt,
    PermanentFailure,
    TemporaryFailure,
    TransactionWithdrawn,
)
from mailer.rows import Outcome, Recipient
from mailer.states import utcnow


class Connection:
    """Sends queued recipients over one SMTP connection (aiosmtplib runs one transaction at a
    time per client), until the queue hands it None."""

    def __init__(self, *, transport_factory: Callable[[], SmtpTransport],
                 builder: MessageBuilder, queue: asyncio.Queue[Recipient | None],
                 journal: Journal, bucket: TokenBucket | None, stopping: asyncio.Event,
                 settings: DispatchSettings, observe: Callable[[Outcome], None]) -> None:
        self._transport_factory = transport_factory
        self._builder = builder
        self._queue = queue
        self._pending = PendingOutcomes(journal)
        self._bucket = bucket
        self._stopping = stopping
        self._settings = settings
        self._observe = observe  # the dispatcher's tally, pause rule and progress callback

    async def run(self) -> None:
        """Send until the None sentinel; every outcome is written before this returns."""
        transport = self._transport_factory()
        queue, pending, stopping = self._queue, self._pending, self._stopping
        try:
            while True:
                recipient = await queue.get()
                try:
                    if recipient is None:
                        break
                    if self._bucket is not None:  # before the transaction starts
                        await self._wait_for_turn()
                    if stopping.is_set():
                        continue  # stays claimed; released when this worker unregisters
                    outcome = await self._deliver(transport, recipient)
                    if outcome is not None:
                        pending.add(outcome)
                    if pending.outcomes and (queue.empty() or stopping.is_set()
                                             or pending.full):
                        # Nothing follows at once to carry these outcomes: write them now,
                        # so the claim loop's queue.join() sees the send as it really is.
                        await pending.hand_over()
                finally:
                    queue.task_done()
        finally:
            await pending.hand_over()
            await transport.aclose()

    async def _wait_for_turn(self) -> None:
        # The per-second share. A connection about to wait writes its outcomes first: a
        # crash during the wait must not turn a delivered message into an unknown one.
        assert self._bucket is not None
        delay = self._bucket.reserve()
        if delay <= 0:
            return
        until = time.monotonic() + delay
        await self._pending.hand_over()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), max(0.0, until - time.monotonic()))

    async def _deliver(self, transport: SmtpTransport, recipient: Recipient) -> Outcome | None:
        """One SMTP transaction; its outcome, or None when the row was no longer ours."""
        builder = self._builder
        msg_id = message_id(builder.sender_domain)
        data = builder.build(recipient, msg_id=msg_id, date=utcnow())
        error: BaseException | None = None
        reply: tuple[int, str] | None = None
        try:
            # The SENDING mark is durable before the body leaves: after a crash, a row
            # without it is sent again, a row with it is unknown (Store.release_dead_workers).
            reply = await transport.send(
                builder.sender_address, recipient.email, data,
                wire_ready=builder.wire_ready,
                before_body=lambda: self._pending.hand_over(recipient.delivery_id))
        except TransactionWithdrawn:
            return None  # another worker holds the row now (this one was thought dead)
        except (TemporaryFailure, PermanentFailure, DeliveryInDoubt) as exc:
            error = exc
        outcome = outcome_of(recipient, error, reply, msg_id=msg_id,
                             settings=self._settings, now=utcnow())
        self._observe(outcome)
        return outcome
