"""Queries of the way back: returned messages (bounces, complaints, auto-replies), the
deliveries they are about, and the suppressions they cause."""

from __future__ import annotations

from dataclasses import asdict

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from mailer.returns.kinds import ReturnKind
from mailer.rows import PastDelivery, ReturnedRow, ReturnRecord, ReturnTarget
from mailer.states import SubscriptionStatus
from mailer.store._base import StoreBase
from mailer.store.models import Delivery, ReturnedMessage, Send, Subscriber, Subscription

# Kinds that say something about a delivery (it "bounced later"); the rest are evidence only.
_ACTING = (ReturnKind.HARD, ReturnKind.SOFT, ReturnKind.COMPLAINT, ReturnKind.POLICY)
_BOUNCES = (ReturnKind.HARD, ReturnKind.SOFT)
# What a suppression may overwrite: a complaint ends everything, a bounce only what still
# gets mail (an unsubscribed or complained address keeps its own, stronger, state).
_SUPPRESSIBLE = {
    SubscriptionStatus.BOUNCED: (SubscriptionStatus.CONFIRMED, SubscriptionStatus.PENDING),
    SubscriptionStatus.COMPLAINED: (SubscriptionStatus.CONFIRMED, SubscriptionStatus.PENDING,
                                    SubscriptionStatus.UNSUBSCRIBED,
                                    SubscriptionStatus.BOUNCED),
}
_HISTORY = 200  # an address's newest deliveries read for the soft bounce rule


