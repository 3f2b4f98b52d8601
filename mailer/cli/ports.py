"""What the `status` and `subscribers` commands need from the database: the narrow seams
they are written against (mailer.store.Store satisfies both; each method is documented
where the store defines it)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from mailer.rows import DueWindow, SendRow, SubscriberRow
from mailer.states import DeliveryStatus, SubscriptionStatus
from mailer.store.automations import AutomaticCounts
from mailer.subscriptions import SubscriberStore
from mailer.subscriptions.manage import ErasedStore


class StatusStore(Protocol):
    """`mailer status`: the last send per newsletter, every send, its rate and failures."""

    async def latest_send(self, newsletter: str) -> SendRow | None: ...

    async def sends(self, newsletter: str | None = None) -> list[SendRow]: ...

    async def delivery_counts(self, send_id: int) -> dict[DeliveryStatus, int]: ...

    async def sent_since(self, send_id: int, since: datetime) -> int: ...

    async def failures(self, send_id: int, limit: int = 20
                       ) -> Sequence[tuple[str, int | None, str]]: ...

    async def relay_counts(self, send_id: int) -> dict[str, int]: ...

    async def bounced_later(self, send_id: int, limit: int = 20
                            ) -> list[tuple[str, str, str]]: ...

    async def possible_duplicates(self, send_id: int) -> int: ...

    async def return_counts(self, send_id: int) -> dict[str, int]: ...

    async def automatic_sends(self, newsletter: str) -> list[SendRow]: ...

    async def automatic_counts(self, send: SendRow, window: DueWindow) -> AutomaticCounts: ...


class ListStore(SubscriberStore, ErasedStore, Protocol):
    """`mailer subscribers …`: add, import, export, list and remove."""

    async def import_subscribers(
        self, rows: Iterable[tuple[str, str] | tuple[str, str, Mapping[str, str]]], *,
        newsletter: str, confirmed: bool, welcome: bool = False,
        now: datetime | None = None) -> int: ...

    async def attribute_keys(self, *, newsletter: str,
                             status: SubscriptionStatus | None = None) -> list[str]: ...

    def subscribers(self, *, newsletter: str, status: SubscriptionStatus | None = None
                    ) -> AsyncIterator[SubscriberRow]: ...

    async def remove_subscriber(self, email: str, *, newsletter: str) -> bool: ...
