"""Database engine, session factory and automatic migrations (SQLite by default, PostgreSQL too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from mailer.errors import ConfigError
from mailer.keys import create_private_file, make_private_dir

MIGRATIONS = Path(__file__).with_name("migrations")


def async_url(database_url: str) -> str:
    """Map the URLs users write (sqlite:///, postgresql://) to their asyncio drivers.

    Raises:
        ConfigError: for a database the project does not support.
    """
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    else:
        raise ConfigError(f"unsupported database {backend!r} (use sqlite or postgresql)",
                          field="settings.database_url")
    return url.render_as_string(hide_password=False)


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def sqlite_pragmas(dbapi_conn: Any, _record: Any = None) -> None:
    """Set up a new SQLite connection, the engine's or the journal's own (store.journal)."""
    # WAL lets the web endpoints read while a send writes; busy_timeout makes a second
    # process wait for the write lock instead of failing at once. synchronous=NORMAL
    # in WAL mode still survives a process crash (only a power loss can drop the
    # last commits), which is the failure we promise about.
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # 1 MB of page cache per connection instead of 2: mailer's queries walk indexes in
    # order, and with a list of a million the default filled every pooled connection's
    # cache, so memory grew with the list (bench/send.py shows the peak RSS).
    cursor.execute("PRAGMA cache_size=-1024")
    cursor.close()
    # Take over transaction control from the driver so every transaction can start with
    # BEGIN IMMEDIATE (see _sqlite_begin).
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    # A deferred transaction that reads and then writes cannot wait for the write lock
    # (SQLITE_BUSY at once, busy_timeout does not apply); IMMEDIATE takes the lock first.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_engine(database_url: str) -> AsyncEngine:
    """An async engine for the configured database; creates the SQLite file (0600) and its
    folder (0700) when they do not exist yet."""
    url = async_url(database_url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.query.get("uri"):
            # Every subscriber is in this file: made 0600 before SQLite opens it, which
            # then gives its -wal and -shm files the same mode; its folder 0700 if new.
            path = Path(parsed.database)
            make_private_dir(path.parent)
            create_private_file(path)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def head_revision() -> str:
    """The newest migration's revision. Revisions are numbered like their files (0003_…), so
    it is read off the file names: importing alembic costs a tenth of a second at every
    start, and is only needed when there is something to migrate."""
    return max(path.name.split("_", 1)[0] for path in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def _current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _upgrade(connection: Connection) -> None:
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration; run on every start, a no-op when current."""
    async with engine.begin() as conn:
        if await conn.run_sync(_current_revision) != head_revision():
            await conn.run_sync(_upgrade)


def unavailable(error: BaseException) -> bool:
    """Whether `error` says the database cannot be reached now (a server down or restarting,
    a network cut, a locked or missing file), as opposed to a mistake that would fail again:
    what a caller that can be retried later (an MTA pipe, an SMTP client) is told to retry.
    """
    if isinstance(error, OSError | TimeoutError):
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    # SQLAlchemy wraps the driver's refusal to connect (asyncpg's OSError, sqlite3's
    # "unable to open database file" or "database is locked") as OperationalError.
    return isinstance(error, OperationalError) or isinstance(error.__cause__, OSError)
