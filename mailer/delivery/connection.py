"""One SMTP connection's loop: take a recipient, wait its turn, build, send, record the outcome.

The connection goes to whichever relay the RelayPool names for each message: when that
relay fails, the same message goes to the next one, and nobody is charged an attempt.

Where the relay pipelines, a message's body waits (held, its SENDING mark durable) for the
next queued recipient, so that it leaves in the same write as that one's envelope: one
round trip a message. Only a recipient already queued is taken for that; with none, or
when the next one would have to wait (its turn, a relay, a stop), the body leaves alone.
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
from mailer.delivery.transport import Settle, SmtpTransport
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
        self._taken = 0  # recipients taken from the queue and not yet task_done()
        self._finished = 0  # of those, the ones whose outcome (or none) is known

    @property
    def _holding(self) -> bool:
        return self._transport is not None and self._transport.holding

    async def run(self) -> None:
        """Send until the None sentinel; every outcome is written before this returns."""
        queue, stopping = self._queue, self._stopping
        try:
            recipient = await self._take()
            while recipient is not None:
                if self._bucket is not None:  # before the transaction starts
                    await self._wait_for_turn()
                if stopping.is_set():
                    await self._flush()  # a held body goes; no new envelope starts
                    self._done(None)  # stays claimed; released when this worker unregisters
                else:
                    await self._deliver(recipient)
                if self._holding and not queue.empty():
                    self._release()  # the next one is taken: queue.join() still waits
                    recipient = self._take_now()  # its envelope goes with the held body
                    continue
                await self._flush()
                await self._write_if_idle()
                self._release()
                recipient = await self._take()
        finally:
            try:
                await self._flush()
                await self._pending.hand_over()
                if self._transport is not None:
                    await self._transport.aclose()
            finally:
                for _ in range(self._taken):  # what an error left undone too
                    queue.task_done()
                self._taken = self._finished = 0

    async def _take(self) -> Recipient | None:
        return self._taken_one(await self._queue.get())

    def _take_now(self) -> Recipient | None:
        # Never waits: a held body does not wait for the next recipient.
        return self._taken_one(self._queue.get_nowait())

    def _taken_one(self, recipient: Recipient | None) -> Recipient | None:
        self._taken += 1
        if recipient is None:  # the sentinel: finished with as soon as it is taken
            self._done(None)
            self._release()
        return recipient

    def _record(self, outcome: Outcome) -> None:
        self._observe(outcome)
        self._done(outcome)

    def _done(self, outcome: Outcome | None) -> None:
        # One recipient taken from the queue is finished with; _release() tells the queue.
        if outcome is not None:
            self._pending.add(outcome)
        self._finished += 1

    def _release(self) -> None:
        # task_done() once per finished recipient, only once its outcome is written or
        # something still queued will carry it: queue.join() then sees the send as it is.
        for _ in range(self._finished):
            self._queue.task_done()
        self._taken -= self._finished
        self._finished = 0

    async def _write_if_idle(self) -> None:
        pending, stopping = self._pending, self._stopping
        if pending.outcomes and (self._queue.empty() or stopping.is_set() or pending.full):
            # Nothing follows at once to carry these outcomes: write them now, so the
            # claim loop's queue.join() sees the send as it really is.
            await pending.hand_over()

    async def _flush(self) -> None:
        # A held body leaves alone, and its outcome is recorded.
        if self._transport is not None:
            await self._transport.flush()

    async def _wait_for_turn(self) -> None:
        # The per-second share. A connection about to wait writes its outcomes first: a
        # crash during the wait must not turn a delivered message into an unknown one.
        assert self._bucket is not None
        delay = self._bucket.reserve()
        if delay <= 0:
            return
        until = time.monotonic() + delay
        await self._flush()  # a held body never waits for the next one's turn
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
            await current.aclose()  # a held body leaves first
        self._transport = self._transport_factory(relay.target)
        return self._transport

    async def _deliver(self, recipient: Recipient) -> None:
        """One SMTP transaction, its outcome recorded now or, for a held body, when the
        server answers it. None is recorded when it was not made: the row was no longer
        ours, or no relay is to be had (the row stays claimed and goes back to the queue
        when this sender ends)."""
        builder = self._builder
        msg_id = message_id(builder.sender_domain)
        data = builder.build(recipient, msg_id=msg_id, date=utcnow())
        error: BaseException | None = None
        reply: tuple[int, str] | None = None
        while True:
            if self._holding and not self._relays.any_up:
                await self._flush()  # lease() may wait: a held body does not
            relay = await self._relays.lease(self._stopping)
            if relay is None:
                if self._relays.gave_up is not None:
                    self._stopping.set()  # the dispatcher reports why (relays.gave_up)
                self._done(None)
                return
            try:
                transport = await self._transport_to(relay)
                # The SENDING mark is durable before the body leaves: after a crash, a row
                # without it is sent again, a row with it is unknown.
                reply = await transport.send_or_hold(
                    builder.envelope_sender(recipient), recipient.email, data,
                    wire_ready=builder.wire_ready,
                    before_body=lambda: self._pending.hand_over(recipient.delivery_id),
                    then=self._settler(recipient, relay, msg_id))
            except RelayUnavailable as exc:
                self._relays.failed(relay, exc.reason)
                continue
            except TransactionWithdrawn:
                self._relays.worked(relay)
                self._done(None)  # another worker holds the row now (it thought us dead)
                return
            except (TemporaryFailure, PermanentFailure, DeliveryInDoubt) as exc:
                error = exc
            except BaseException:
                self._relays.abandon(relay)
                raise
            if reply is None and error is None:
                return  # held: the settler records it
            self._settler(recipient, relay, msg_id)(reply, error)
            return

    def _settler(self, recipient: Recipient, relay: Relay, msg_id: str) -> Settle:
        # Records one transaction's outcome, from its final reply or its error.
        def settle(reply: tuple[int, str] | None, error: BaseException | None) -> None:
            self._relays.worked(relay)
            self._record(outcome_of(recipient, error, reply, msg_id=msg_id, relay=relay.name,
                                    settings=self._settings, now=utcnow()))
        return settle
