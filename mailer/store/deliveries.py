"""Queries about deliveries: claims, the journal around each SMTP transaction, recovery."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, and_, case, delete, func, or_, select, update
from sqlalchemy.orm import aliased

from mailer.rows import QuotaUse, Recipient, WorkerRow
from mailer.states import DeliveryStatus, SendStatus, SubscriptionStatus, utcnow
from mailer.store import db
from mailer.store._base import StoreBase
from mailer.store.journal import DeliveryLogWriter, PostgresDeliveryLog, SqliteDeliveryLog
from mailer.store.models import Delivery, Send, SenderProcess, Subscriber, Subscription
from mailer.store.torows import worker_row


class DeliveryQueries(StoreBase):
    """Deliveries and the workers that claim them: the hot path of every send."""

    # -- workers and claims --------------------------------------------------------------------

    async def register_worker(self, worker_id: str, *, host: str, pid: int) -> None:
        """Announce a sending process; its heartbeat keeps its claims its own."""
        async with self.session.begin() as s:
            now = utcnow()
            s.add(SenderProcess(id=worker_id, host=host, pid=pid, started_at=now,
                                heartbeat_at=now))

    async def heartbeat(self, worker_id: str) -> None:
        """Show that `worker_id` is alive: a worker whose beat stops is released."""
        async with self.session.begin() as s:
            await s.execute(update(SenderProcess).where(SenderProcess.id == worker_id)
                            .values(heartbeat_at=utcnow()))

    async def workers(self) -> list[WorkerRow]:
        """Every registered sending process (their heartbeats tell which are dead)."""
        async with self.session() as s:
            return [worker_row(w) for w in (await s.execute(select(SenderProcess))).scalars()]

    async def release_dead_workers(self, dead: Sequence[str]) -> int:
        """Free what dead workers held: claimed rows (PENDING: no byte of their message had
        left) go back to the queue; SENDING rows, whose message had started to leave,
        become UNKNOWN (maybe delivered: never resent blindly).

        Returns how many rows became UNKNOWN.
        """
        if not dead:
            return 0
        async with self.session.begin() as s:
            await s.execute(update(Delivery).where(
                Delivery.claimed_by.in_(dead), Delivery.status == DeliveryStatus.PENDING
            ).values(claimed_by=None))
            unknown = await s.execute(update(Delivery).where(
                Delivery.claimed_by.in_(dead), Delivery.status == DeliveryStatus.SENDING
            ).values(status=DeliveryStatus.UNKNOWN, claimed_by=None, updated_at=utcnow(),
                     smtp_reply="sender stopped while handing over the message"))
            await s.execute(delete(SenderProcess).where(SenderProcess.id.in_(dead)))
            return int(getattr(unknown, "rowcount", 0))

    async def claim_deliveries(
        self, send_id: int, *, worker_id: str, limit: int, now: datetime
    ) -> list[Recipient]:
        """Take up to `limit` due, unclaimed deliveries of a send for this worker.

        The claim only marks ownership (claimed_by); the row stays PENDING until its SMTP
        transaction is about to hand over the body (journal). So a crash of the claimer
        leaves nothing ambiguous: the whole claimed batch simply goes back to the queue.
        On PostgreSQL, FOR UPDATE SKIP LOCKED lets any number of workers claim at once
        without waiting on each other; SQLite has one writer at a time anyway. Each
        recipient carries the subscriber's attributes as they are now (personal fields).
        """
        if not db.is_sqlite(self.engine):
            return await self._claim_in_one_statement(send_id, worker_id=worker_id,
                                                      limit=limit, now=now)
        due = (
            select(Delivery.id, Subscription.status, Subscriber.attributes)
            .outerjoin(Subscription, Subscription.id == Delivery.subscription_id)
            .outerjoin(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(*_due(Delivery, send_id, now)).order_by(Delivery.id).limit(limit)
        )
        async with self.session.begin() as s:
            rows = (await s.execute(due)).all()
            # Someone who left (or bounced, or was removed) after the issue was queued
            # must not get it: their rows are closed here, at the last moment before sending.
            gone = [i for i, status, _ in rows if status != SubscriptionStatus.CONFIRMED]
            ids = [i for i, status, _ in rows if status == SubscriptionStatus.CONFIRMED]
            attributes = {i: attrs or {} for i, _, attrs in rows}
            if gone:
                await s.execute(update(Delivery).where(Delivery.id.in_(gone)).values(
                    status=DeliveryStatus.SKIPPED, updated_at=now, smtp_reply=_GONE))
            if not ids:
                return []
            claimed_rows = await s.execute(
                update(Delivery).where(Delivery.id.in_(ids))
                .values(claimed_by=worker_id)
                .returning(*_RECIPIENT)
            )
            claimed = [Recipient(*row[:5], bool(row[5]), attributes=attributes[row[0]])
                       for row in claimed_rows.all()]
        claimed.sort(key=lambda r: r.delivery_id)
        return claimed

    async def _claim_in_one_statement(self, send_id: int, *, worker_id: str, limit: int,
                                      now: datetime) -> list[Recipient]:
        # PostgreSQL: the same claim as one statement. The pick reads the deliveries
        # alone, so only `limit` rows are locked and joined; the skipped and the claimed
        # rows are written from that one pick, by data-modifying CTEs that never touch
        # the same row twice. Done in two statements, the join ran over every due row
        # before the LIMIT, and the UPDATE by a list of 200 ids was planned as a
        # sequential scan: 40 ms a claim at 20,000 rows, growing with the list.
        picked = aliased(Delivery)
        pick = (select(picked.id).where(*_due(picked, send_id, now))
                .order_by(picked.id).limit(limit).with_for_update(skip_locked=True))
        due = (select(Delivery.id, Subscription.status.label("subscription"),
                      Subscriber.attributes)
               .outerjoin(Subscription, Subscription.id == Delivery.subscription_id)
               .outerjoin(Subscriber, Subscriber.id == Subscription.subscriber_id)
               .where(Delivery.id.in_(pick.scalar_subquery())).cte("due"))
        confirmed = SubscriptionStatus.CONFIRMED
        skipped = (update(Delivery)
                   .where(Delivery.id == due.c.id, due.c.subscription.is_distinct_from(confirmed))
                   .values(status=DeliveryStatus.SKIPPED, updated_at=now, smtp_reply=_GONE)
                   .returning(Delivery.id).cte("skipped"))
        claim = (update(Delivery)
                 .where(Delivery.id == due.c.id, due.c.subscription == confirmed)
                 .values(claimed_by=worker_id)
                 .returning(*_RECIPIENT, due.c.attributes).add_cte(skipped))
        # Core, not the ORM (which would rework the UPDATEs), and in autocommit: one
        # statement is its own transaction, so BEGIN and COMMIT need no round trips.
        async with self.engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = (await conn.execute(claim)).all()
        claimed = [Recipient(id_, subscription_id, email, name, attempts, bool(duplicate),
                             attributes=attributes or {})
                   for id_, subscription_id, email, name, attempts, duplicate, attributes in rows]
        claimed.sort(key=lambda r: r.delivery_id)
        return claimed

    async def quota_use(self, *, since: datetime) -> QuotaUse:
        """Messages that count against a per-hour quota: sent since `since`, or held now.

        Counted across every send and every worker, because the provider's quota is per
        account and the database is the one thing all sending processes see: messages
        sent (or maybe sent: UNKNOWN) since `since`, plus every row a worker holds, claimed
        or mid-transaction (claimed_by set), since each of those may leave at any moment.
        The time of a SENT row is its updated_at, written in the same statement as its
        sent_at, so anything that touches the row later only makes the count safer. Only
        sends still open or finished since `since` are read: the cost follows the sends
        under way, not the history, with no index added, so the writes of every message
        pay nothing for it.
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
            return int((await s.execute(select(func.count()).select_from(SenderProcess).where(
                SenderProcess.heartbeat_at >= since))).scalar_one())

    @contextlib.asynccontextmanager
    async def journal_writer(self, *, worker_id: str,
                             bounce_limit: int) -> AsyncIterator[DeliveryLogWriter]:
        """The writer of `worker_id`'s journal (see mailer.store.journal), open while used."""
        if db.is_sqlite(self.engine):
            assert self.engine.url.database is not None
            writer = SqliteDeliveryLog(self.engine.url.database, worker_id=worker_id,
                                   bounce_limit=bounce_limit)
            try:
                yield writer
            finally:
                await writer.aclose()
            return
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            yield PostgresDeliveryLog(raw.driver_connection, worker_id=worker_id,
                                  bounce_limit=bounce_limit)

    async def requeue_unknown(self, send_id: int) -> int:
        """Put a send's UNKNOWN deliveries back in the queue (the author chose to risk a
        duplicate)."""
        async with self.session.begin() as s:
            result = await s.execute(update(Delivery).where(
                Delivery.send_id == send_id, Delivery.status == DeliveryStatus.UNKNOWN
            ).values(status=DeliveryStatus.PENDING, claimed_by=None, next_attempt_at=None))
            return int(getattr(result, "rowcount", 0))


# What a claim hands the connections about each row.
_RECIPIENT = (Delivery.id, Delivery.subscription_id, Delivery.email, Delivery.name,
              Delivery.attempts, Delivery.possible_duplicate)
# What a row closed at the claim says (see claim_deliveries).
_GONE = "not sent: no longer subscribed"


def _due(table: type[Delivery], send_id: int, now: datetime) -> tuple[ColumnElement[bool], ...]:
    """A send's deliveries that are due and free to claim (`table`: Delivery or an alias)."""
    return (table.send_id == send_id, table.status == DeliveryStatus.PENDING,
            table.claimed_by.is_(None),
            or_(table.next_attempt_at.is_(None), table.next_attempt_at <= now))
