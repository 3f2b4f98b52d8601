"""All SQL of mailer: one named async method per statement, each saying why it is shaped so."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from mailer import db
from mailer.models import (
    Delivery,
    DeliveryStatus,
    Send,
    SendStatus,
    Subscriber,
    Subscription,
    SubscriptionStatus,
    UTCDateTime,
    Worker,
    utcnow,
)

_IMPORT_CHUNK = 1000  # rows per statement: well under SQLite's 32,766 bound parameters


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
class ArchivedIssue:
    """One sent issue as the public archive lists it."""

    slug: str
    subject: str
    preheader: str
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """What counts against a per-hour sending quota now (see Store.quota_use)."""

    used: int
    oldest: datetime | None  # when the oldest counted message was sent (None: only held rows)


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
        """Add every (email, name) row in one transaction: all of them or, on error, none.

        Bulk statements per chunk of rows (not four round trips per row), so importing
        100,000 addresses takes seconds. `confirmed` confirms new and pending
        subscriptions only: a bulk import never resubscribes someone who left or bounced.
        """
        rows = list(rows)
        now = utcnow()
        async with self.session.begin() as s:
            for start in range(0, len(rows), _IMPORT_CHUNK):
                chunk = rows[start:start + _IMPORT_CHUNK]
                await s.execute(
                    self._insert(Subscriber).on_conflict_do_nothing(index_elements=["email"]),
                    [{"email": email, "name": name, "created_at": now} for email, name in chunk])
                named = [{"e": email, "n": name} for email, name in chunk if name]
                if named:  # a name given now fills one the address did not have yet
                    # Core table, not the ORM entity: the ORM reads a list of rows as
                    # updates by primary key, which these are not.
                    table = cast(Table, Subscriber.__table__)
                    await s.execute(
                        update(table).where(table.c.email == bindparam("e"), table.c.name == "")
                        .values(name=bindparam("n")), named)
                found = {email: id_ for email, id_ in await s.execute(
                    select(Subscriber.email, Subscriber.id)
                    .where(Subscriber.email.in_([email for email, _ in chunk])))}
                ids = [found[email] for email, _ in chunk]  # file order: the export keeps it
                await s.execute(
                    self._insert(Subscription).on_conflict_do_nothing(
                        index_elements=["subscriber_id", "newsletter"]),
                    [{"subscriber_id": i, "newsletter": newsletter, "created_at": now,
                      "status": SubscriptionStatus.PENDING, "hard_bounces": 0} for i in ids])
                if confirmed:
                    await s.execute(update(Subscription).where(
                        Subscription.newsletter == newsletter,
                        Subscription.subscriber_id.in_(ids),
                        Subscription.status == SubscriptionStatus.PENDING,
                    ).values(status=SubscriptionStatus.CONFIRMED, confirmed_at=now))
        return len(rows)

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
            return await self._insert_and_queue(
                s, newsletter=newsletter, slug=slug, subject=subject, preheader=preheader,
                html=html, text=text, web_url=web_url)

    async def _insert_and_queue(self, s: AsyncSession, *, newsletter: str, slug: str,
                                **content: str) -> tuple[Send, bool]:
        # ON CONFLICT: whoever inserted the issue first owns it; the others share that send.
        now = utcnow()
        new_id = (await s.execute(
            self._insert(Send).values(newsletter=newsletter, slug=slug,
                                      status=SendStatus.SENDING, created_at=now, **content)
            .on_conflict_do_nothing(index_elements=["newsletter", "slug"])
            .returning(Send.id)
        )).scalar_one_or_none()
        send = (await s.execute(select(Send).where(
            Send.newsletter == newsletter, Send.slug == slug))).scalar_one()
        if new_id is None:
            return send, False
        recipients = (
            select(literal(send.id), Subscription.id, Subscriber.email, Subscriber.name,
                   literal(DeliveryStatus.PENDING.value), literal(0), literal(now))
            .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
            .where(Subscription.newsletter == newsletter,
                   Subscription.status == SubscriptionStatus.CONFIRMED)
            .order_by(Subscription.id)
        )
        await s.execute(insert(Delivery).from_select(
            ["send_id", "subscription_id", "email", "name", "status", "attempts", "created_at"],
            recipients,
        ))
        return send, True

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

    async def sent_since(self, send_id: int, since: datetime) -> int:
        """Messages of a send delivered after `since` (the rate `mailer status` shows)."""
        async with self.session() as s:
            return int((await s.execute(select(func.count()).select_from(Delivery).where(
                Delivery.send_id == send_id, Delivery.status == DeliveryStatus.SENT,
                Delivery.sent_at > since))).scalar_one())

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

    # -- sign-up, confirm and leave (the web endpoints) -------------------------------------

    async def request_subscription(self, email: str, *, newsletter: str, name: str = ""
                                   ) -> Subscription:
        """Find or create the subscription a sign-up form asks for, as pending.

        A subscription that ended (unsubscribed or bounced) becomes pending again: the
        person asks anew and must confirm anew, so its confirmation is due at once. The
        name is taken only for an address we did not know: a stranger filling in the
        form must not rename someone who is already on a list.
        """
        async with self.session.begin() as s:
            await s.execute(
                self._insert(Subscriber).values(email=email, name=name, created_at=utcnow())
                .on_conflict_do_nothing(index_elements=["email"])
            )
            sub = await self._upsert_subscription(s, email, "", newsletter, confirmed=False)
            if sub.status in (SubscriptionStatus.UNSUBSCRIBED, SubscriptionStatus.BOUNCED):
                sub.status = SubscriptionStatus.PENDING
                sub.confirm_sent_at = None
            return sub

    async def claim_confirm_email(self, subscription_id: int, *, now: datetime,
                                  every: timedelta) -> bool:
        """Take the right to send a pending subscription its confirmation email now.

        One conditional UPDATE, so of two sign-ups at the same moment only one wins, and
        an address gets at most one confirmation email per `every` however often the form
        is sent (no mail-bombing a stranger through our form). False: not due, or not
        pending any more.
        """
        async with self.session.begin() as s:
            result = await s.execute(update(Subscription).where(
                Subscription.id == subscription_id,
                Subscription.status == SubscriptionStatus.PENDING,
                or_(Subscription.confirm_sent_at.is_(None),
                    Subscription.confirm_sent_at <= now - every),
            ).values(confirm_sent_at=now))
            return int(getattr(result, "rowcount", 0)) == 1

    async def release_confirm_email(self, subscription_id: int, *, claimed_at: datetime
                                    ) -> None:
        """Give back a claim whose email could not be sent, so the next sign-up sends it.

        Only the claim made at `claimed_at` is undone; a newer one is left alone.
        """
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(
                Subscription.id == subscription_id, Subscription.confirm_sent_at == claimed_at
            ).values(confirm_sent_at=None))

    async def confirm_subscription(self, subscription_id: int, *, now: datetime
                                   ) -> Subscription | None:
        """Confirm a pending subscription; returns it as it is now (None: there is none).

        Only PENDING moves: a link clicked (or prefetched by a scanner) after the person
        unsubscribed must not subscribe them again. Confirming twice changes nothing.
        """
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(
                Subscription.id == subscription_id,
                Subscription.status == SubscriptionStatus.PENDING,
            ).values(status=SubscriptionStatus.CONFIRMED, confirmed_at=now, hard_bounces=0))
            return await s.get(Subscription, subscription_id)

    async def unsubscribe_subscription(self, subscription_id: int, *, now: datetime
                                       ) -> Subscription | None:
        """End a subscription whatever its state; idempotent (the first time is kept).

        RFC 8058 asks that a one-click POST be honoured at once, so this is one UPDATE
        and the deliveries of a send under way are skipped at their claim.
        """
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(
                Subscription.id == subscription_id,
                Subscription.status != SubscriptionStatus.UNSUBSCRIBED,
            ).values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=now))
            return await s.get(Subscription, subscription_id)

    async def resubscribe_subscription(self, subscription_id: int, *, now: datetime
                                       ) -> Subscription | None:
        """Undo leaving: the subscription is confirmed again (its bounce count starts over).

        Called only with an unsubscribe token, which reached the address by mail: that
        proves the address as well as a confirmation link would.
        """
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(
                Subscription.id == subscription_id,
                Subscription.status != SubscriptionStatus.CONFIRMED,
            ).values(status=SubscriptionStatus.CONFIRMED, confirmed_at=now,
                     unsubscribed_at=None, hard_bounces=0))
            return await s.get(Subscription, subscription_id)

    # -- archive and metrics -----------------------------------------------------------------

    async def archived_issues(self, newsletter: str) -> list[ArchivedIssue]:
        """The issues of a newsletter that went out, newest first, without their bodies.

        Every send counts, finished or not: once the first copy left, the issue is public.
        """
        async with self.session() as s:
            rows = await s.execute(
                select(Send.slug, Send.subject, Send.preheader, Send.created_at)
                .where(Send.newsletter == newsletter)
                .order_by(Send.created_at.desc(), Send.id.desc())
            )
            return [ArchivedIssue(*row) for row in rows.all()]

    async def archived_issue(self, newsletter: str, slug: str) -> Send | None:
        """The send of one issue, for its web view (None: never sent)."""
        async with self.session() as s:
            return (await s.execute(select(Send).where(
                Send.newsletter == newsletter, Send.slug == slug))).scalar_one_or_none()

    async def subscription_counts(self) -> dict[tuple[str, SubscriptionStatus], int]:
        """Subscriptions per (newsletter, state), counted in the database at scrape time so
        every process reports the same numbers."""
        async with self.session() as s:
            rows = await s.execute(
                select(Subscription.newsletter, Subscription.status, func.count())
                .group_by(Subscription.newsletter, Subscription.status))
            return {(n, SubscriptionStatus(status)): c for n, status, c in rows.all()}

    async def delivery_totals(self) -> dict[tuple[str, DeliveryStatus], int]:
        """Deliveries per (newsletter, state) over every send: the sent/failed totals."""
        async with self.session() as s:
            rows = await s.execute(
                select(Send.newsletter, Delivery.status, func.count())
                .join(Send, Send.id == Delivery.send_id)
                .group_by(Send.newsletter, Delivery.status))
            return {(n, DeliveryStatus(status)): c for n, status, c in rows.all()}

    async def send_durations(self) -> list[tuple[str, float]]:
        """(newsletter, seconds from queueing to the last outcome) of every finished send.

        The difference is taken in Python: SQLite and PostgreSQL subtract dates differently.
        """
        async with self.session() as s:
            rows = await s.execute(
                select(Send.newsletter, Send.created_at, Send.finished_at)
                .where(Send.status == SendStatus.FINISHED, Send.finished_at.is_not(None)))
            return [(n, max(0.0, (end - start).total_seconds()))
                    for n, start, end in rows.all() if end is not None]

    # -- the daemon's schedule ---------------------------------------------------------------

    async def latest_send(self, newsletter: str) -> Send | None:
        """The newest send of `newsletter`: `status` shows it as the last send, and when it
        was created tells the scheduler whether the latest slot already had its issue."""
        async with self.session() as s:
            return (await s.execute(
                select(Send).where(Send.newsletter == newsletter)
                .order_by(Send.created_at.desc(), Send.id.desc()).limit(1)
            )).scalar_one_or_none()

    async def open_send_for_slot(
        self, *, slot_start: datetime, newsletter: str, slug: str, subject: str,
        preheader: str, html: str, text: str, web_url: str,
    ) -> tuple[Send | None, bool]:
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
                return same, False
            other = (await s.execute(select(Send.id).where(
                Send.newsletter == newsletter, Send.created_at >= slot_start).limit(1)
            )).scalar_one_or_none()
            if other is not None:
                return None, False
            # A `send-now` of the same issue (which takes no slot lock) may have inserted it
            # a moment ago; then that send is the one to share.
            return await self._insert_and_queue(
                s, newsletter=newsletter, slug=slug, subject=subject, preheader=preheader,
                html=html, text=text, web_url=web_url)
