"""All SQL of mailer: one named async method per statement, each saying why it is shaped so.

`Store` is the one object that holds the database; its queries are grouped by what they
are about (the list, the double opt-in, sends, reports, deliveries), one module each. It
hands out frozen rows (mailer.rows), never ORM objects. Each consumer names the part it
uses as a Protocol, which Store satisfies: web.ports.WebStore, subscriptions.ports.
SubscriberStore, cli.ports.StatusStore and ListStore, delivery.delivery_store.DeliveryStore.
"""

from __future__ import annotations

from collections.abc import Generator
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from mailer.rows import (
    ArchivedIssue,
    Outcome,
    QuotaUse,
    Recipient,
    SendRow,
    SubscriberRow,
    SubscriptionRow,
    WorkerRow,
)
from mailer.store import db
from mailer.store.automations import AutomationQueries
from mailer.store.deliveries import DeliveryQueries
from mailer.store.manage import ManageQueries
from mailer.store.reports import ReportQueries
from mailer.store.returns import ReturnQueries
from mailer.store.sends import SendQueries
from mailer.store.signups import SignUpQueries
from mailer.store.subscribers import SubscriberQueries

__all__ = ["ArchivedIssue", "Outcome", "QuotaUse", "Recipient", "SendRow", "Store",
           "SubscriberRow", "SubscriptionRow", "WorkerRow"]


class Store(SubscriberQueries, SignUpQueries, SendQueries, ReportQueries, DeliveryQueries,
            ReturnQueries, ManageQueries, AutomationQueries):
    """The database of one mailer installation; every query lives here."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.session = db.sessionmaker(engine)
        # Imported for the database in use only: each dialect costs megabytes of memory.
        if db.is_sqlite(engine):
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert
            self._insert = sqlite_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as pg_insert
            self._insert = pg_insert

    @classmethod
    def open(cls, database_url: str) -> OpeningStore:
        """Connect and migrate the schema to the newest version.

        `async with Store.open(url) as store:` closes it on the way out; `await
        Store.open(url)` leaves closing to the caller (`await store.close()`).
        """
        return OpeningStore(cls, database_url)

    async def close(self) -> None:
        """Close every pooled connection; the store is unusable afterwards."""
        await self.engine.dispose()


class OpeningStore:
    """A store being opened: awaited it is the store, entered it is closed on exit."""

    def __init__(self, store_type: type[Store], database_url: str) -> None:
        self._store_type = store_type
        self._database_url = database_url
        self._store: Store | None = None

    async def _open(self) -> Store:
        engine = db.create_engine(self._database_url)
        try:
            await db.migrate(engine)
        except BaseException:
            await engine.dispose()
            raise
        return self._store_type(engine)

    def __await__(self) -> Generator[Any, None, Store]:
        return self._open().__await__()

    async def __aenter__(self) -> Store:
        self._store = await self._open()
        return self._store

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None
