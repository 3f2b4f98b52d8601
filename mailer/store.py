"""All SQL of mailer: one named async method per statement, each saying why it is shaped so."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, insert, literal, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from mailer import db
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Send,
    SendStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    Worker,
    utcnow,
)


@dataclass(frozen=True, slots=True)
class Recipient:
    """A claimed delivery: what a worker needs to build and send one message."""

    delivery_id: int
    subscription_id: int | None
    email: str
    name: str
    attempts: int


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one delivery, written after its SMTP transaction."""

    delivery_id: int
    status: DeliveryStatus
    smtp_code: int | None = None
    smtp_reply: str | None = None
    message_id: str | None = None
    retry_at: datetime | None = None  # set with status PENDING: a temporary failure
    bounce: bool = False  # a permanent failure that counts towards the subscriber's bounces


@dataclass(frozen=True, slots=True)
class SubscriberRow:
    email: str
    name: str
    status: SubscriptionStatus
    created_at: datetime
    confirmed_at: datetime | None


class Store:
    """The database of one mailer installation; every query lives here."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.session = db.sessionmaker(engine)
        self._insert = sqlite_insert if db.is_sqlite(engine) else pg_insert

    @classmethod
    async def open(cls, database_url: str) -> Store:
        """Connect and migrate the schema to the newest version."""
        engine = db.create_engine(database_url)
        await db.migrate(engine)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- subscribers -------------------------------------------------------------------------

    async def _upsert_subscription(
        self, s: AsyncSession, email: str, name: str, newsletter: str, *, confirmed: bool
    ) -> Subscription:
        # Insert-or-ignore on the unique keys rather than select-then-insert, so two
        # requests for the same address at once cannot create two rows.
        await s.execute(
            self._insert(Subscriber).values(email=email, name=name, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=["email"])
        )
        subscriber = (await s.execute(
            select(Subscriber).where(Subscriber.email == email))).scalar_one()
        if name and not subscriber.name:
            subscriber.name = name
        await s.execute(
            self._insert(Subscription).values(
                subscriber_id=subscriber.id, newsletter=newsletter,
                status=SubscriptionStatus.PENDING, created_at=utcnow(), hard_bounces=0,
            ).on_conflict_do_nothing(index_elements=["subscriber_id", "newsletter"])
        )
        sub = (await s.execute(select(Subscription).where(
            Subscription.subscriber_id == subscriber.id, Subscription.newsletter == newsletter
        ))).scalar_one()
        if confirmed and sub.status != SubscriptionStatus.CONFIRMED:
            sub.status = SubscriptionStatus.CONFIRMED
            sub.confirmed_at = utcnow()
            sub.unsubscribed_at = None
        return sub

    async def add_subscriber(
        self, email: str, *, newsletter: str, name: str = "", confirmed: bool = False
    ) -> Subscription:
        """Create (or find) the subscription of `email` to `newsletter`; confirm it if asked."""
        async with self.session.begin() as s:
            return await self._upsert_subscription(s, email, name, newsletter, confirmed=confirmed)

    async def import_subscribers(
        self, rows: Iterable[tuple[str, str]], *, newsletter: str, confirmed: bool
    ) -> int:
        """Add every (email, name) row in one transaction: all of them or, on error, none."""
        count = 0
        async with self.session.begin() as s:
            for email, name in rows:
                await self._upsert_subscription(s, email, name, newsletter, confirmed=confirmed)
                count += 1
        return count

    async def remove_subscriber(self, email: str, *, newsletter: str) -> bool:
        """Delete the subscription (the send history keeps its email snapshot); False if none."""
        async with self.session.begin() as s:
            subscriber_id = select(Subscriber.id).where(Subscriber.email == email).scalar_subquery()
            result = await s.execute(delete(Subscription).where(
                Subscription.subscriber_id == subscriber_id, Subscription.newsletter == newsletter
            ))
            # An address with no subscription left is personal data we no longer need.
            await s.execute(delete(Subscriber).where(
                Subscriber.email == email,
                ~select(Subscription.id)
                .where(Subscription.subscriber_id == Subscriber.id).exists(),
            ))
            return bool(getattr(result, "rowcount", 0))

    async def subscribers(
        self, *, newsletter: str, status: SubscriptionStatus | None = None
    ) -> AsyncIterator[SubscriberRow]:
        """Stream the subscribers of a newsletter (for export/list), oldest first."""
        query = (
            select(Subscriber.email, Subscriber.name, Subscription.status,
                   Subscription.created_at, Subscription.confirmed_at)
            .join(Subscription, Subscription.subscriber_id == Subscriber.id)
            .where(Subscription.newsletter == newsletter)
            .order_by(Subscription.id)
        )
        if status is not None:
            query = query.where(Subscription.status == status)
        async with self.session() as s:
            result = await s.stream(query.execution_options(yield_per=1000))
            async for row in result:
                yield SubscriberRow(*row)

    async def count_recipients(self, newsletter: str) -> int:
        """How many confirmed subscribers an issue of `newsletter` would go to now."""
        async with self.session() as s:
            return int((await s.execute(select(func.count()).select_from(Subscription).where(
                Subscription.newsletter == newsletter,
                Subscription.status == SubscriptionStatus.CONFIRMED,
            ))).scalar_one())

    # -- sends -------------------------------------------------------------------------------

    async def sent_slugs(self, newsletter: str) -> set[str]:
        """Slugs of every issue ever started for `newsletter`: those are never due again."""
        async with self.session() as s:
            rows = await s.execute(select(Send.slug).where(Send.newsletter == newsletter))
            return set(rows.scalars())

    async def unfinished_send(self, newsletter: str) -> Send | None:
        """The oldest send of `newsletter` that was interrupted or paused: it goes first."""
        async with self.session() as s:
            return (await s.execute(
                select(Send)
                .where(Send.newsletter == newsletter, Send.status != SendStatus.FINISHED)
                .order_by(Send.id).limit(1)
            )).scalar_one_or_none()

    async def get_send(self, send_id: int) -> Send:
        async with self.session() as s:
            return (await s.execute(select(Send).where(Send.id == send_id))).scalar_one()

    async def open_send(
        self, *, newsletter: str, slug: str, subject: str, preheader: str, html: str, text: str,
        web_url: str,
    ) -> tuple[Send, bool]:
        """Create the send of an issue and queue one delivery per confirmed subscriber.

        Returns the send and whether this call created it. The send row and all its
        deliveries are written in one transaction, and the recipients are copied by one
        INSERT … SELECT inside the database, so memory does not grow with the list and a
        crash leaves either no send or a complete queue. The unique key on
        (newsletter, slug) makes a second call a no-op that returns the existing send.
        """
        async with self.session.begin() as s:
            created = await s.execute(
                self._insert(Send).values(
                    newsletter=newsletter, slug=slug, subject=subject, preheader=preheader,
                    html=html, text=text, web_url=web_url, status=SendStatus.SENDING,
                    created_at=utcnow(),
                ).on_conflict_do_nothing(index_elements=["newsletter", "slug"])
                .returning(Send.id)
            )
            new_id = created.scalar_one_or_none()
            send = (await s.execute(
                select(Send).where(Send.newsletter == newsletter, Send.slug == slug)
            )).scalar_one()
            if new_id is not None:
                now = utcnow()
                recipients = (
                    select(literal(send.id), Subscription.id, Subscriber.email, Subscriber.name,
                           literal(DeliveryStatus.PENDING.value), literal(0), literal(now))
                    .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
                    .where(Subscription.newsletter == newsletter,
                           Subscription.status == SubscriptionStatus.CONFIRMED)
                    .order_by(Subscription.id)
                )
                await s.execute(insert(Delivery).from_select(
                    ["send_id", "subscription_id", "email", "name", "status", "attempts",
                     "created_at"], recipients,
                ))
            return send, new_id is not None

    async def set_send_status(self, send_id: int, status: SendStatus, reason: str | None = None
                              ) -> None:
        async with self.session.begin() as s:
            values: dict[str, Any] = {"status": status, "pause_reason": reason}
            if status == SendStatus.FINISHED:
                values["finished_at"] = utcnow()
            await s.execute(update(Send).where(Send.id == send_id).values(**values))

    async def delivery_counts(self, send_id: int) -> dict[DeliveryStatus, int]:
        """Deliveries of a send by state (the numbers `status` and progress bars show)."""
        async with self.session() as s:
            rows = await s.execute(
                select(Delivery.status, func.count()).where(Delivery.send_id == send_id)
                .group_by(Delivery.status)
            )
            counts = {state: 0 for state in DeliveryStatus}
            counts.update({DeliveryStatus(state): n for state, n in rows.all()})
            return counts

    async def sends(self, newsletter: str | None = None) -> Sequence[Send]:
        async with self.session() as s:
            query = select(Send).order_by(Send.id)
            if newsletter:
                query = query.where(Send.newsletter == newsletter)
            return (await s.execute(query)).scalars().all()

    async def failures(self, send_id: int, limit: int = 20
                       ) -> Sequence[tuple[str, int | None, str]]:
        """The failed deliveries of a send with the server's reply, newest first."""
        async with self.session() as s:
            rows = await s.execute(
                select(Delivery.email, Delivery.smtp_code, Delivery.smtp_reply)
                .where(Delivery.send_id == send_id, Delivery.status == DeliveryStatus.FAILED)
                .order_by(Delivery.updated_at.desc()).limit(limit)
            )
            return [(e, c, r or "") for e, c, r in rows.all()]

    # -- workers and claims --------------------------------------------------------------------

    async def register_worker(self, worker_id: str, *, host: str, pid: int) -> None:
        async with self.session.begin() as s:
            now = utcnow()
            s.add(Worker(id=worker_id, host=host, pid=pid, started_at=now, heartbeat_at=now))

    async def heartbeat(self, worker_id: str) -> None:
        async with self.session.begin() as s:
            await s.execute(update(Worker).where(Worker.id == worker_id)
                            .values(heartbeat_at=utcnow()))

    async def unregister_worker(self, worker_id: str) -> None:
        async with self.session.begin() as s:
            await s.execute(update(Delivery).where(
                Delivery.claimed_by == worker_id, Delivery.status == DeliveryStatus.PENDING
            ).values(claimed_by=None))
            await s.execute(delete(Worker).where(Worker.id == worker_id))

    async def workers(self) -> Sequence[Worker]:
        async with self.session() as s:
            return (await s.execute(select(Worker))).scalars().all()

    async def release_dead_workers(self, dead: Sequence[str]) -> int:
        """Free what dead workers held: claimed rows go back to the queue, rows they had
        started an SMTP transaction for become UNKNOWN (maybe delivered: never resent blindly).

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
                     smtp_reply="sender stopped during the SMTP transaction"))
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

    async def next_retry_at(self, send_id: int) -> datetime | None:
        """When the earliest waiting retry of a send falls due (None: nothing waits)."""
        async with self.session() as s:
            return (await s.execute(select(func.min(Delivery.next_attempt_at)).where(
                Delivery.send_id == send_id, Delivery.status == DeliveryStatus.PENDING,
            ))).scalar_one()

    async def open_deliveries(self, send_id: int) -> int:
        """Deliveries of a send not yet finished one way or the other (pending or sending)."""
        async with self.session() as s:
            return int((await s.execute(select(func.count()).select_from(Delivery).where(
                Delivery.send_id == send_id,
                Delivery.status.in_([DeliveryStatus.PENDING, DeliveryStatus.SENDING]),
            ))).scalar_one())

    async def journal(
        self, *, worker_id: str, started: Sequence[int], outcomes: Sequence[Outcome],
        bounce_limit: int,
    ) -> set[int]:
        """Write a group of outcomes and mark a group of deliveries SENDING, in one commit.

        This is the durable step around every SMTP transaction: a delivery is SENDING in
        the database before its first SMTP command, and its outcome is stored before the
        same worker starts another one. Returns the ids this worker may now send (a row
        whose claim was lost to another worker is left out).
        """
        now = utcnow()
        allowed: set[int] = set()
        async with self.session.begin() as s:
            for o in outcomes:
                values: dict[str, Any] = {
                    "status": o.status, "smtp_code": o.smtp_code, "smtp_reply": o.smtp_reply,
                    "updated_at": now, "claimed_by": None, "attempts": Delivery.attempts + 1,
                }
                if o.status == DeliveryStatus.SENT:
                    values.update(message_id=o.message_id, sent_at=now)
                if o.retry_at is not None:
                    values["next_attempt_at"] = o.retry_at
                await s.execute(
                    update(Delivery).where(Delivery.id == o.delivery_id).values(**values))
                if o.bounce:
                    await self._count_bounce(s, o.delivery_id, bounce_limit, now)
            if started:
                rows = await s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(started), Delivery.claimed_by == worker_id,
                           Delivery.status == DeliveryStatus.PENDING)
                    .values(status=DeliveryStatus.SENDING, updated_at=now)
                    .returning(Delivery.id)
                )
                allowed = set(rows.scalars())
        return allowed

    async def _count_bounce(self, s: AsyncSession, delivery_id: int, limit: int, now: datetime
                            ) -> None:
        sub_id = (select(Delivery.subscription_id).where(Delivery.id == delivery_id)
                  .scalar_subquery())
        await s.execute(update(Subscription).where(Subscription.id == sub_id)
                        .values(hard_bounces=Subscription.hard_bounces + 1))
        await s.execute(update(Subscription).where(
            and_(Subscription.id == sub_id, Subscription.hard_bounces >= limit,
                 Subscription.status == SubscriptionStatus.CONFIRMED)
        ).values(status=SubscriptionStatus.BOUNCED, bounced_at=now))

    async def requeue_unknown(self, send_id: int) -> int:
        """Put a send's UNKNOWN deliveries back in the queue (the author chose to risk a
        duplicate)."""
        async with self.session.begin() as s:
            result = await s.execute(update(Delivery).where(
                Delivery.send_id == send_id, Delivery.status == DeliveryStatus.UNKNOWN
            ).values(status=DeliveryStatus.PENDING, claimed_by=None, next_attempt_at=None))
            return int(getattr(result, "rowcount", 0))

    # -- tests and status --------------------------------------------------------------------

    async def deliveries(self, send_id: int) -> Sequence[Delivery]:
        async with self.session() as s:
            return (await s.execute(
                select(Delivery).where(Delivery.send_id == send_id).order_by(Delivery.id)
            )).scalars().all()

    async def subscription(self, subscription_id: int) -> Subscription | None:
        async with self.session() as s:
            return await s.get(Subscription, subscription_id)

    async def subscription_of(self, email: str, newsletter: str) -> Subscription | None:
        async with self.session() as s:
            return (await s.execute(select(Subscription).join(Subscriber).where(
                Subscriber.email == email, Subscription.newsletter == newsletter
            ))).scalar_one_or_none()

    async def mark_confirm_sent(self, subscription_id: int) -> None:
        """Remember when the last confirmation email went out (it is re-sent at most so often)."""
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(Subscription.id == subscription_id)
                            .values(confirm_sent_at=utcnow()))
