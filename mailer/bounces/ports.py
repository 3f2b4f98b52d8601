"""What applying a returned message needs from the database: the narrow seam it is written
against (mailer.store.Store satisfies it; each method is documented where the store defines it)."""

from __future__ import annotations

from typing import Protocol

from mailer.rows import PastDelivery, ReturnRecord, ReturnTarget
from mailer.states import SubscriptionStatus


class ReturnStore(Protocol):
    """Matching a returned message to its delivery, the soft bounce history, applying it."""

    async def return_target(self, *, delivery_id: int | None = None,
                            message_id: str | None = None,
                            email: str | None = None) -> ReturnTarget | None: ...

    async def returned_seen(self, fingerprint: str) -> bool: ...

    async def delivery_history(self, email: str) -> list[PastDelivery]: ...

    async def record_returned(self, record: ReturnRecord, *,
                              suppress: SubscriptionStatus | None = None) -> bool: ...
