"""Queries that report on sends: `mailer status`, the public archive and /metrics."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select

from mailer.rows import ArchivedIssue, SendRow
from mailer.states import DeliveryStatus, SendKind, SendStatus, SubscriptionStatus
from mailer.store._base import StoreBase
from mailer.store.models import Delivery, Send, Subscription
from mailer.store.torows import send_row


class ReportQueries(StoreBase):
    """Read-only views of sends and their deliveries, for people and for Prometheus."""

    # -- mailer status -------------------------------------------------------------------------

    async def sends(self, newsletter: str | None = None) -> list[SendRow]:
        """Every send of an issue (of `newsletter`, when given), oldest first."""
        async with self.session() as s:
            query = select(Send).where(Send.kind == SendKind.ISSUE).order_by(Send.id)
            if newsletter:
                query = query.where(Send.newsletter == newsletter)
            return [send_row(send) for send in (await s.execute(query)).scalars()]

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

    async def relay_counts(self, send_id: int) -> dict[str, int]:
        """Messages of a send delivered through each relay (host:port)."""
        async with self.session() as s:
            rows = await s.execute(
                select(Delivery.relay, func.count())
                .where(Delivery.send_id == send_id, Delivery.status == DeliveryStatus.SENT,
                       Delivery.relay.is_not(None))
                .group_by(Delivery.relay).order_by(Delivery.relay))
            return {relay: n for relay, n in rows.all() if relay is not None}

    async def possible_duplicates(self, send_id: int) -> int:
        """Deliveries of a send resent after a cut with no reply: maybe had twice."""
        async with self.session() as s:
            return int((await s.execute(select(func.count()).select_from(Delivery).where(
                Delivery.send_id == send_id, Delivery.possible_duplicate))).scalar_one())

    # -- archive and metrics -----------------------------------------------------------------

    async def archived_issues(self, newsletter: str) -> list[ArchivedIssue]:
        """The issues of a newsletter that went out, newest first, without their bodies.

        Every send counts, finished or not: once the first copy left, the issue is public.
        """
        async with self.session() as s:
            rows = await s.execute(
                select(Send.slug, Send.subject, Send.preheader, Send.created_at)
                .where(Send.newsletter == newsletter, Send.kind == SendKind.ISSUE)
                .order_by(Send.created_at.desc(), Send.id.desc())
            )
            return [ArchivedIssue(*row) for row in rows.all()]

    async def archived_issue(self, newsletter: str, slug: str) -> SendRow | None:
        """The send of one issue, for its web view (None: never sent, or not an issue)."""
        async with self.session() as s:
            send = (await s.execute(select(Send).where(
                Send.newsletter == newsletter, Send.slug == slug,
                Send.kind == SendKind.ISSUE))).scalar_one_or_none()
            return None if send is None else send_row(send)

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

    async def possible_duplicate_totals(self) -> dict[str, int]:
        """Possible duplicates per newsletter over every send."""
        async with self.session() as s:
            rows = await s.execute(
                select(Send.newsletter, func.count()).select_from(Delivery)
                .join(Send, Send.id == Delivery.send_id)
                .where(Delivery.possible_duplicate).group_by(Send.newsletter))
            return {n: c for n, c in rows.all()}

    async def send_durations(self) -> list[tuple[str, float]]:
        """(newsletter, seconds from queueing to the last outcome) of every finished send.

        The difference is taken in Python: SQLite and PostgreSQL subtract dates differently.
        """
        async with self.session() as s:
            rows = await s.execute(
                select(Send.newsletter, Send.created_at, Send.finished_at)
                .where(Send.status == SendStatus.FINISHED, Send.finished_at.is_not(None),
                       Send.kind == SendKind.ISSUE))
            return [(n, max(0.0, (end - start).total_seconds()))
                    for n, start, end in rows.all() if end is not None]
