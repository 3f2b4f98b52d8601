"""Queries of a subscriber's own page: their subscriptions, name, data, and erasing them."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from mailer.rows import PersonDelivery, PersonRow
from mailer.states import SubscriptionStatus
from mailer.store._base import StoreBase
from mailer.store.models import (
    Delivery,
    ErasedAddress,
    ReturnedMessage,
    Send,
    Subscriber,
    Subscription,
)
from mailer.store.torows import subscription_row

_CHUNK = 1000  # hashes per IN (...): well under SQLite's 32,766 bound parameters
ERASED = "[erased]"  # what stands where an erased address was quoted in a server's reply


class ManageQueries(StoreBase):
    """What the manage page reads and changes, always for one subscriber only."""

    async def person(self, subscription_id: int) -> PersonRow | None:
        """The subscriber a manage link's subscription belongs to, with every subscription
        of theirs (None: the subscription, or the whole subscriber, is gone)."""
        async with self.session() as s:
            sub = await s.get(Subscription, subscription_id)
            if sub is None:
                return None
            return await self._person(s, sub.subscriber_id)

    async def _person(self, s: AsyncSession, subscriber_id: int) -> PersonRow | None:
        subscriber = await s.get(Subscriber, subscriber_id)
        if subscriber is None:
            return None
        subs = (await s.execute(select(Subscription).where(
            Subscription.subscriber_id == subscriber_id).order_by(Subscription.id))).scalars()
        attributes: Mapping[str, str] = dict(subscriber.attributes or {})
        return PersonRow(subscriber.id, subscriber.email, subscriber.name, attributes,
                         subscriber.created_at, tuple(subscription_row(x) for x in subs))

    async def person_deliveries(self, subscriber_id: int) -> list[PersonDelivery]:
        """Every delivery to this subscriber, oldest first: by their subscriptions, and by
        their address for rows whose subscription was removed since (the snapshot)."""
        async with self.session() as s:
            email = (await s.execute(select(Subscriber.email).where(
                Subscriber.id == subscriber_id))).scalar_one_or_none()
            if email is None:
                return []
            theirs = select(Subscription.id).where(Subscription.subscriber_id == subscriber_id)
            rows = await s.execute(
                select(Send.newsletter, Send.slug, Send.subject, Delivery.status,
                       Delivery.created_at, Delivery.sent_at, Delivery.returned_kind,
                       Delivery.returned_at)
                .join(Send, Send.id == Delivery.send_id)
                .where(or_(Delivery.subscription_id.in_(theirs), Delivery.email == email))
                .order_by(Delivery.id))
            return [PersonDelivery(n, slug, subject, status, queued, sent,
                                   kind.value if kind is not None else None, returned)
                    for n, slug, subject, status, queued, sent, kind, returned in rows]

    async def rename_subscriber(self, subscriber_id: int, name: str) -> None:
        """Set the subscriber's name (the manage page; one row, the same for every list)."""
        async with self.session.begin() as s:
            await s.execute(update(Subscriber).where(Subscriber.id == subscriber_id)
                            .values(name=name))

    async def leave_newsletter(self, subscriber_id: int, newsletter: str, *, now: datetime
                               ) -> None:
        """End this subscriber's subscription to `newsletter`; idempotent (the first time
        is kept). A new token generation, as unsubscribing does: mailed confirmation links
        are dead."""
        async with self.session.begin() as s:
            await s.execute(update(Subscription).where(
                Subscription.subscriber_id == subscriber_id,
                Subscription.newsletter == newsletter,
                Subscription.status != SubscriptionStatus.UNSUBSCRIBED,
            ).values(status=SubscriptionStatus.UNSUBSCRIBED, unsubscribed_at=now,
                     token_generation=Subscription.token_generation + 1))

    async def join_newsletter(self, subscriber_id: int, newsletter: str, *, now: datetime
                              ) -> None:
        """Subscribe this subscriber to `newsletter`, confirmed at once; idempotent.

        Called only with a manage token, which reached the address by mail: that proves
        the address as well as a confirmation link would (as resubscribing does).
        """
        async with self.session.begin() as s:
            await s.execute(self._insert(Subscription).values(
                subscriber_id=subscriber_id, newsletter=newsletter,
                status=SubscriptionStatus.CONFIRMED, created_at=now, confirmed_at=now,
                sequence_from=now, hard_bounces=0, token_generation=0, confirm_unsent=False,
            ).on_conflict_do_nothing(index_elements=["subscriber_id", "newsletter"]))
            await s.execute(update(Subscription).where(
                Subscription.subscriber_id == subscriber_id,
                Subscription.newsletter == newsletter,
                Subscription.status != SubscriptionStatus.CONFIRMED,
            ).values(status=SubscriptionStatus.CONFIRMED, confirmed_at=now,
                     unsubscribed_at=None, hard_bounces=0,
                     sequence_from=func.coalesce(Subscription.sequence_from, now)))

    async def erase_subscriber(self, subscriber_id: int, *, address_hash: str, now: datetime
                               ) -> bool:
        """Erase a subscriber and every copy of their address, keeping `address_hash` only.

        One transaction: the subscriber row (name, attributes), their subscriptions, the
        address and name in the delivery log and in returned messages (the rows stay, so a
        send's counts and rates do not change afterwards; their raw evidence goes, since
        it quotes the address). False: there was no such subscriber (erased already).
        """
        async with self.session.begin() as s:
            email = (await s.execute(select(Subscriber.email).where(
                Subscriber.id == subscriber_id))).scalar_one_or_none()
            if email is None:
                return False
            subs = select(Subscription.id).where(Subscription.subscriber_id == subscriber_id)
            theirs = or_(Delivery.subscription_id.in_(subs), Delivery.email == email)
            delivery_ids = select(Delivery.id).where(theirs)
            await s.execute(update(ReturnedMessage).where(or_(
                ReturnedMessage.delivery_id.in_(delivery_ids),
                ReturnedMessage.subscription_id.in_(subs),
                ReturnedMessage.address == email,
            )).values(address=None, evidence=b"",
                      diagnostic=_scrub(ReturnedMessage.diagnostic, email),
                      reason=_scrub(ReturnedMessage.reason, email)))
            await s.execute(update(Delivery).where(theirs).values(
                email="", name="", smtp_reply=_scrub(Delivery.smtp_reply, email),
                returned_reply=_scrub(Delivery.returned_reply, email)),
                execution_options={"synchronize_session": False})
            # Deleted explicitly, not left to ON DELETE CASCADE: SQLite only cascades with
            # its foreign_keys pragma on, and the erasure must not depend on a setting.
            await s.execute(delete(Subscription).where(
                Subscription.subscriber_id == subscriber_id))
            await s.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))
            await s.execute(self._insert(ErasedAddress).values(
                address_hash=address_hash, erased_at=now,
            ).on_conflict_do_nothing(index_elements=["address_hash"]))
            return True

    async def erased_among(self, hashes: Mapping[str, str]) -> set[str]:
        """Which of these addresses (by their keyed hash: {hash: address}) were erased by
        their owner and have not come back by confirming a subscription themselves since."""
        found: set[str] = set()
        keys = list(hashes)
        async with self.session() as s:
            for start in range(0, len(keys), _CHUNK):
                chunk = keys[start:start + _CHUNK]
                found.update(hashes[h] for h in (await s.execute(
                    select(ErasedAddress.address_hash)
                    .where(ErasedAddress.address_hash.in_(chunk)))).scalars())
            if found:
                found -= await self._confirmed_addresses(s, found)
        return found

    async def _confirmed_addresses(self, s: AsyncSession, emails: Collection[str]) -> set[str]:
        # Someone who signed up again through the form and clicked their confirmation link
        # acted themselves: an import listing them again takes nothing back from them.
        return set((await s.execute(
            select(Subscriber.email).join(Subscription)
            .where(Subscriber.email.in_(list(emails)),
                   Subscription.status == SubscriptionStatus.CONFIRMED)
            .distinct())).scalars())


def _scrub(column: Any, email: str) -> Any:
    # A server's reply often quotes the address ("550 5.1.1 <ada@…>: no such user").
    return func.replace(column, email, ERASED)
