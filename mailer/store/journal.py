"""The delivery log's writer: the one durable write of every SMTP transaction, on the
database's own driver.

This module says *what* is written; mailer.delivery.journal says *when* (the group commit
that all connections of a sending process share). The two stay in their own layers: this
is SQL, and the pipeline above imports no database library (it sees these writers through
its own DeliveryLogWriter Protocol in mailer.delivery.delivery_store, which they satisfy).

Every message costs one commit here (shared by whichever connections reach it together),
so this is the only SQL of mailer written for the driver instead of through SQLAlchemy,
whose async plumbing around these few statements cost a large part of the sender's CPU.
The statements are few and plain; each backend below says the same thing in its own
dialect, and the store's tests run both.

A write does three things in one transaction: record outcomes, count permanent failures
towards each subscriber's bounce limit, and mark deliveries SENDING (only those this
worker still holds, which it returns).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Protocol

from mailer.rows import Outcome
from mailer.states import DeliveryStatus, SubscriptionStatus, utcnow
from mailer.store.db import sqlite_pragmas

SENDING, PENDING = DeliveryStatus.SENDING.value, DeliveryStatus.PENDING.value
CONFIRMED, BOUNCED = SubscriptionStatus.CONFIRMED.value, SubscriptionStatus.BOUNCED.value

# coalesce: a NULL keeps what the row has (a retry keeps no Message-ID, a success keeps
# its last retry time). data_started_at is cleared: a retry is a new transaction. Once a
# possible duplicate, always one.
_RECORD_OUTCOME = """
UPDATE deliveries SET status = {}, smtp_code = {}, smtp_reply = {},
    message_id = coalesce({}, message_id), sent_at = coalesce({}, sent_at),
    next_attempt_at = coalesce({}, next_attempt_at), attempts = attempts + 1,
    relay = coalesce({}, relay), possible_duplicate = (possible_duplicate OR {}),
    claimed_by = NULL, data_started_at = NULL, updated_at = {}
WHERE id = {}"""
_RECORD_PARAMETERS = 10


class DeliveryLogWriter(Protocol):
    """What both backends' writers offer (the store's side of the same shape)."""

    async def write(self, *, sending: Sequence[int], outcomes: Sequence[Outcome]) -> set[int]:
        """Record `outcomes` and mark `sending` SENDING, durably; the ids marked."""

    async def aclose(self) -> None: ...


def _outcome_row(o: Outcome, now: Any, stamp: Any) -> tuple[Any, ...]:
    sent = o.status == DeliveryStatus.SENT
    retry = stamp(o.retry_at) if o.retry_at is not None else None
    return (o.status.value, o.smtp_code, o.smtp_reply, o.message_id if sent else None,
            now if sent else None, retry, o.relay, o.possible_duplicate, now, o.delivery_id)


def _sqlite_time(moment: datetime) -> str:
    # The form SQLAlchemy's SQLite DATETIME stores (UTC, no zone), so both read alike.
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteDeliveryLog:
    """sqlite3 on one thread of its own: a write is one hop to it and back."""

    def __init__(self, path: str, *, worker_id: str, bounce_limit: int) -> None:
        self._path = path
        self._worker_id = worker_id
        self._bounce_limit = bounce_limit
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mailer-journal")
        self._db: sqlite3.Connection | None = None
        self._record = _RECORD_OUTCOME.format(*["?"] * _RECORD_PARAMETERS)

    async def write(self, *, sending: Sequence[int], outcomes: Sequence[Outcome]) -> set[int]:
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._write, list(sending), list(outcomes))

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, check_same_thread=False)
        sqlite_pragmas(db)  # the engine's: lock waits, durability, explicit transactions
        # It only updates rows by primary key: a smaller page cache than the engine's does.
        db.execute("PRAGMA cache_size=-256")
        return db

    def _write(self, sending: list[int], outcomes: list[Outcome]) -> set[int]:
        if self._db is None:
            self._db = self._connect()
        db = self._db
        now = _sqlite_time(utcnow())
        db.execute("BEGIN IMMEDIATE")
        try:
            if outcomes:
                db.executemany(self._record, [_outcome_row(o, now, _sqlite_time)
                                              for o in outcomes])
            bounced = [o.delivery_id for o in outcomes if o.bounce]
            if bounced:
                marks = ",".join("?" * len(bounced))
                ids = f"SELECT subscription_id FROM deliveries WHERE id IN ({marks})"
                db.execute(f"UPDATE subscriptions SET hard_bounces = hard_bounces + 1 "
                           f"WHERE id IN ({ids})", bounced)
                db.execute(f"UPDATE subscriptions SET status = ?, bounced_at = ? "
                           f"WHERE id IN ({ids}) AND hard_bounces >= ? AND status = ?",
                           [BOUNCED, now, *bounced, self._bounce_limit, CONFIRMED])
            allowed: set[int] = set()
            if sending:
                marks = ",".join("?" * len(sending))
                rows = db.execute(
                    f"UPDATE deliveries SET status = ?, data_started_at = ?, updated_at = ? "
                    f"WHERE id IN ({marks}) AND claimed_by = ? AND status = ? RETURNING id",
                    [SENDING, now, now, *sending, self._worker_id, PENDING]).fetchall()
                allowed = {row[0] for row in rows}
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return allowed

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown()


# The whole write as one statement: outcomes come in as arrays (unnest), so a group commit
# of any size is one round trip and one implicit transaction, instead of BEGIN, the
# outcomes, the bounce counts, the SENDING marks and COMMIT each waiting on the server.
# Data-modifying CTEs all see the rows as they were when the statement began: a row may be
# changed by one part only (PostgresDeliveryLog.write sends repeated ids the long way).
_PG_WRITE = """
WITH recorded AS (
    UPDATE deliveries AS d SET status = o.status, smtp_code = o.smtp_code,
        smtp_reply = o.smtp_reply, message_id = coalesce(o.message_id, d.message_id),
        sent_at = coalesce(o.sent_at, d.sent_at),
        next_attempt_at = coalesce(o.next_attempt_at, d.next_attempt_at),
        attempts = d.attempts + 1, relay = coalesce(o.relay, d.relay),
        possible_duplicate = (d.possible_duplicate OR o.possible_duplicate),
        claimed_by = NULL, data_started_at = NULL, updated_at = $1::timestamptz
    FROM unnest($2::bigint[], $3::text[], $4::int[], $5::text[], $6::text[],
                $7::timestamptz[], $8::timestamptz[], $9::text[], $10::bool[])
        AS o(id, status, smtp_code, smtp_reply, message_id, sent_at, next_attempt_at, relay,
             possible_duplicate)
    WHERE d.id = o.id
), bounced AS (
    UPDATE subscriptions AS s SET hard_bounces = s.hard_bounces + 1,
        status = CASE WHEN s.hard_bounces + 1 >= $11 AND s.status = $12
                      THEN $13 ELSE s.status END,
        bounced_at = CASE WHEN s.hard_bounces + 1 >= $11 AND s.status = $12
                          THEN $1::timestamptz ELSE s.bounced_at END
    FROM deliveries AS b WHERE b.id = ANY($14::bigint[]) AND s.id = b.subscription_id
)
UPDATE deliveries SET status = $15, data_started_at = $1::timestamptz,
    updated_at = $1::timestamptz
