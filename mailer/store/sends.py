"""Queries about sends: queueing an issue, its progress and state, the schedule's slots."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.rows import SendRow
from mailer.states import DeliveryStatus, SendKind, SendStatus, SubscriptionStatus, utcnow
from mailer.store import db
from mailer.store._base import StoreBase
from mailer.store.models import Delivery, Send, Subscriber, Subscription
from mailer.store.torows import send_row

# Recipients queued per transaction: a few milliseconds of the database's write lock, so
# the journal's commits never wait long, and a fraction of a second of sending.
QUEUE_CHUNK = 2000


def _confirmed_after(newsletter: str, after: int) -> tuple[ColumnElement[bool], ...]:
    """Who a send of `newsletter` queues after subscription id `after`."""
    return (Subscription.newsletter == newsletter,
            Subscription.status == SubscriptionStatus.CONFIRMED, Subscription.id > after)


class SendQueries(StoreBase):
    """Sends: one per issue and newsletter, queued chunk by chunk, and their progress."""

    # -- sends -------------------------------------------------------------------------------

    async def sent_slugs(self, newsletter: str) -> set[str]:
        """Slugs of every issue ever started for `newsletter`: those are never due again."""
        async with self.session() as s:
            rows = await s.execute(select(Send.slug).where(
                Send.newsletter == newsletter, Send.kind == SendKind.ISSUE))
            return set(rows.scalars())

    async def unfinished_send(self, newsletter: str) -> SendRow | None:
        """The oldest send of `newsletter` that was interrupted or paused: it goes first."""
        async with self.session() as s:
            send = (await s.execute(
                select(Send)
                .where(Send.newsletter == newsletter, Send.status != SendStatus.FINISHED,
                       Send.kind == SendKind.ISSUE)
                .order_by(Send.id).limit(1)
            )).scalar_one_or_none()
            return None if send is None else send_row(send)

    async def get_send(self, send_id: int) -> SendRow:
        """The send `send_id` as it is now (its status tells a worker to pause)."""
        async with self.session() as s:
            return send_row((await s.execute(select(Send).where(Send.id == send_id))).scalar_one())

    async def open_send(
        self, *, newsletter: str, slug: str, subject: str, preheader: str, html: str, text: str,
        web_url: str,
    ) -> tuple[SendRow, bool]:
        """Create the send of an issue and queue its first chunk of recipients.

        Returns the send and whether this call created it. The rest of the list is queued
        chunk by chunk as the sending reaches it (queue_more), so the first message leaves
        at once whatever the size of the list, and memory never grows with it: recipients
        are copied by INSERT … SELECT inside the database. The unique key on
        (newsletter, slug) makes a second call a no-op that returns the existing send.
        """
        async with self.session.begin() as s:
            send, created = await self._insert_and_queue(
                s, newsletter=newsletter, slug=slug, subject=subject, preheader=preheader,
                html=html, text=text, web_url=web_url)
            return send_row(send), created

    async def _insert_and_queue(self, s: AsyncSession, *, newsletter: str, slug: str,
                                **content: str) -> tuple[Send, bool]:
        # ON CONFLICT: whoever inserted the issue first owns it; the others share that send.
        new_id = (await s.execute(
            self._insert(Send).values(newsletter=newsletter, slug=slug,
                                      status=SendStatus.SENDING, created_at=utcnow(), **content)
            .on_conflict_do_nothing(index_elements=["newsletter", "slug"])
            .returning(Send.id)
        )).scalar_one_or_none()
        send = (await s.execute(select(Send).where(
            Send.newsletter == newsletter, Send.slug == slug))).scalar_one()
        if new_id is None:
            return send, False
        await self._queue_chunk(s, send)
        return send, True

    async def queue_more(self, send_id: int) -> int:
        """Queue the send's next chunk of recipients; how many (0: everyone is queued).

        Any sending process may call it when its claims run short: the send row is locked
        while a chunk is queued (FOR UPDATE on PostgreSQL; SQLite has one writer anyway),
        so two never queue the same chunk, and a process that dies in between leaves the
        position where the last committed chunk put it.
        """
        async with self.session.begin() as s:
            send = (await s.execute(
                select(Send).where(Send.id == send_id).with_for_update())).scalar_one()
            if send.queued_at is not None:
                return 0
            return await self._queue_chunk(s, send)

    async def _queue_chunk(self, s: AsyncSession, send: Send) -> int:
        # In subscription id order: whoever confirms during the send is queued if the
        # sending has not passed their id yet (listmonk streams its lists the same way).
        after = send.queued_through
        chunk = (select(Subscription.id).where(*_confirmed_after(send.newsletter, after))
                 .order_by(Subscription.id).limit(QUEUE_CHUNK).subquery())
        through, count = (await s.execute(
            select(func.max(chunk.c.id), func.count()).select_from(chunk))).one()
        now = utcnow()
        if not count:
            await s.execute(update(Send).where(Send.id == send.id).values(queued_at=now))
            return 0
        recipients = (
            select(literal(send.id), Subscription.id, Subscriber.email, Subscriber.name,
                   literal(DeliveryStatus.PENDING.value), literal(0), literal(now))
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(*_confirmed_after(send.newsletter, after), Subscription.id <= through)
        )
        await s.execute(insert(Delivery).from_select(
            ["send_id", "subscription_id", "email", "name", "status", "attempts", "created_at"],
            recipients,
        ))
        await s.execute(update(Send).where(Send.id == send.id).values(queued_through=through))
        return int(count)

    async def _not_yet_queued(self, s: AsyncSession, send_id: int) -> int:
        """Confirmed subscribers the send will still queue (counted as pending)."""
        send = (await s.execute(select(Send.newsletter, Send.queued_through, Send.queued_at)
                                .where(Send.id == send_id))).one()
        if send.queued_at is not None:
            return 0
        return int((await s.execute(select(func.count()).select_from(Subscription).where(
            *_confirmed_after(send.newsletter, send.queued_through)))).scalar_one())

    async def release_send_claims(self, send_id: int, worker_id: str) -> None:
        """Give back the rows of a send this worker claimed and did not start (its delivery
        stopped for another send): whoever delivers the send next takes them. Rows being
        sent are not touched."""
        async with self.session.begin() as s:
            await s.execute(update(Delivery).where(
                Delivery.send_id == send_id, Delivery.claimed_by == worker_id,
                Delivery.status == DeliveryStatus.PENDING).values(claimed_by=None))

    async def set_send_status(self, send_id: int, status: SendStatus, reason: str | None = None
                              ) -> None:
        """Move a send to `status` (with why, for a pause); FINISHED also stamps the time."""
        async with self.session.begin() as s:
            values: dict[str, Any] = {"status": status, "pause_reason": reason}
            if status == SendStatus.FINISHED:
                values["finished_at"] = utcnow()
            await s.execute(update(Send).where(Send.id == send_id).values(**values))

    async def delivery_counts(self, send_id: int) -> dict[DeliveryStatus, int]:
        """Deliveries of a send by state (the numbers `status` and progress bars show);
        recipients not yet queued count as pending."""
        async with self.session() as s:
            rows = await s.execute(
                select(Delivery.status, func.count()).where(Delivery.send_id == send_id)
                .group_by(Delivery.status)
            )
            counts = {state: 0 for state in DeliveryStatus}
            counts.update({DeliveryStatus(state): n for state, n in rows.all()})
            counts[DeliveryStatus.PENDING] += await self._not_yet_queued(s, send_id)
            return counts

    async def open_deliveries(self, send_id: int) -> int:
        """Deliveries of a send not yet finished one way or the other (pending or sending),
        with the recipients it has still to queue."""
        async with self.session() as s:
            return int((await s.execute(select(func.count()).select_from(Delivery).where(
                Delivery.send_id == send_id,
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]),
            ))).scalar_one()) + await self._not_yet_queued(s, send_id)

    # -- the daemon's schedule ---------------------------------------------------------------

    async def latest_send(self, newsletter: str) -> SendRow | None:
        """The newest send of `newsletter`: `status` shows it as the last send, and when it
        was created tells the scheduler whether the latest slot already had its issue."""
        async with self.session() as s:
            send = (await s.execute(
                select(Send).where(Send.newsletter == newsletter, Send.kind == SendKind.ISSUE)
                .order_by(Send.created_at.desc(), Send.id.desc()).limit(1)
            )).scalar_one_or_none()
            return None if send is None else send_row(send)

    async def open_send_for_slot(
        self, *, slot_start: datetime, newsletter: str, slug: str, subject: str,
        preheader: str, html: str, text: str, web_url: str,
    ) -> tuple[SendRow | None, bool]:
        """open_send for a scheduled slot: at most one new issue per newsletter per slot.

        Two daemons firing the same slot share one send (the unique key does that), but
        without this check a daemon that is a moment late would find the first issue
        already sent and start the next one in the same slot. So "was any send of this
        newsletter created since the slot began?" and the insert happen in one
        transaction under a lock: SQLite's BEGIN IMMEDIATE write lock, or on PostgreSQL a
        transaction-scoped advisory lock per newsletter (there is no row to lock before
        the send exists). Returns (the send of `slug`, whether this call created it), or
        (None, False) when the slot already had another issue.
        """
        async with self.session.begin() as s:
            if not db.is_sqlite(self.engine):
                key = int.from_bytes(hashlib.blake2b(f"mailer-slot:{newsletter}".encode(),
                                                     digest_size=8).digest(), "big", signed=True)
                await s.execute(select(func.pg_advisory_xact_lock(key)))
            same = (await s.execute(select(Send).where(
                Send.newsletter == newsletter, Send.slug == slug))).scalar_one_or_none()
            if same is not None:
                return send_row(same), False
            other = (await s.execute(select(Send.id).where(
                Send.newsletter == newsletter, Send.kind == SendKind.ISSUE,
                Send.created_at >= slot_start).limit(1)
            )).scalar_one_or_none()
            if other is not None:
                return None, False
            # A `send-now` of the same issue (which takes no slot lock) may have inserted it
            # a moment ago; then that send is the one to share.
            send, created = await self._insert_and_queue(
                s, newsletter=newsletter, slug=slug, subject=subject, preheader=preheader,
                html=html, text=text, web_url=web_url)
            return send_row(send), created
