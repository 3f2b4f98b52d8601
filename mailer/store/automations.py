"""Queries about automatic emails: their sends, and queueing each reader once as they fall due.

An automatic email is a send like an issue's (the same deliveries, claims, journal and
unique (send, subscription) key, so each reader gets it at most once whatever runs it), but
it never ends: readers are queued as their point in the sequence comes (mailer.content.
automations.due_window), run after run, by any process. `queued_at` is set from the start,
so nothing queues it chunk by chunk the way an issue is queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, exists, func, literal, select, update

from mailer.rows import DueWindow, SendRow
from mailer.states import DeliveryStatus, SendKind, SendStatus, SubscriptionStatus, utcnow
from mailer.store._base import StoreBase
from mailer.store.models import Delivery, Send, Subscriber, Subscription
from mailer.store.torows import send_row

# Readers queued per transaction, as for an issue (sends.QUEUE_CHUNK): a short write lock.
QUEUE_CHUNK = 2000


@dataclass(frozen=True)
class AutomaticCounts:
    """One automatic email's readers: delivered, failed, and still to come (queued or not
    yet due), as `mailer status` shows them."""

    sent: int
    failed: int
    queued: int  # pending or on its way
    waiting: int  # confirmed readers it is for and not queued yet (due later, or due now
    # and waiting for the next run)


def _in_sequence(newsletter: str, window: DueWindow) -> tuple[ColumnElement[bool], ...]:
    """Confirmed readers of `newsletter` the email is for, due now or later."""
    return (Subscription.newsletter == newsletter,
            Subscription.status == SubscriptionStatus.CONFIRMED,
            Subscription.sequence_from.is_not(None),
            Subscription.sequence_from >= window.not_before)


class AutomationQueries(StoreBase):
    """The sends of welcome emails and sequence steps, and their readers."""

    async def automatic_send(self, *, newsletter: str, slug: str, kind: SendKind, now: datetime,
                             subject: str, preheader: str, html: str, text: str, web_url: str,
                             ) -> SendRow:
        """The send of an automatic email, created the first time it is seen ready (`now`
        is then its first-seen time, on the daemon's clock) and otherwise brought up to
        date with the file: an edit reaches every reader not sent it yet."""
        content = dict(subject=subject, preheader=preheader, html=html, text=text,
                       web_url=web_url)
        async with self.session.begin() as s:
            # Two processes seeing it at once share one send: the unique (newsletter, slug).
            await s.execute(self._insert(Send).values(
                newsletter=newsletter, slug=slug, kind=kind, status=SendStatus.FINISHED,
                created_at=now, finished_at=now, queued_at=now, **content,
            ).on_conflict_do_nothing(index_elements=["newsletter", "slug"]))
            send = (await s.execute(select(Send).where(
                Send.newsletter == newsletter, Send.slug == slug))).scalar_one()
            if send.kind != kind:
                raise ValueError(f"{newsletter}/{slug} is stored as an {send.kind}")
            if any(getattr(send, key) != value for key, value in content.items()):
                await s.execute(update(Send).where(Send.id == send.id).values(**content))
                await s.refresh(send)
            return send_row(send)

    async def queue_due(self, send: SendRow, window: DueWindow) -> int:
        """Queue every reader of the send's newsletter in `window` who has no delivery of
        it yet; how many were queued. A finished send with readers queued is open again
        (SENDING); a paused one stays paused."""
        queued = 0
        while True:
            async with self.session.begin() as s:
                already = exists().where(Delivery.send_id == send.id,
                                         Delivery.subscription_id == Subscription.id)
                readers = (
                    select(literal(send.id), Subscription.id, Subscriber.email,
                           Subscriber.name, literal(DeliveryStatus.PENDING.value), literal(0),
                           literal(utcnow()))
                    .join(Subscriber, Subscriber.id == Subscription.subscriber_id)
                    .where(*_in_sequence(send.newsletter, window),
                           Subscription.sequence_from <= window.due_by, ~already)
                    .order_by(Subscription.id).limit(QUEUE_CHUNK))
                # ON CONFLICT: another process queueing the same reader at the same moment.
                ids = (await s.execute(self._insert(Delivery).from_select(
                    ["send_id", "subscription_id", "email", "name", "status", "attempts",
                     "created_at"], readers,
                ).on_conflict_do_nothing(index_elements=["send_id", "subscription_id"])
                 .returning(Delivery.id))).scalars().all()
                if ids:  # open again; a paused one stays paused for its author
                    await s.execute(update(Send).where(
                        Send.id == send.id, Send.status == SendStatus.FINISHED,
                    ).values(status=SendStatus.SENDING, finished_at=None))
            queued += len(ids)
            if len(ids) < QUEUE_CHUNK:
                return queued

    async def automatic_sends(self, newsletter: str) -> list[SendRow]:
        """Every automatic email of `newsletter` ever seen, by slug."""
        async with self.session() as s:
            rows = await s.execute(select(Send).where(
                Send.newsletter == newsletter, Send.kind != SendKind.ISSUE).order_by(Send.slug))
            return [send_row(send) for send in rows.scalars()]

    async def automatic_counts(self, send: SendRow, window: DueWindow) -> AutomaticCounts:
        """Sent, failed, queued and still waiting readers of an automatic email."""
        async with self.session() as s:
            by_state: dict[str, int] = {
                str(state): int(n) for state, n in (await s.execute(
                    select(Delivery.status, func.count()).where(Delivery.send_id == send.id)
                    .group_by(Delivery.status))).all()}
            already = exists().where(Delivery.send_id == send.id,
                                     Delivery.subscription_id == Subscription.id)
            waiting = (await s.execute(select(func.count()).select_from(Subscription).where(
                *_in_sequence(send.newsletter, window), ~already))).scalar_one()
        def n(state: DeliveryStatus) -> int:
            return by_state.get(state.value, 0)
        return AutomaticCounts(sent=n(DeliveryStatus.SENT), failed=n(DeliveryStatus.FAILED),
                               queued=n(DeliveryStatus.PENDING) + n(DeliveryStatus.SENDING),
                               waiting=int(waiting))
