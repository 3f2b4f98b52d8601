"""Queries about the list: adding, importing, exporting and removing subscribers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from typing import cast

from sqlalchemy import (
    Table,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.rows import SubscriberRow, SubscriptionRow
from mailer.states import SubscriptionStatus, utcnow
from mailer.store._base import StoreBase
from mailer.store.models import Subscriber, Subscription
from mailer.store.torows import maybe_subscription_row, subscription_row

_IMPORT_CHUNK = 1000  # rows per statement: well under SQLite's 32,766 bound parameters


class SubscriberQueries(StoreBase):
    """Subscribers and their subscriptions as the list's owner manages them (the CLI)."""

    # -- subscribers -------------------------------------------------------------------------

    async def _upsert_subscription(
        self, s: AsyncSession, email: str, name: str, newsletter: str, *, confirmed: bool,
        attributes: Mapping[str, str] | None = None,
    ) -> Subscription:
        # Insert-or-ignore on the unique keys rather than select-then-insert, so two
        # requests for the same address at once cannot create two rows.
        await s.execute(
            self._insert(Subscriber).values(email=email, name=name, created_at=utcnow(),
                                            attributes=dict(attributes or {}))
            .on_conflict_do_nothing(index_elements=["email"])
        )
        subscriber = (await s.execute(
            select(Subscriber).where(Subscriber.email == email))).scalar_one()
        if name and not subscriber.name:
            subscriber.name = name
        merged = _filled(subscriber.attributes, attributes)
        if merged is not None:
            subscriber.attributes = merged
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
        self, email: str, *, newsletter: str, name: str = "", confirmed: bool = False,
        attributes: Mapping[str, str] | None = None,
    ) -> SubscriptionRow:
        """Create (or find) the subscription of `email` to `newsletter`; confirm it if asked.

        A name or attribute given fills one the address does not have yet; none that it
        has is changed (as an import does).
        """
        async with self.session.begin() as s:
            sub = await self._upsert_subscription(s, email, name, newsletter, confirmed=confirmed,
                                                  attributes=attributes)
            return subscription_row(sub)

    async def import_subscribers(
        self, rows: Iterable[tuple[str, str] | tuple[str, str, Mapping[str, str]]], *,
        newsletter: str, confirmed: bool, welcome: bool = False, now: datetime | None = None,
    ) -> int:
        """Add every (email, name[, attributes]) row in one transaction: all of them or, on
        error, none.

        Bulk statements per chunk of rows (not four round trips per row), so importing
        100,000 addresses takes seconds. `confirmed` confirms new and pending
        subscriptions only: a bulk import never resubscribes someone who left or bounced.
        A name or attribute fills one an existing address does not have yet, never
        changes one it has. `welcome` starts the automatic emails (welcome email and
        sequence) of those it confirms, from `now`; without it an import starts none.
        """
        full: list[tuple[str, str, Mapping[str, str]]] = [
            (row[0], row[1], row[2]) if len(row) == 3 else (row[0], row[1], {}) for row in rows]
        now = now or utcnow()
        async with self.session.begin() as s:
            for start in range(0, len(full), _IMPORT_CHUNK):
                chunk = full[start:start + _IMPORT_CHUNK]
                await s.execute(
                    self._insert(Subscriber).on_conflict_do_nothing(index_elements=["email"]),
                    [{"email": email, "name": name, "created_at": now,
                      "attributes": dict(attrs)} for email, name, attrs in chunk])
                await self._fill_attributes(s, chunk)
                named = [{"e": email, "n": name} for email, name, _ in chunk if name]
                if named:  # a name given now fills one the address did not have yet
                    # Core table, not the ORM entity: the ORM reads a list of rows as
                    # updates by primary key, which these are not.
                    table = cast(Table, Subscriber.__table__)
                    await s.execute(
                        update(table).where(table.c.email == bindparam("e"), table.c.name == "")
                        .values(name=bindparam("n")), named)
                found = {email: id_ for email, id_ in await s.execute(
                    select(Subscriber.email, Subscriber.id)
                    .where(Subscriber.email.in_([email for email, _, _ in chunk])))}
                ids = [found[email] for email, _, _ in chunk]  # file order: the export keeps it
                await s.execute(
                    self._insert(Subscription).on_conflict_do_nothing(
                        index_elements=["subscriber_id", "newsletter"]),
                    [{"subscriber_id": i, "newsletter": newsletter, "created_at": now,
                      "status": SubscriptionStatus.PENDING, "hard_bounces": 0} for i in ids])
                if confirmed:
                    # A reader's place in the sequence is never moved (models.Subscription):
                    # one who confirmed before, left and signed up again keeps theirs.
                    starts = ({"sequence_from": func.coalesce(Subscription.sequence_from, now)}
                              if welcome else {})
                    await s.execute(update(Subscription).where(
                        Subscription.newsletter == newsletter,
                        Subscription.subscriber_id.in_(ids),
                        Subscription.status == SubscriptionStatus.PENDING,
                    ).values(status=SubscriptionStatus.CONFIRMED, confirmed_at=now, **starts))
        return len(full)

    async def _fill_attributes(
        self, s: AsyncSession, chunk: list[tuple[str, str, Mapping[str, str]]]
    ) -> None:
        # Merged in Python, not in SQL: JSON merging differs between SQLite and PostgreSQL,
        # and only addresses that existed before and get a new key are written at all.
        given = {email: attrs for email, _, attrs in chunk if attrs}
        if not given:
            return
        table = cast(Table, Subscriber.__table__)
        changed = []
        for id_, email, stored in await s.execute(
                select(Subscriber.id, Subscriber.email, Subscriber.attributes)
                .where(Subscriber.email.in_(list(given)))):
            merged = _filled(stored, given[email])
            if merged is not None:
                changed.append({"i": id_, "a": merged})
        if changed:
            await s.execute(update(table).where(table.c.id == bindparam("i"))
                            .values(attributes=bindparam("a")), changed)

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
                   Subscription.created_at, Subscription.confirmed_at, Subscriber.attributes)
            .join(Subscription, Subscription.subscriber_id == Subscriber.id)
            .where(Subscription.newsletter == newsletter)
            .order_by(Subscription.id)
        )
        if status is not None:
            query = query.where(Subscription.status == status)
        async with self.session() as s:
            result = await s.stream(query.execution_options(yield_per=1000))
            async for row in result:
                yield SubscriberRow(*row[:5], attributes=row[5] or {})

    async def count_recipients(self, newsletter: str) -> int:
        """How many confirmed subscribers an issue of `newsletter` would go to now."""
        async with self.session() as s:
            return int((await s.execute(select(func.count()).select_from(Subscription).where(
                Subscription.newsletter == newsletter,
                Subscription.status == SubscriptionStatus.CONFIRMED,
            ))).scalar_one())

    async def lacking(self, newsletter: str, *, name: bool = False, key: str | None = None
                      ) -> int:
        """How many confirmed subscribers of `newsletter` have no name (`name`), or no value
        for the attribute `key`: the readers a personal field without a default would miss.

        Counted in SQL over the JSON column (json_extract on SQLite, ->> on PostgreSQL,
        both written by SQLAlchemy's JSON index operator), one statement per field.
        """
        if key is not None:
            value = Subscriber.attributes[key].as_string()
            missing = or_(value.is_(None), value == "")
        elif name:
            missing = Subscriber.name == ""
        else:
            return 0
        async with self.session() as s:
            return int((await s.execute(
                select(func.count()).select_from(Subscription)
                .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
                .where(Subscription.newsletter == newsletter,
                       Subscription.status == SubscriptionStatus.CONFIRMED, missing)
            )).scalar_one())

    async def attribute_keys(self, *, newsletter: str,
                             status: SubscriptionStatus | None = None) -> list[str]:
        """Every attribute key the subscribers of `newsletter` have, sorted: the export's
        columns. Streamed, so a large list is never in memory at once."""
        query = (select(Subscriber.attributes)
                 .join(Subscription, Subscription.subscriber_id == Subscriber.id)
                 .where(Subscription.newsletter == newsletter))
        if status is not None:
            query = query.where(Subscription.status == status)
        keys: set[str] = set()
        async with self.session() as s:
            result = await s.stream(query.execution_options(yield_per=1000))
            async for (attributes,) in result:
                keys.update(attributes or {})
        return sorted(keys)

    async def subscription(self, subscription_id: int) -> SubscriptionRow | None:
        """The subscription `subscription_id` as it is now (None: removed)."""
        async with self.session() as s:
            return maybe_subscription_row(await s.get(Subscription, subscription_id))

    async def mark_confirm_sent(self, subscription_id: int) -> None:
        """Remember when the last confirmation email went out (it is re-sent at most so often)."""
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(Subscription.id == subscription_id)
                            .values(confirm_sent_at=utcnow()))


def _filled(stored: Mapping[str, str] | None, given: Mapping[str, str] | None
            ) -> dict[str, str] | None:
    """`stored` with the keys of `given` it lacks added; None when nothing changes."""
    if not given:
        return None
    merged = {**given, **(stored or {})}
    return merged if merged != (stored or {}) else None
