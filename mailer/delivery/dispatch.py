"""The send pipeline: claim batches, send over N persistent connections, journal every outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from mailer import tokens
from mailer.delivery.message import Letter, message_id, prepare_message
from mailer.delivery.outcomes import DispatchSettings, Tally, outcome_of
from mailer.delivery.signing import DkimSigner
from mailer.delivery.throttle import SlidingWindow, TokenBucket
from mailer.delivery.transport import SmtpTransport
from mailer.errors import (
    DeliveryInDoubt,
    PermanentFailure,
    TemporaryFailure,
    TransactionWithdrawn,
)
from mailer.sending.prepare import HEARTBEAT_TIMEOUT
from mailer.states import DeliveryStatus, SendStatus, utcnow
from mailer.store import Outcome, Recipient, Store
from mailer.store.journal import JournalWriter

log = logging.getLogger("mailer.dispatch")
# Outcomes of transactions refused before their body (RCPT 4xx/5xx) wait at most this
# many for a SENDING mark to ride along with; the rows are still PENDING meanwhile.
_MAX_UNWRITTEN = 16


@dataclass(frozen=True, slots=True)
class _Entry:
    sending: int | None
    outcomes: list[Outcome]
    future: asyncio.Future[bool]


class Journal:
    """Group commit of delivery state changes for all workers of a process.

    Each worker hands in the outcomes of its last messages with the id of the one whose
    body is about to leave, and waits; whatever arrived while the previous commit ran is
    written in the next one. So the database sees one commit per round of workers, not
    one per message, and yet no body leaves before its SENDING mark is durable.
    """

    def __init__(self, store: Store, *, worker_id: str, bounce_limit: int) -> None:
        self._writer = store.journal_writer(worker_id=worker_id, bounce_limit=bounce_limit)
        self._open = contextlib.AsyncExitStack()
        self._waiting: list[_Entry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Journal:
        writer = await self._open.enter_async_context(self._writer)
        self._task = asyncio.create_task(self._run(writer), name="mailer-journal")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._open.aclose()

    async def submit(self, *, sending: int | None = None,
                     outcomes: list[Outcome] | None = None) -> bool:
        """Durably record `outcomes` and mark `sending` SENDING; True if its body may leave."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Entry(sending, outcomes or [], future))
        self._wake.set()
        return await future

    async def hand_over(self, unwritten: list[Outcome], sending: int | None = None) -> bool:
        """submit() what `unwritten` holds (emptying it) with the mark of `sending`."""
        outcomes = unwritten[:]
        unwritten.clear()
        if not outcomes and sending is None:
            return False
        return await self.submit(sending=sending, outcomes=outcomes)

    async def _run(self, writer: JournalWriter) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            if not batch:
                continue
            try:
                allowed = await writer.write(
                    sending=[e.sending for e in batch if e.sending is not None],
                    outcomes=[o for e in batch for o in e.outcomes])
            except Exception as exc:  # the waiting workers decide what to do with it
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                continue
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_result(entry.sending in allowed)


