"""The claim loop: takes a send's due deliveries from the database into the connections' queue.

It claims as much as the rate limits allow, queues the next chunk of the subscriber list
when the claimed part runs dry, gives back what went over the hour's quota, and ends when
the send has nothing open anywhere (or stop(), or someone paused the send).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from mailer.delivery.delivery_store import DeliveryStore
from mailer.delivery.outcomes import DispatchSettings
from mailer.delivery.throttle import (
    HEARTBEAT_TIMEOUT,
    SlidingWindow,
    TokenBucket,
    claim_limit_for_share,
    give_back_pause,
    share_of_rate,
)
from mailer.rows import Recipient
from mailer.states import SendStatus, utcnow

log = logging.getLogger("mailer.dispatch")


class ClaimLoop:
    """Feeds `queue` with claimed recipients of one send; None is put by whoever ends it."""

    def __init__(self, store: DeliveryStore, *, send_id: int, worker_id: str,
                 settings: DispatchSettings, queue: asyncio.Queue[Recipient | None],
                 stopping: asyncio.Event, stop: Callable[[], None],
                 bucket: TokenBucket | None, hour: SlidingWindow | None) -> None:
        self._store = store
        self._send_id = send_id
        self._worker_id = worker_id
        self._settings = settings
        self._queue = queue
        self._stopping = stopping
        self._stop = stop
        self._bucket = bucket
        self._hour = hour

    async def run(self) -> None:
        """Claim and queue until the send has nothing open anywhere, or stop()."""
        while not self._stopping.is_set():
            send = await self._store.get_send(self._send_id)
            if send.status == SendStatus.PAUSED:
                self._stop()  # another worker paused it; the author decides when to go on
                return
            limit = await self._claim_limit()
            batch = await self._store.claim_deliveries(
                self._send_id, worker_id=self._worker_id, limit=limit, now=utcnow(),
            ) if limit else []
            short = len(batch) < limit
            if self._hour is not None:
                batch = await self._keep_within_hour(batch)
            for recipient in batch:
                await self._queue.put(recipient)
            # A short claim: the queued part of the list is running out. The next chunk is
            # queued now, while the connections still have this batch to send, rather than
            # once they have nothing left (a chunk takes a tenth of a second to insert).
            # A send whose list is all queued (queued_at) has nothing more to take.
            if short and send.queued_at is None and await self._store.queue_more(self._send_id):
                continue  # claim from it
            if batch:
                continue
            # Nothing to claim: wait for our own in-flight messages, retries coming due or
            # other workers' claims, and stop once the send has nothing open anywhere.
            await self._queue.join()
            if await self._store.open_deliveries(self._send_id) == 0:
                return
            await self._pause(self._settings.poll_seconds)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _claim_limit(self) -> int:
        """How many rows the next claim may take under the rate limits (0: none yet).

        Per second, this process takes its share of the rate, re-read from the live
        workers at every claim. Per hour, the database holds the count (quota_use): a full
        window waits, interruptibly, until its oldest message falls out.
        """
        limit = self._settings.batch_size
        if self._bucket is not None:
            workers = await self._store.live_workers(since=utcnow() - HEARTBEAT_TIMEOUT)
            share = share_of_rate(self._settings.rate_per_second, live_workers=workers)
            self._bucket.set_rate(share)
            limit = min(limit, claim_limit_for_share(share))
        if self._hour is not None:
            now = utcnow()
            use = await self._store.quota_use(since=now - self._hour.span)
            limit = min(limit, self._hour.allowance(use.used))
            if limit == 0:
                wait = self._hour.wait_when_full(use.oldest, now=now,
                                                 poll_seconds=self._settings.poll_seconds)
                log.info("hourly quota reached; waiting",
                         extra={"quota": self._hour.limit, "wait_seconds": round(wait)})
                await self._pause(wait)
        return limit

    async def _keep_within_hour(self, batch: list[Recipient]) -> list[Recipient]:
        # Two workers may count the same free room and both claim it. Each counts again
        # once its claim is committed: of any two claims, the later one's count sees the
        # earlier one, so whoever went over gives back the excess before sending any.
        assert self._hour is not None
        if not batch:
            return batch
        use = await self._store.quota_use(since=utcnow() - self._hour.span)
        excess = self._hour.excess(use.used, claimed=len(batch))
        if excess == 0:
            return batch
        await self._store.release_claims(self._worker_id,
                                         [r.delivery_id for r in batch[-excess:]])
        await self._pause(give_back_pause(self._settings.poll_seconds))
        return batch[:-excess]
