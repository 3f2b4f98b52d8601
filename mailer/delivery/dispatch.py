"""The send pipeline, composed: claim → build → throttle → transport → journal.

Dispatcher wires the parts of mailer.delivery for one send: a ClaimLoop feeds a queue,
`concurrency` Connections each take a recipient from it, wait their turn (TokenBucket),
build the message (MessageBuilder), send it (SmtpTransport) and hand the outcome to the
Journal; every outcome also goes through the PauseRule and the Tally here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mailer.delivery.build import MessageBuilder
from mailer.delivery.claims import ClaimLoop
from mailer.delivery.connection import Connection
from mailer.delivery.delivery_store import DeliveryStore
from mailer.delivery.journal import Journal
from mailer.delivery.message import Letter
from mailer.delivery.outcomes import DispatchSettings, Tally
from mailer.delivery.pause import PauseRule
from mailer.delivery.relays import RelayPool
from mailer.delivery.signing import DkimSigner
from mailer.delivery.targets import SmtpTarget
from mailer.delivery.throttle import SlidingWindow, TokenBucket
from mailer.delivery.transport import SmtpTransport
from mailer.rows import Outcome, Recipient
from mailer.states import DeliveryStatus

log = logging.getLogger("mailer.dispatch")


class Dispatcher:
    """Sends one send's pending deliveries from this process until none is left or stop()."""

    def __init__(
        self,
        store: DeliveryStore,
        *,
        send_id: int,
        letter: Letter,
        secret_key: str,
        base_url: str,
        worker_id: str,
        transport_factory: Callable[[SmtpTarget], SmtpTransport],
        relays: RelayPool,
        settings: DispatchSettings,
        on_outcome: Callable[[Outcome], None] | None = None,
        signer: DkimSigner | None = None,
        bounce_address: str | None = None,
    ) -> None:
        self.store = store
        self.send_id = send_id
        self.worker_id = worker_id
        self.transport_factory = transport_factory
        self.relays = relays
        self.settings = settings
        self.on_outcome = on_outcome
        self.tally = Tally()
        self.builder = MessageBuilder(letter, secret_key=secret_key, base_url=base_url,
                                      signer=signer, bounce_address=bounce_address)
        self._pause_rule = PauseRule(window=settings.error_window,
                                     max_error_rate=settings.max_error_rate)
        self._stopping = asyncio.Event()
        self._queue: asyncio.Queue[Recipient | None] = asyncio.Queue(
            maxsize=max(settings.batch_size, settings.concurrency * 2)
        )
        self._bucket = TokenBucket(settings.rate_per_second) if settings.rate_per_second else None
        self._hour = SlidingWindow(settings.max_per_hour) if settings.max_per_hour else None

    @property
    def pause_reason(self) -> str | None:
        """Why the send paused itself (the PauseRule's words), or None."""
        return self._pause_rule.reason

    @property
    def relay_failure(self) -> str | None:
        """Why no relay could be had (each relay's name and reason), when that stopped the
        send (only with RelayPool.give_up_after); None otherwise."""
        return self.relays.gave_up

    @property
    def stopping(self) -> bool:
        """stop() was called (by the caller, a pause, or a send paused elsewhere)."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Take no new message; in-flight transactions finish and are recorded."""
        self._stopping.set()

    def _observe(self, outcome: Outcome) -> None:
        # Every outcome, as its transaction ends (the Journal writes it a little later).
        self.tally.count(outcome)
        reason = self._pause_rule.note(outcome)
        if reason is not None:
            log.warning("pausing the send", extra={"send_id": self.send_id, "reason": reason})
            self.stop()
        if outcome.status == DeliveryStatus.FAILED:
            log.warning("delivery failed", extra={"recipient_id": outcome.delivery_id,
                                                  "reply": outcome.smtp_reply})
        if self.on_outcome:
            self.on_outcome(outcome)

    def _claim_loop(self) -> ClaimLoop:
        return ClaimLoop(self.store, send_id=self.send_id, worker_id=self.worker_id,
                         settings=self.settings, queue=self._queue, stopping=self._stopping,
                         stop=self.stop, bucket=self._bucket, hour=self._hour)

    def _connection(self, journal: Journal) -> Connection:
        return Connection(transport_factory=self.transport_factory, relays=self.relays,
                          builder=self.builder,
                          queue=self._queue, journal=journal, bucket=self._bucket,
                          stopping=self._stopping, settings=self.settings,
                          observe=self._observe)

    async def run(self) -> Tally:
        """Run until every delivery of the send is finished here or elsewhere, or stop()."""
        self.relays.restart()
        async with Journal(self.store, worker_id=self.worker_id,
                           bounce_limit=self.settings.hard_bounce_limit) as journal:
            workers = [asyncio.create_task(self._connection(journal).run(),
                                           name=f"mailer-smtp-{i}")
                       for i in range(self.settings.concurrency)]
            claimer = asyncio.create_task(self._claim_loop().run(), name="mailer-claim")
            tasks = [claimer, *workers]
            try:
                # Connections only end on the sentinel or by failing, so the first task to
                # finish is either the claimer (all claimed work handed out) or a broken
                # connection.
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if claimer.done() and claimer.exception() is None:
                    for _ in workers:
                        await self._queue.put(None)
                    await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t for t in tasks if t.done() and t.exception() is not None]
                if failed:
                    # A broken database or a bug: stop everything; rows left SENDING are
                    # settled on the next start, claimed ones go back to the queue.
                    raise failed[0].exception()  # type: ignore[misc]
            finally:
                # Also when run() itself is cancelled: no task may outlive the journal it
                # waits on.
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return self.tally