WHERE id = ANY($16::bigint[]) AND claimed_by = $17 AND status = $18
RETURNING id"""


class PostgresDeliveryLog:
    """asyncpg, on one connection borrowed from the engine's pool for the whole send.

    Every write commits synchronously (the server's default, kept on purpose): a SENDING
    mark must be durable before the body leaves, and a SENT row must survive a crash of
    the database server once the SMTP server has acknowledged the message, so neither
    may ride on an asynchronous commit.
    """

    def __init__(self, connection: Any, *, worker_id: str, bounce_limit: int) -> None:
        self._db = connection  # asyncpg.Connection
        self._worker_id = worker_id
        self._bounce_limit = bounce_limit
        self._statement: Any = None  # asyncpg.PreparedStatement: parsed once per send
        self._record = _RECORD_OUTCOME.format(
            *[f"${n}" for n in range(1, _RECORD_PARAMETERS + 1)])

    async def write(self, *, sending: Sequence[int], outcomes: Sequence[Outcome]) -> set[int]:
        ids = [o.delivery_id for o in outcomes]
        if len(set(ids)) < len(ids) or not set(ids).isdisjoint(sending):
            # One statement would change such a row once; in steps, each change lands.
            return await self._write_in_steps(sending, outcomes)
        if self._statement is None:
            self._statement = await self._db.prepare(_PG_WRITE)
        now = utcnow()
        rows = [_outcome_row(o, now, _same) for o in outcomes]
        # _outcome_row's order: status, code, reply, message_id, sent_at, retry, relay,
        # possible_duplicate, updated_at (the statement's $1), id.
        columns = list(zip(*rows, strict=True)) if rows else [()] * _RECORD_PARAMETERS
        status, code, reply, message_id, sent_at, retry, relay, duplicate, _, id_ = columns
        marked = await self._statement.fetch(
            now, list(id_), list(status), list(code), list(reply), list(message_id),
            list(sent_at), list(retry), list(relay), list(duplicate),
            self._bounce_limit, CONFIRMED, BOUNCED, [o.delivery_id for o in outcomes if o.bounce],
            SENDING, list(sending), self._worker_id, PENDING)
        return {row[0] for row in marked}

    async def _write_in_steps(self, sending: Sequence[int],
                              outcomes: Sequence[Outcome]) -> set[int]:
        now = utcnow()
        allowed: set[int] = set()
        async with self._db.transaction():
            if outcomes:
                await self._db.executemany(self._record, [_outcome_row(o, now, _same)
                                                          for o in outcomes])
            bounced = [o.delivery_id for o in outcomes if o.bounce]
            if bounced:
                ids = "SELECT subscription_id FROM deliveries WHERE id = ANY($1::bigint[])"
                await self._db.execute(f"UPDATE subscriptions SET hard_bounces = "
                                       f"hard_bounces + 1 WHERE id IN ({ids})", bounced)
                await self._db.execute(
                    f"UPDATE subscriptions SET status = $2, bounced_at = $3 WHERE id IN "
                    f"({ids}) AND hard_bounces >= $4 AND status = $5",
                    bounced, BOUNCED, now, self._bounce_limit, CONFIRMED)
            if sending:
                rows = await self._db.fetch(
                    "UPDATE deliveries SET status = $1, data_started_at = $2, updated_at = $2 "
                    "WHERE id = ANY($3::bigint[]) AND claimed_by = $4 AND status = $5 "
                    "RETURNING id", SENDING, now, list(sending), self._worker_id, PENDING)
                allowed = {row[0] for row in rows}
        return allowed

    async def aclose(self) -> None:
        pass  # the connection goes back to the pool with the store's AsyncConnection


def _same(moment: datetime) -> datetime:
    return moment