class Dispatcher:
    """Sends one send's pending deliveries from this process until none is left or stop()."""

    def __init__(
        self,
        store: Store,
        *,
        send_id: int,
        letter: Letter,
        secret_key: str,
        base_url: str,
        worker_id: str,
        transport_factory: Callable[[], SmtpTransport],
        settings: DispatchSettings,
        on_outcome: Callable[[Outcome], None] | None = None,
        signer: DkimSigner | None = None,
    ) -> None:
        self.store = store
        self.send_id = send_id
        self.letter = letter
        self.prepared = prepare_message(letter)  # encoded once; spliced per recipient
        # Parsed once: parseaddr per message showed up in profiles.
        self.sender_address, self.sender_domain = letter.sender_address, letter.sender_domain
        self.secret_key = secret_key
        self.base_url = base_url.rstrip("/")
        self.worker_id = worker_id
        self.transport_factory = transport_factory
        self.settings = settings
        self.on_outcome = on_outcome
        self.tally = Tally()
        self._stopping = asyncio.Event()
        self._recent: deque[bool] = deque(maxlen=settings.error_window)
        self.pause_reason: str | None = None
        self._queue: asyncio.Queue[Recipient | None] = asyncio.Queue(
            maxsize=max(settings.batch_size, settings.concurrency * 2)
        )
        self.signer = signer
        self._bucket = TokenBucket(settings.rate_per_second) if settings.rate_per_second else None
        self._hour = SlidingWindow(settings.max_per_hour) if settings.max_per_hour else None

    def stop(self) -> None:
        """Take no new message; in-flight transactions finish and are recorded."""
        self._stopping.set()

    def _note_attempt(self, outcome: Outcome) -> None:
        # listmonk's MaxSendErrors, as a rate over a window so one bad address among
        # thousands of good ones never pauses a send, and a dead relay does at once.
        self._recent.append(outcome.status != DeliveryStatus.SENT)
        window = self.settings.error_window
        if self.pause_reason is None and len(self._recent) == window and \
                sum(self._recent) >= self.settings.max_error_rate * window:
            self.pause_reason = (f"{sum(self._recent)} of the last {window} attempts failed "
                                 f"(last: {outcome.smtp_reply or outcome.status})")
            log.warning("pausing the send: %s", self.pause_reason)
            self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> Tally:
        """Run until every delivery of the send is finished here or elsewhere, or stop()."""
        async with Journal(self.store, worker_id=self.worker_id,
                           bounce_limit=self.settings.hard_bounce_limit) as journal:
            workers = [asyncio.create_task(self._worker(journal), name=f"mailer-smtp-{i}")
                       for i in range(self.settings.concurrency)]
            claimer = asyncio.create_task(self._claim_loop(), name="mailer-claim")
            tasks = [claimer, *workers]
            try:
                # Workers only end on the sentinel or by failing, so the first task to
                # finish is either the claimer (all claimed work handed out) or a broken
                # worker.
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

    async def _claim_loop(self) -> None:
        while not self.stopping:
            if (await self.store.get_send(self.send_id)).status == SendStatus.PAUSED:
                self.stop()  # another worker paused it; the author decides when to go on
                return
            limit = await self._claim_limit()
            batch = await self.store.claim_deliveries(
                self.send_id, worker_id=self.worker_id, limit=limit,
                now=utcnow(),
            ) if limit else []
            if self._hour is not None:
                batch = await self._keep_within_hour(batch)
            for recipient in batch:
                await self._queue.put(recipient)
            if batch:
                continue
            if limit and await self.store.queue_more(self.send_id):
                continue  # the next chunk of the list is queued: claim from it
            # Nothing to claim: wait for our own in-flight messages, retries coming due or
            # other workers' claims, and stop once the send has nothing open anywhere.
            await self._queue.join()
            if await self.store.open_deliveries(self.send_id) == 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.poll_seconds)

    async def _claim_limit(self) -> int:
        """How many rows the next claim may take under the rate limits (0: none yet).

        Per second, each process takes its share of the rate, re-read from the live
        workers at every claim; a claim holds at most ~2 s of that share, so a worker that
        joins or leaves is noticed within seconds. Per hour, the database holds the count
        (Store.quota_use): a full window waits, interruptibly, until its oldest message
        falls out (or a minute, to notice a send that finished elsewhere).
        """
        limit = self.settings.batch_size
        if self._bucket is not None:
            workers = await self.store.live_workers(since=utcnow() - HEARTBEAT_TIMEOUT)
            share = self.settings.rate_per_second / max(1, workers)
            self._bucket.set_rate(share)
            limit = min(limit, max(1, int(share * 2)))
        if self._hour is not None:
            now = utcnow()
            use = await self.store.quota_use(since=now - self._hour.span)
            limit = min(limit, self._hour.allowance(use.used))
            if limit == 0:
                wait = self._hour.reopens_in(use.oldest, now=now)
                wait = self.settings.poll_seconds if wait is None else min(wait + 0.01, 60.0)
                log.info("hourly quota of %d reached; waiting %.0f s", self._hour.limit, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), wait)
        return limit

    async def _keep_within_hour(self, batch: list[Recipient]) -> list[Recipient]:
        # Two workers may count the same free room and both claim it. Each counts again
        # once its claim is committed: of any two claims, the later one's count sees the
        # earlier one, so whoever went over gives back the excess before sending any.
        assert self._hour is not None
        if not batch:
            return batch
        use = await self.store.quota_use(since=utcnow() - self._hour.span)
        excess = min(len(batch), use.used - self._hour.limit)
        if excess <= 0:
            return batch
        await self.store.release_claims(self.worker_id,
                                        [r.delivery_id for r in batch[-excess:]])
        # Both may have given back: a random pause lets one of them claim first next time,
        # instead of the two colliding again and again.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(),
                                   random.uniform(0, self.settings.poll_seconds))
        return batch[:-excess]

    async def _wait_for_turn(self, journal: Journal, unwritten: list[Outcome]) -> None:
        # The per-second share. A worker about to wait writes its outcomes first: a crash
        # during the wait must not turn a delivered message into an unknown one.
        assert self._bucket is not None
        delay = self._bucket.reserve()
        if delay <= 0:
            return
        until = time.monotonic() + delay
        await journal.hand_over(unwritten)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), max(0.0, until - time.monotonic()))

    async def _worker(self, journal: Journal) -> None:
        transport = self.transport_factory()
        # Outcomes not yet in the database. They ride along with this worker's next
        # SENDING mark, so at most one message per worker that reached its body is
        # unrecorded at any time: after a crash, at most `concurrency` rows are unknown.
        unwritten: list[Outcome] = []
        try:
            while True:
                recipient = await self._queue.get()
                try:
                    if recipient is None:
                        break
                    if self._bucket is not None:  # before the transaction starts
                        await self._wait_for_turn(journal, unwritten)
                    if self.stopping:
                        continue  # stays claimed; released when this worker unregisters
                    outcome = await self._deliver(transport, recipient, journal, unwritten)
                    if outcome is not None:
                        unwritten.append(outcome)
                    if unwritten and (self._queue.empty() or self.stopping
                                      or len(unwritten) >= _MAX_UNWRITTEN):
                        # Nothing follows at once to carry these outcomes: write them now,
                        # so the claim loop's queue.join() sees the send as it really is.
                        await journal.hand_over(unwritten)
                finally:
                    self._queue.task_done()
        finally:
            await journal.hand_over(unwritten)
            await transport.aclose()

    async def _deliver(self, transport: SmtpTransport, recipient: Recipient,
                       journal: Journal, unwritten: list[Outcome]) -> Outcome | None:
        """One SMTP transaction; its outcome, or None when the row was no longer ours."""
        msg_id = message_id(self.sender_domain)
        token = tokens.unsubscribe_token(self.secret_key, recipient.subscription_id or 0)
        unsubscribe_url = f"{self.base_url}/unsubscribe/{token}"
        data = self.prepared.personalize(to_email=recipient.email, to_name=recipient.name,
                                         unsubscribe_url=unsubscribe_url, msg_id=msg_id,
                                         date=utcnow(), wire=self.signer is None)
        if self.signer is not None:  # over the plain bytes; the transport dot-stuffs
            data = self.signer.sign(data)
        error: BaseException | None = None
        reply: tuple[int, str] | None = None
        try:
            # The SENDING mark is durable before the body leaves: after a crash, a row
            # without it is sent again, a row with it is unknown (Store.release_dead_workers).
            reply = await transport.send(
                self.sender_address, recipient.email, data, wire_ready=self.signer is None,
                before_body=lambda: journal.hand_over(unwritten, recipient.delivery_id))
        except TransactionWithdrawn:
            return None  # another worker holds the row now (this one was thought dead)
        except (TemporaryFailure, PermanentFailure, DeliveryInDoubt) as exc:
            error = exc
        outcome = outcome_of(recipient, error, reply, msg_id=msg_id, settings=self.settings,
                             now=utcnow())
        self.tally.count(outcome)
        self._note_attempt(outcome)
        if outcome.status == DeliveryStatus.FAILED:
            log.warning("delivery failed", extra={"recipient_id": recipient.delivery_id,
                                                  "reply": outcome.smtp_reply})
        if self.on_outcome:
            self.on_outcome(outcome)
        return outcome
