"""What every group of queries shares: the engine, its sessions and the dialect's INSERT."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker


class StoreBase:
    engine: AsyncEngine
    session: async_sessionmaker[AsyncSession]
    # sqlite's or PostgreSQL's insert(): both have on_conflict_do_nothing, typed apart.
    _insert: Any
