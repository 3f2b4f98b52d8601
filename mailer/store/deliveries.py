"""Queries about deliveries: claims, the journal around each SMTP transaction, recovery."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import (
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from mailer import db
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Send,
    SendStatus,
    Subscription,
    SubscriptionStatus,
    UTCDateTime,
    Worker,
    utcnow,
)
from mailer.store._base import StoreBase
from mailer.store.rows import Outcome, QuotaUse, Recipient

_deliveries = cast(Table, Delivery.__table__)
# coalesce: a NULL parameter keeps what the row has (a retry keeps no Message-ID, a
# success keeps its last retry time).
_RECORD_OUTCOME = update(_deliveries).where(_deliveries.c.id == bindparam("o_id")).values(
    status=bindparam("o_status", type_=_deliveries.c.status.type),
    smtp_code=bindparam("o_code"),
    smtp_reply=bindparam("o_reply"),
    message_id=func.coalesce(bindparam("o_mid", type_=String()), _deliveries.c.message_id),
    sent_at=func.coalesce(bindparam("o_sent", type_=UTCDateTime()), _deliveries.c.sent_at),
    next_attempt_at=func.coalesce(bindparam("o_retry", type_=UTCDateTime()),
                                  _deliveries.c.next_attempt_at),
    attempts=_deliveries.c.attempts + 1,
    claimed_by=None,
    data_started_at=None,  # the transaction is over; a retry starts a new one
    updated_at=bindparam("o_now", type_=UTCDateTime()),
)


_MARK_SENDING = (
    update(_deliveries)
    .where(_deliveries.c.id.in_(bindparam("ids", expanding=True)),
           _deliveries.c.claimed_by == bindparam("worker"),
           _deliveries.c.status == DeliveryStatus.PENDING)
    .values(status=DeliveryStatus.SENDING, updated_at=bindparam("now", type_=UTCDateTime()))
    .returning(_deliveries.c.id)
)

_MARK_DATA = (
    update(_deliveries)
    .where(_deliveries.c.id.in_(bindparam("ids", expanding=True)),
           _deliveries.c.claimed_by == bindparam("worker"),
           _deliveries.c.status == DeliveryStatus.SENDING)
    .values(data_started_at=bindparam("now", type_=UTCDateTime()))
)


class DeliveryQueries(StoreBase):
    """Deliveries and the workers that claim them: the hot path of every send."""

    # -- workers and claims --------------------------------------------------------------------

    async def register_worker(self, worker_id: str, *, host: str, pid: int) -> None:
        async with self.session.begin() as s:
            now = utcnow()
            s.add(Worker(id=worker_id, host=host, pid=pid, started_at=now, heartbeat_at=now))

    async def heartbeat(self, worker_id: str) -> None:
        async with self.session.begin() as s:
            await s.execute(update(Worker).where(Worker.id == worker_id)
                            .values(heartbeat_at=utcnow()))

    async def workers(self) -> Sequence[Worker]:
        async with self.session() as s:
            return (await s.execute(select(Worker))).scalars().all()

    async def release_dead_workers(self, dead: Sequence[str]) -> int:
        """Free what dead workers held: claimed rows, and rows whose SMTP transaction had not
        yet handed over any of the message, go back to the queue; rows whose message had
        started to leave become UNKNOWN (maybe delivered: never resent blindly).

        Returns how many rows became UNKNOWN.
        """
        if not dead:
            return 0
        async with self.session.begin() as s:
            await s.execute(update(Delivery).where(
                Delivery.claimed_by.in_(dead), Delivery.status == DeliveryStatus.PENDING
            ).values(claimed_by=None))
            # Before the body nothing can have been delivered: safe to send again.
            await s.execute(update(Delivery).where(
                Delivery.claimed_by.in_(dead), Delivery.status == DeliveryStatus.SENDING,
                Delivery.data_started_at.is_(None),
            ).values(status=DeliveryStatus.PENDING, claimed_by=None, updated_at=utcnow()))
            unknown = await s.execute(update(Delivery).where(
                Delivery.claimed_by.in_(dead), Delivery.status == DeliveryStatus.SENDING
            ).values(status=DeliveryStatus.UNKNOWN, claimed_by=None, updated_at=utcnow(),
                     smtp_reply="sender stopped while handing over the message"))
            await s.execute(delete(Worker).where(Worker.id.in_(dead)))
            return int(getattr(unknown, "rowcount", 0))

    async def claim_deliveries(
        self, send_id: int, *, worker_id: str, limit: int, now: datetime
    ) -> list[Recipient]:
        """Take up to `limit` due, unclaimed deliveries of a send for this worker.

        The claim only marks ownership (claimed_by); the row stays PENDING until its SMTP
        transaction starts (mark_sending). So a crash of the claimer leaves nothing
        ambiguous: the whole claimed batch simply goes back to the queue. On PostgreSQL,
        FOR UPDATE SKIP LOCKED lets any number of workers claim at once without waiting on
        each other; SQLite has one writer at a time anyway.
        """
        due = (
            select(Delivery.id, Subscription.status)
            .outerjoin(Subscription, Subscription.id == Delivery.subscription_id)
            .where(Delivery.send_id == send_id, Delivery.status == DeliveryStatus.PENDING,
                   Delivery.claimed_by.is_(None),
                   or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now))
            .order_by(Delivery.id).limit(limit)
        )
        if not db.is_sqlite(self.engine):
            due = due.with_for_update(of=Delivery, skip_locked=True)
        async with self.session.begin() as s:
            rows = (await s.execute(due)).all()
            # Someone who left (or bounced, or was removed) after the issue was queued
            # must not get it: their rows are closed here, at the last moment before sending.
            gone = [i for i, status in rows if status != SubscriptionStatus.CONFIRMED]
            ids = [i for i, status in rows if status == SubscriptionStatus.CONFIRMED]
            if gone:
                await s.execute(update(Delivery).where(Delivery.id.in_(gone)).values(
                    status=DeliveryStatus.SKIPPED, updated_at=now,
                    smtp_reply="not sent: no longer subscribed"))
            if not ids:
                return []
            claimed_rows = await s.execute(
                update(Delivery).where(Delivery.id.in_(ids))
                .values(claimed_by=worker_id)
                .returning(Delivery.id, Delivery.subscription_id, Delivery.email, Delivery.name,
                           Delivery.attempts)
            )
            claimed = [Recipient(*row) for row in claimed_rows.all()]
        claimed.sort(key=lambda r: r.delivery_id)
        return claimed

    async def open_deliveries(self, send_id: int) -> int:
        """Deliveries of a send not yet finished one way or the other (pending or sending)."""
        async with self.session() as s:
            return int((await s.execute(select(func.count()).select_from(Delivery).where(
                Delivery.send_id == send_id,
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]),
            ))).scalar_one())

    async def quota_use(self, *, since: datetime) -> QuotaUse:
        """Messages that count against a per-hour quota: sent since `since`, or held now.

        Counted across every send and every worker, because the provider's quota is per
        account and the database is the one thing all sending processes see: messages
        sent (or maybe sent: UNKNOWN) since `since`, plus every row a worker holds, claimed
        or mid-transaction (claimed_by set), since each of those may leave at any moment.
        The time of a SENT row is its updated_at, written in the same statement as its
        sent_at, so anything that touches the row later only makes the count safer. Only
        sends still open or finished since `since` are read: the cost follows the sends
        under way, not the history (measured with 1,000,000 past deliveries and a send of
        100,000 under way: 25 ms on SQLite, 50 ms on PostgreSQL, with no index added, so
        the writes of every message pay nothing for it).
        """
        done = [DeliveryStatus.SENT, DeliveryStatus.UNKNOWN]
        recent = select(Send.id).where(or_(Send.status != SendStatus.FINISHED,
                                           Send.finished_at >= since))
        async with self.session() as s:
            used, oldest = (await s.execute(
                select(func.count(),
                       func.min(case((Delivery.status.in_(done), Delivery.updated_at))))
                .where(Delivery.send_id.in_(recent),
                       or_(and_(Delivery.status.in_(done), Delivery.updated_at >= since),
                           Delivery.claimed_by.is_not(None)))
            )).one()
            return QuotaUse(int(used), oldest)

    async def release_claims(self, worker_id: str, delivery_ids: Sequence[int]) -> None:
        """Give back claimed rows this worker will not send (the hour's quota ran out).

        Only rows still PENDING and still ours: a row that became SENDING is being sent.
        """
        if not delivery_ids:
            return
        async with self.session.begin() as s:
            await s.execute(update(Delivery).where(
                Delivery.id.in_(list(delivery_ids)), Delivery.claimed_by == worker_id,
                Delivery.status == DeliveryStatus.PENDING,
            ).values(claimed_by=None))

    async def live_workers(self, *, since: datetime) -> int:
        """How many sending processes beat since `since`: each takes that share of the
        per-second rate (a registered but idle one too, which errs on the safe side)."""
        async with self.session() as s:
            return int((await s.execute(select(func.count()).select_from(Worker).where(
                Worker.heartbeat_at >= since))).scalar_one())

    async def journal(
        self, *, worker_id: str, started: Sequence[int], outcomes: Sequence[Outcome],
        bounce_limit: int, data: Sequence[int] = (),
    ) -> set[int]:
        """Write a group of outcomes and mark a group of deliveries SENDING, in one commit.

        This is the durable step around every SMTP transaction: a delivery is SENDING in
        the database before its first SMTP command, its `data` mark is stored before the
        first byte of the message leaves, and its outcome is stored before the same worker
        starts another one. Returns the ids this worker may now send (a row whose claim
        was lost to another worker is left out).
        """
        now = utcnow()
        allowed: set[int] = set()
        # A Core connection, not an ORM session: this runs once per round of messages and
        # the session's bookkeeping cost more than the statements.
        async with self.engine.begin() as conn:
            if outcomes:
                # One prepared statement, executed for many rows: building an UPDATE per
                # message cost more CPU than the SMTP transaction itself.
                await conn.execute(_RECORD_OUTCOME, [{
                    "o_id": o.delivery_id, "o_status": o.status, "o_code": o.smtp_code,
                    "o_reply": o.smtp_reply, "o_now": now,
                    "o_mid": o.message_id if o.status == DeliveryStatus.SENT else None,
                    "o_sent": now if o.status == DeliveryStatus.SENT else None,
                    "o_retry": o.retry_at,
                } for o in outcomes])
            bounced = [o.delivery_id for o in outcomes if o.bounce]
            if bounced:
                await self._count_bounces(conn, bounced, bounce_limit, now)
            if data:
                await conn.execute(_MARK_DATA, {"ids": list(data), "worker": worker_id,
                                                "now": now})
            if started:
                rows = await conn.execute(_MARK_SENDING, {
                    "ids": list(started), "worker": worker_id, "now": now})
                allowed = set(rows.scalars())
        return allowed

    async def _count_bounces(self, conn: AsyncConnection, delivery_ids: list[int], limit: int,
                             now: datetime) -> None:
        subs = cast(Table, Subscription.__table__)
        sub_ids = select(_deliveries.c.subscription_id).where(_deliveries.c.id.in_(delivery_ids))
        await conn.execute(update(subs).where(subs.c.id.in_(sub_ids))
                           .values(hard_bounces=subs.c.hard_bounces + 1))
        await conn.execute(update(subs).where(
            subs.c.id.in_(sub_ids), subs.c.hard_bounces >= limit,
            subs.c.status == SubscriptionStatus.CONFIRMED,
        ).values(status=SubscriptionStatus.BOUNCED, bounced_at=now))

    async def requeue_unknown(self, send_id: int) -> int:
        """Put a send's UNKNOWN deliveries back in the queue (the author chose to risk a
        duplicate)."""
        async with self.session.begin() as s:
            result = await s.execute(update(Delivery).where(
                Delivery.send_id == send_id, Delivery.status == DeliveryStatus.UNKNOWN
            ).values(status=DeliveryStatus.PENDING, claimed_by=None, next_attempt_at=None))
            return int(getattr(result, "rowcount", 0))