class ReturnQueries(StoreBase):
    """Returned messages: matching, the soft bounce history, applying, listing, counting."""

    async def return_target(self, *, delivery_id: int | None = None,
                            message_id: str | None = None,
                            email: str | None = None) -> ReturnTarget | None:
        """The delivery a returned message names, by id (a VERP token), by its Message-ID
        (stored with angle brackets), or the latest message the relay took for `email`;
        None when no delivery of ours matches."""
        query = (select(Delivery.id, Delivery.send_id, Delivery.subscription_id,
                        Delivery.email, Send.newsletter, Send.slug, Delivery.sent_at)
                 .join(Send, Send.id == Delivery.send_id))
        if delivery_id is not None:
            query = query.where(Delivery.id == delivery_id).order_by(Delivery.id)
        elif message_id:
            query = query.where(Delivery.message_id == message_id).order_by(Delivery.id)
        elif email:
            query = query.where(Delivery.email == email.lower(), Delivery.sent_at.is_not(None)
                                ).order_by(Delivery.sent_at.desc())
        else:
            return None
        async with self.session() as s:
            row = (await s.execute(query.limit(1))).first()
        return None if row is None else ReturnTarget(*row)

    async def returned_seen(self, fingerprint: str) -> bool:
        """Whether a returned message with this fingerprint was applied already."""
        async with self.session() as s:
            return (await s.execute(select(ReturnedMessage.id).where(
                ReturnedMessage.fingerprint == fingerprint))).first() is not None

    async def delivery_history(self, email: str) -> list[PastDelivery]:
        """The newest messages accepted for an address, each with what came back for it:
        the history the soft bounce rule (mailer.bounces.rules) reads."""
        async with self.session() as s:
            sent = (await s.execute(
                select(Delivery.id, Delivery.sent_at)
                .where(Delivery.email == email, Delivery.sent_at.is_not(None))
                .order_by(Delivery.sent_at.desc()).limit(_HISTORY))).all()
            ids = [delivery_id for delivery_id, _ in sent]
            returns = (await s.execute(
                select(ReturnedMessage.delivery_id, ReturnedMessage.kind,
                       func.max(ReturnedMessage.received_at))
                .where(ReturnedMessage.delivery_id.in_(ids),
                       ReturnedMessage.kind.in_(_BOUNCES))
                .group_by(ReturnedMessage.delivery_id, ReturnedMessage.kind))).all()
        bounced = {delivery_id for delivery_id, _, _ in returns}
        soft = {delivery_id: at for delivery_id, kind, at in returns if kind == ReturnKind.SOFT}
        return [PastDelivery(delivery_id, sent_at, delivery_id in bounced, soft.get(delivery_id))
                for delivery_id, sent_at in sent if sent_at is not None]

    async def record_returned(self, record: ReturnRecord, *,
                              suppress: SubscriptionStatus | None = None) -> bool:
        """Store a returned message, mark its delivery and suppress its address, all in one
        transaction; False (and nothing changed) when its fingerprint was applied before.

        The fingerprint's unique key, not a check in Python, makes a replay harmless: an
        MTA delivering twice, or a webhook retried while the first is being applied.
        `suppress` (BOUNCED or COMPLAINED) applies to every subscription of the address
        across the install, and starts a new token generation (old confirmation links die).
        """
        try:
            async with self.session.begin() as s:
                s.add(ReturnedMessage(**{**asdict(record), "kind": ReturnKind(record.kind)}))
                await s.flush()  # a duplicate fingerprint fails here, before any change
                if record.delivery_id is not None and record.kind in _ACTING:
                    await s.execute(update(Delivery).where(Delivery.id == record.delivery_id)
                                    .values(returned_kind=record.kind,
                                            returned_at=record.received_at,
                                            returned_reply=record.diagnostic or record.reason))
                if suppress is not None and record.address:
                    await s.execute(update(Subscription).where(
                        Subscription.subscriber_id.in_(select(Subscriber.id).where(
                            Subscriber.email == record.address)),
                        Subscription.status.in_(_SUPPRESSIBLE[suppress]),
                    ).values(status=suppress, bounced_at=record.received_at,
                             token_generation=Subscription.token_generation + 1))
        except IntegrityError:
            if await self.returned_seen(record.fingerprint):
                return False
            raise
        return True

    async def returned_messages(self, newsletter: str | None = None, *, limit: int = 200
                                ) -> list[ReturnedRow]:
        """Returned messages newest first (of `newsletter`'s sends, when given)."""
        query = (select(ReturnedMessage.received_at, ReturnedMessage.source,
                        ReturnedMessage.kind, ReturnedMessage.address,
                        ReturnedMessage.status_code, ReturnedMessage.diagnostic,
                        ReturnedMessage.reason, Send.newsletter, Send.slug)
                 .outerjoin(Send, Send.id == ReturnedMessage.send_id)
                 .order_by(ReturnedMessage.received_at.desc(), ReturnedMessage.id.desc())
                 .limit(limit))
        if newsletter:
            query = query.where(Send.newsletter == newsletter)
        async with self.session() as s:
            return [ReturnedRow(at, source, str(kind), address, status, diagnostic or "",
                                reason or "", n, slug)
                    for at, source, kind, address, status, diagnostic, reason, n, slug
                    in (await s.execute(query)).all()]

    async def bounced_later(self, send_id: int, limit: int = 20
                            ) -> list[tuple[str, str, str]]:
        """(address, kind, the remote server's text) of the deliveries of a send that the
        relay took and that bounced (or were complained about) later, newest first."""
        async with self.session() as s:
            rows = await s.execute(
                select(Delivery.email, Delivery.returned_kind, Delivery.returned_reply)
                .where(Delivery.send_id == send_id, Delivery.returned_kind.is_not(None))
                .order_by(Delivery.returned_at.desc()).limit(limit))
            return [(email, str(kind), reply or "") for email, kind, reply in rows.all()]

    async def return_counts(self, send_id: int) -> dict[str, int]:
        """Deliveries of a send that something came back for, by kind (one per delivery
        and kind: a reader reporting spam twice is one complaint)."""
        async with self.session() as s:
            rows = await s.execute(
                select(ReturnedMessage.kind,
                       func.count(func.distinct(ReturnedMessage.delivery_id)))
                .where(ReturnedMessage.send_id == send_id,
                       ReturnedMessage.kind.in_(_ACTING))
                .group_by(ReturnedMessage.kind))
            return {str(kind): n for kind, n in rows.all()}

    async def returned_totals(self) -> dict[tuple[str, str], int]:
        """Returned messages per (newsletter, kind) over every send, for /metrics."""
        async with self.session() as s:
            rows = await s.execute(
                select(Send.newsletter, ReturnedMessage.kind, func.count())
                .join(Send, Send.id == ReturnedMessage.send_id)
                .group_by(Send.newsletter, ReturnedMessage.kind))
            return {(n, str(kind)): c for n, kind, c in rows.all()}
