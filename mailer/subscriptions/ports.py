"""What the subscription use cases need from the database: the narrow seam they are written
against (mailer.store.Store satisfies it; each method is documented where the store defines it)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Protocol

from mailer.rows import SignUp, SubscriptionRow


class SubscriberStore(Protocol):
    """The queries of double opt-in, confirming, leaving and `subscribers add`."""

    async def add_subscriber(self, email: str, *, newsletter: str, name: str = "",
                             confirmed: bool = False,
                             attributes: Mapping[str, str] | None = None
                             ) -> SubscriptionRow: ...

    async def mark_confirm_sent(self, subscription_id: int) -> None: ...

    async def subscription(self, subscription_id: int) -> SubscriptionRow | None: ...

    async def sign_up(self, email: str, *, newsletter: str, name: str, now: datetime,
                      every: timedelta, lease: timedelta) -> SignUp: ...

    async def confirm_email_sent(self, subscription_id: int, *, claimed_at: datetime
                                 ) -> None: ...

    async def release_confirm_email(self, subscription_id: int, *, claimed_at: datetime
                                    ) -> None: ...

    async def confirm_subscription(self, subscription_id: int, *, generation: int,
                                   now: datetime) -> SubscriptionRow | None: ...

    async def unsubscribe_subscription(self, subscription_id: int, *, now: datetime
                                       ) -> SubscriptionRow | None: ...

    async def resubscribe_subscription(self, subscription_id: int, *, now: datetime
                                       ) -> SubscriptionRow | None: ...
