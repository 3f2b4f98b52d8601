"""The journal: when each delivery's state change becomes durable, shared by all connections.

One idea in two places, split by layer: here is *when* a write happens (a group commit that
all connections of a process wait on, and each connection's outcomes waiting to ride along
with its next SENDING mark); mailer.store.journal holds *what* is written (the
DeliveryLogWriter's SQL, on the database's own driver). They stay apart so that this side
imports no database library and the SQL stays with the rest of the store's.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from mailer.delivery.delivery_store import DeliveryLogWriter, DeliveryStore
from mailer.rows import Outcome

# Outcomes of transactions refused before their body (RCPT 4xx/5xx) wait at most this
# many for a SENDING mark to ride along with; the rows are still PENDING meanwhile.
MAX_PENDING_OUTCOMES = 16


@dataclass(frozen=True, slots=True)
class _Entry:
    sending: int | None
    outcomes: list[Outcome]
    future: asyncio.Future[bool]


class Journal:
    """Group commit of delivery state changes for all connections of a process.

    Each connection hands in the outcomes of its last messages with the id of the one
    whose body is about to leave, and waits; whatever arrived while the previous commit
    ran is written in the next one. So the database sees one commit per round of
    connections, not one per message, and yet no body leaves before its SENDING mark is
    durable.
    """

    def __init__(self, store: DeliveryStore, *, worker_id: str, bounce_limit: int) -> None:
        self._writer = store.journal_writer(worker_id=worker_id, bounce_limit=bounce_limit)
        self._open = contextlib.AsyncExitStack()
        self._waiting: list[_Entry] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Journal:
        writer = await self._open.enter_async_context(self._writer)
        self._task = asyncio.create_task(self._run(writer), name="mailer-journal")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._open.aclose()

    async def submit(self, *, sending: int | None = None,
                     outcomes: list[Outcome] | None = None) -> bool:
        """Durably record `outcomes` and mark `sending` SENDING; True if its body may leave."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Entry(sending, outcomes or [], future))
        self._wake.set()
        return await future

    async def _run(self, writer: DeliveryLogWriter) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._waiting = self._waiting, []
            if not batch:
                continue
            try:
                allowed = await writer.write(
                    sending=[e.sending for e in batch if e.sending is not None],
                    outcomes=[o for e in batch for o in e.outcomes])
            except Exception as exc:  # the waiting connections decide what to do with it
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(exc)
                continue
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_result(entry.sending in allowed)


class PendingOutcomes:
    """One connection's outcomes not yet in the database.

    They ride along with the connection's next SENDING mark, so at most one message per
    connection that reached its body is unrecorded at any time: after a crash, at most
    `concurrency` rows are unknown.
    """

    __slots__ = ("_journal", "outcomes")

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        """Keep `outcome` for the next hand-over."""
        self.outcomes.append(outcome)

    @property
    def full(self) -> bool:
        """Enough are waiting that they should not wait for a SENDING mark any longer."""
        return len(self.outcomes) >= MAX_PENDING_OUTCOMES

    async def hand_over(self, sending: int | None = None) -> bool:
        """Write what is pending, with the SENDING mark of `sending`; True if its body may
        leave (False too when there was nothing to write)."""
        outcomes, self.outcomes = self.outcomes, []
        if not outcomes and sending is None:
            return False
        return await self._journal.submit(sending=sending, outcomes=outcomes)
