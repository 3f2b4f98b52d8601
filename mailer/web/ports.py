"""What the web app needs from the database: the narrow seam its handlers are written
against (mailer.store.Store satisfies it; each method is documented where the store
defines it). The web reads; every write goes through mailer.subscriptions."""

from __future__ import annotations

from typing import Protocol

from mailer.rows import ArchivedIssue, SendRow
from mailer.states import DeliveryStatus, SubscriptionStatus
from mailer.subscriptions import SubscriberStore


class MetricsStore(Protocol):
    """The counts /metrics reads at every scrape."""

    async def subscription_counts(self) -> dict[tuple[str, SubscriptionStatus], int]: ...

    async def delivery_totals(self) -> dict[tuple[str, DeliveryStatus], int]: ...

    async def send_durations(self) -> list[tuple[str, float]]: ...

    async def possible_duplicate_totals(self) -> dict[str, int]: ...

    async def returned_totals(self) -> dict[tuple[str, str], int]: ...


class WebStore(SubscriberStore, MetricsStore, Protocol):
    """The sign-up, confirm and unsubscribe endpoints, the archive and /metrics."""

    async def archived_issues(self, newsletter: str) -> list[ArchivedIssue]: ...

    async def archived_issue(self, newsletter: str, slug: str) -> SendRow | None: ...
