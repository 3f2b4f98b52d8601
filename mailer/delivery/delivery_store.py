"""What the delivery pipeline needs from the database: the narrow seam it is written against.

The pipeline owns these Protocols, as listmonk's manager owns its Store interface: they list
exactly the queries a send calls, typed with the plain rows of mailer.rows, so the pipeline
imports no database library. mailer.store.Store satisfies DeliveryStore structurally, and
its journal writers (mailer.store.journal) satisfy DeliveryLogWriter; mypy checks both
where the Sender hands the Store to the Dispatcher.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from mailer.rows import Outcome, QuotaUse, Recipient, SendRow


class DeliveryLogWriter(Protocol):
    """The one durable write around every SMTP transaction (see mailer.delivery.journal)."""

    async def write(self, *, sending: Sequence[int], outcomes: Sequence[Outcome]) -> set[int]:
        """Record `outcomes` and mark `sending` SENDING, durably; the ids marked."""
        ...


class DeliveryStore(Protocol):
    """The queries of one send's delivery, each documented where mailer.store defines it."""

    async def get_send(self, send_id: int) -> SendRow: ...

    async def claim_deliveries(self, send_id: int, *, worker_id: str, limit: int,
                               now: datetime) -> list[Recipient]: ...

    async def queue_more(self, send_id: int) -> int: ...

    async def open_deliveries(self, send_id: int) -> int: ...

    async def live_workers(self, *, since: datetime) -> int: ...

    async def quota_use(self, *, since: datetime) -> QuotaUse: ...

    async def release_claims(self, worker_id: str, delivery_ids: Sequence[int]) -> None: ...

    def journal_writer(self, *, worker_id: str, bounce_limit: int
                       ) -> AbstractAsyncContextManager[DeliveryLogWriter]: ...
