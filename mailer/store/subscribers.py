"""Queries about people: subscribers, their subscriptions, sign-up, confirm and leave."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime, timedelta
from typing import NamedTuple, cast

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.rows import SubscriberRow
from mailer.states import SubscriptionStatus, utcnow
from mailer.store._base import StoreBase
from mailer.store.models import Delivery, Subscriber, Subscription

_IMPORT_CHUNK = 1000  # rows per statement: well under SQLite's 32,766 bound parameters
_PENDING = literal(SubscriptionStatus.PENDING.value)


class SignUp(NamedTuple):
    """What a sign-up did (see SubscriberQueries.sign_up)."""

    subscription_id: int
    generation: int  # the subscription's token generation, for its confirmation link
    claimed: bool  # this sign-up won the right to send the confirmation email now


class SubscriberQueries(StoreBase):
    """Subscribers and their subscriptions: import, export, the double opt-in states."""

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

    async def sign_up(self, email: str, *, newsletter: str, name: str, now: datetime,
                      every: timedelta, lease: timedelta) -> SignUp:
        """Record a sign-up from the public form as pending, and claim its confirmation email.

        The same three statements in one write transaction whatever the address's state:
        the answer's timing told them apart when a confirmed address skipped the write.
        Both upserts always write (a known row gets its own values back). One that ended
        (unsubscribed, bounced) becomes pending in a new token generation, so it must
        confirm anew with a new link; a confirmed one is left alone. The name is taken
        only for a new address: a stranger must not rename someone already on a list.

        The claim is one conditional UPDATE: of two sign-ups at once only one wins, and an
        address gets at most one confirmation email per `every` (no mail-bombing a stranger
        through our form); one claimed but never reported sent (`confirm_unsent`: the
        process died) is due again after `lease`.
        """
        ended = Subscription.status.in_([SubscriptionStatus.UNSUBSCRIBED,
                                         SubscriptionStatus.BOUNCED])
        async with self.session.begin() as s:
            subscriber_id = (await s.execute(
                self._insert(Subscriber).values(email=email, name=name, created_at=utcnow())
                .on_conflict_do_update(index_elements=["email"],
                                       set_={"name": Subscriber.name})
                .returning(Subscriber.id))).scalar_one()
            subscription_id, generation = (await s.execute(
                self._insert(Subscription).values(
                    subscriber_id=subscriber_id, newsletter=newsletter,
                    status=SubscriptionStatus.PENDING, created_at=utcnow(), hard_bounces=0,
                    token_generation=0, confirm_unsent=False,
                ).on_conflict_do_update(
                    index_elements=["subscriber_id", "newsletter"],
                    set_={"status": case((ended, _PENDING), else_=Subscription.status),
                          "token_generation": Subscription.token_generation
                          + case((ended, 1), else_=0),
                          "confirm_sent_at": case((ended, None),
                                                  else_=Subscription.confirm_sent_at)},
                ).returning(Subscription.id, Subscription.token_generation))).one()
            claim = await s.execute(update(Subscription).where(
                Subscription.id == subscription_id,
                Subscription.status == SubscriptionStatus.PENDING,
                or_(Subscription.confirm_sent_at.is_(None),
                    Subscription.confirm_sent_at <= now - every,
                    and_(Subscription.confirm_unsent, Subscription.confirm_sent_at <= now - lease)),
            ).values(confirm_sent_at=now, confirm_unsent=True))
            return SignUp(subscription_id, generation, int(getattr(claim, "rowcount", 0)) == 1)

    async def confirm_email_sent(self, subscription_id: int, *, claimed_at: datetime) -> None:
        """Note that the relay took the confirmation email claimed at `claimed_at`."""
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(
                Subscription.id == subscription_id, Subscription.confirm_sent_at == claimed_at
            ).values(confirm_unsent=False))

    async def release_confirm_email(self, subscription_id: int, *, claimed_at: datetime
                                    ) -> None:
        """Give back a claim whose email could not be sent, so the next sign-up sends it.

        Only the claim made at `claimed_at` is undone; a newer one is left alone.
        """
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(
                Subscription.id == subscription_id, Subscription.confirm_sent_at == claimed_at
            ).values(confirm_sent_at=None, confirm_unsent=False))

    async def confirm_subscription(self, subscription_id: int, *, generation: int,
                                   now: datetime) -> Subscription | None:
        """Confirm a pending subscription; returns it as it is now (None: there is none).

        Only PENDING moves, and only in the link's token generation: a link opened (or
        prefetched by a scanner) after the person left must not subscribe them again, nor
        confirm a later sign-up. Confirming twice changes nothing.
        """
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(
                Subscription.id == subscription_id,
                Subscription.status == SubscriptionStatus.PENDING,
                Subscription.token_generation == generation,
            ).values(status=SubscriptionStatus.CONFIRMED, confirmed_at=now, hard_bounces=0))
            return await s.get(Subscription, subscription_id)

    async def unsubscribe_subscription(self, subscription_id: int, *, now: datetime
                                       ) -> Subscription | None:
        """End a subscription whatever its state; idempotent (the first time is kept).

        RFC 8058 asks that a one-click POST be honoured at once, so this is one UPDATE
        and the deliveries of a send under way are skipped at their claim.
        """
        async with self.session.begin() as s:
            # A new token generation: confirmation links mailed so far are dead.
            await s.execute(update(Subscription).where(
                Subscription.id == subscription_id,
                Subscription.status != SubscriptionStatus.UNSUBSCRIBED,
            ).values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=now,
                     token_generation=Subscription.token_generation + 1))
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
