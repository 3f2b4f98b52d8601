"""Reads only the tests make: the whole delivery log of a send, a subscription by address.

Plain SQLAlchemy against the store's own sessions, kept out of mailer.store so the shipped
Store carries no query that nothing in mailer calls.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from mailer.store import Store
from mailer.store.models import Delivery, ReturnedMessage, Subscriber, Subscription


async def deliveries(store: Store, send_id: int) -> Sequence[Delivery]:
    """Every delivery row of a send, in the order they were queued."""
    async with store.session() as s:
        return (await s.execute(
            select(Delivery).where(Delivery.send_id == send_id).order_by(Delivery.id)
        )).scalars().all()


async def subscription_of(store: Store, email: str, newsletter: str) -> Subscription | None:
    """The subscription of `email` to `newsletter` as stored (None: there is none)."""
    async with store.session() as s:
        return (await s.execute(select(Subscription).join(Subscriber).where(
            Subscriber.email == email, Subscription.newsletter == newsletter
        ))).scalar_one_or_none()


async def returned_count(store: Store, email: str) -> int:
    """How many returned messages (bounces, complaints, …) name `email`."""
    async with store.session() as s:
        return int((await s.execute(select(func.count()).select_from(ReturnedMessage)
                                    .where(ReturnedMessage.address == email))).scalar_one())
