"""One SMTP connection's loop: take a recipient, wait its turn, build, send, record the outcome.

The connection goes to whichever relay the RelayPool names for each message: when that
relay fails, the same message goes to the next one, and nobody is charged an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from mailer.delivery.build import MessageBuilder
from mailer.delivery.journal import Journal, PendingOutcomes
from mailer.delivery.message import message_id
from mailer.delivery.outcomes import DispatchSettings, outcome_of
from mailer.delivery.relays import Relay, RelayPool
from mailer.delivery.targets import SmtpTarget
from mailer.delivery.throttle import TokenBucket
from mailer.delivery.transport import SmtpTransport
from mailer.errors import (
    DeliveryInDoubt,
    PermanentFailure,
    RelayUnavailable,
    TemporaryFailure,
    TransactionWithdrawn,
)
from mailer.rows import Outcome, Recipient
from mailer.states import utcnow


class Connection:
    """Sends queued recipients over one SMTP connection (aiosmtplib runs one transaction at a
    time per client), until the queue hands it None."""

    def __init__(self, *, transport_factory: Callable[[SmtpTarget], SmtpTransport],
                 relays: RelayPool, builder: MessageBuilder, queue: asyncio.Queue[Recipient | None],
                 journal: Journal, bucket: TokenBucket | None, stopping: asyncio.Event,
                 settings: DispatchSettings, observe: Callable[[Outcome], None]) -> None:
        self._transport_factory = transport_factory
        self._relays = relays
        self._transport: SmtpTransport | None = None
        self._builder = builder
        self._queue = queue
        self._pending = PendingOutcomes(journal)
        self._bucket = bucket
        self._stopping = stopping
        self._settings = settings
        self._observe = observe  # the dispatcher's tally, pause rule and progress callback

    async def run(self) -> None:
        """Send until the None sentinel; every outcome is written before this returns."""
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
                    outcome = await self._deliver(recipient)
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
            if self._transport is not None:
                await self._transport.aclose()

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

    async def _transport_to(self, relay: Relay) -> SmtpTransport:
        # The open connection if it goes to `relay`; else that one says QUIT and a new one
        # is made (traffic moves to another relay, or back to a preferred one).
        current = self._transport
        if current is not None and current.target is relay.target:
            return current
        if current is not None:
            await current.aclose()
        self._transport = self._transport_factory(relay.target)
        return self._transport

    async def _deliver(self, recipient: Recipient) -> Outcome | None:
        """One SMTP transaction; its outcome, or None when it was not made: the row was no
        longer ours, or no relay is to be had (the row stays claimed and goes back to the
        queue when this sender ends)."""
        builder = self._builder
        msg_id = message_id(builder.sender_domain)
        data = builder.build(recipient, msg_id=msg_id, date=utcnow())
        error: BaseException | None = None
        reply: tuple[int, str] | None = None
        while True:
            relay = await self._relays.lease(self._stopping)
            if relay is None:
                if self._relays.gave_up is not None:
                    self._stopping.set()  # the dispatcher reports why (relays.gave_up)
                return None
            try:
                transport = await self._transport_to(relay)
                # The SENDING mark is durable before the body leaves: after a crash, a row
                # without it is sent again, a row with it is unknown.
                reply = await transport.send(
                    builder.envelope_sender(recipient), recipient.email, data,
                    wire_ready=builder.wire_ready,
                    before_body=lambda: self._pending.hand_over(recipient.delivery_id))
            except RelayUnavailable as exc:
                self._relays.failed(relay, exc.reason)
                continue
            except TransactionWithdrawn:
                self._relays.worked(relay)
                return None  # another worker holds the row now (this one was thought dead)
            except (TemporaryFailure, PermanentFailure, DeliveryInDoubt) as exc:
                error = exc
            except BaseException:
                self._relays.abandon(relay)
                raise
            self._relays.worked(relay)
            break
        outcome = outcome_of(recipient, error, reply, msg_id=msg_id, relay=relay.name,
                             settings=self._settings, now=utcnow())
        self._observe(outcome)
        return outcome
