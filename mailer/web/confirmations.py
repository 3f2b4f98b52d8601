"""The web app's outbox of confirmation emails: sent by its own tasks, after the answer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from types import TracebackType

from mailer import subscriptions
from mailer.config import Config, Newsletter
from mailer.subscriptions import ConfirmationDue, SubscriberStore

log = logging.getLogger("mailer.confirmations")

SENDERS = 4  # confirmation emails on their way at once: one slow relay blocks no others
BACKLOG = 1000  # waiting emails; past this a claim is given back (the next sign-up resends)
# How long a stop waits for the queue to empty. `mailer run` gives its web part five
# seconds in all (daemon.ABORT_WAIT_SECONDS), and the claims left over must still be
# given back before the store closes.
DRAIN_SECONDS = 3.0


@dataclass(frozen=True, slots=True, eq=False)
class _Job:
    config: Config
    store: SubscriberStore
    newsletter: Newsletter
    due: ConfirmationDue


class ConfirmationQueue:
    """Confirmation emails that sign-ups claimed, sent by a few tasks the web app owns.

    A sign-up's answer never waits for SMTP: its timing would tell a new address from a
    known one. The handler puts the email here from a BackgroundTask, which runs once the
    answer is written, so not even rendering the email goes before it; sending it from
    the BackgroundTask kept a `Connection: close` open until the relay answered.
    `async with queue:` starts the senders (the app's lifespan does); leaving it lets the
    queue empty for up to DRAIN_SECONDS, then gives back the claim of every email left
    (Store.release_confirm_email), so the next sign-up of that address sends it. One lost
    with the process (kill -9) stays marked unsent in its row and is due again soon.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(BACKLOG)
        self._senders: list[asyncio.Task[None]] = []
        self._sending: set[_Job] = set()
        self._running = False

    async def put(self, config: Config, store: SubscriberStore, newsletter: Newsletter,
                  due: ConfirmationDue) -> None:
        """Queue a claimed confirmation email and return at once.

        Without running senders (the lifespan never ran: an ASGI test client that skips
        it), the email is sent here and now instead.
        """
        job = _Job(config, store, newsletter, due)
        if not self._running:
            await subscriptions.deliver_confirmation(config, store, newsletter, due)
            return
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            log.warning("too many confirmation emails waiting: this one is given back for "
                        "its next sign-up", extra={"subscription_id": due.subscription_id})
            await self._release(job)

    async def join(self) -> None:
        """Wait until every email put here so far was sent or given back."""
        await self._queue.join()

    async def __aenter__(self) -> ConfirmationQueue:
        """Start the sending tasks."""
        self._queue = asyncio.Queue(BACKLOG)
        self._running = True
        self._senders = [asyncio.get_running_loop().create_task(
            self._send_forever(), name=f"mailer-confirmations-{n}") for n in range(SENDERS)]
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        """Stop taking emails, let the queue empty for a while, give back what is left."""
        self._running = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                await self._queue.join()
        for task in self._senders:
            task.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)
        self._senders = []
        left = list(self._sending)
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
            self._queue.task_done()
        self._sending.clear()
        if left:
            log.warning("stopping with confirmation emails unsent: given back, the next "
                        "sign-up of each address sends it", extra={"unsent": len(left)})
        await asyncio.gather(*(self._release(job) for job in left))

    async def _send_forever(self) -> None:
        while True:
            job = await self._queue.get()
            self._sending.add(job)
            try:
                await subscriptions.deliver_confirmation(job.config, job.store, job.newsletter,
                                                         job.due)
            except Exception:  # a database error, a bug: the next email must still go
                log.exception("confirmation email failed",
                              extra={"subscription_id": job.due.subscription_id})
                await self._release(job)
            # Not reached when a stop cancels the send: the job stays in _sending, and the
            # stop gives its claim back.
            self._sending.discard(job)
            self._queue.task_done()

    async def _release(self, job: _Job) -> None:
        try:
            await job.store.release_confirm_email(job.due.subscription_id,
                                                  claimed_at=job.due.claimed_at)
        except Exception:  # the row keeps confirm_unsent: due again after the lease
            log.exception("claim of a confirmation email not given back",
                          extra={"subscription_id": job.due.subscription_id})
