"""Queries of the double opt-in: sign-up, its confirmation email, confirm, leave, come back."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, case, func, literal, or_, update

from mailer.rows import SignUp, SubscriptionRow
from mailer.states import SubscriptionStatus, utcnow
from mailer.store._base import StoreBase
from mailer.store.models import Subscriber, Subscription
from mailer.store.torows import maybe_subscription_row

_PENDING = literal(SubscriptionStatus.PENDING.value)


class SignUpQueries(StoreBase):
    """The states a subscription moves through from the public endpoints (web and links)."""

    async def sign_up(self, email: str, *, newsletter: str, name: str, now: datetime,
                      every: timedelta, lease: timedelta) -> SignUp:
        """Record a sign-up from the public form as pending, and claim its confirmation email.

        The same three statements in one write transaction whatever the address's state:
        the answer's timing told them apart when a confirmed address skipped the write.
        Both upserts always write (a known row gets its own values back). One that ended
        (unsubscribed, bounced, complained) becomes pending in a new token generation, so it must
        confirm anew with a new link; a confirmed one is left alone. The name is taken
        only for a new address: a stranger must not rename someone already on a list.

        The claim is one conditional UPDATE: of two sign-ups at once only one wins, and an
        address gets at most one confirmation email per `every` (no mail-bombing a stranger
        through our form); one claimed but never reported sent (`confirm_unsent`: the
        process died) is due again after `lease`.
        """
        ended = Subscription.status.in_([SubscriptionStatus.UNSUBSCRIBED,
                                         SubscriptionStatus.BOUNCED,
                                         SubscriptionStatus.COMPLAINED])
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
                                   now: datetime) -> SubscriptionRow | None:
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
            ).values(status=SubscriptionStatus.CONFIRMED, confirmed_at=now, hard_bounces=0,
                     # The first confirmation starts the automatic emails; a later one
                     # (after leaving) goes on where the reader was, never from the start.
                     sequence_from=func.coalesce(Subscription.sequence_from, now)))
            return maybe_subscription_row(await s.get(Subscription, subscription_id))

    async def unsubscribe_subscription(self, subscription_id: int, *, now: datetime
                                       ) -> SubscriptionRow | None:
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
            return maybe_subscription_row(await s.get(Subscription, subscription_id))

    async def resubscribe_subscription(self, subscription_id: int, *, now: datetime
                                       ) -> SubscriptionRow | None:
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
            return maybe_subscription_row(await s.get(Subscription, subscription_id))
