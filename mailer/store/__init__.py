"""All SQL of mailer: one named async method per statement, each saying why it is shaped so.

`Store` is the one object the rest of mailer talks to; its queries are grouped by the
table they are about (subscribers, sends, deliveries), one module each.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from mailer.rows import ArchivedIssue, Outcome, QuotaUse, Recipient, SubscriberRow
from mailer.store import db
from mailer.store.deliveries import DeliveryQueries
from mailer.store.sends import SendQueries
from mailer.store.subscribers import SubscriberQueries

__all__ = ["ArchivedIssue", "Outcome", "QuotaUse", "Recipient", "Store", "SubscriberRow"]


class Store(SubscriberQueries, SendQueries, DeliveryQueries):
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
    async def open(cls, database_url: str) -> Store:
        """Connect and migrate the schema to the newest version."""
        engine = db.create_engine(database_url)
        await db.migrate(engine)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()
