"""The daemon's automatic emails: a small periodic job that sends whoever is due now.

Every TICK_SECONDS, and at once when a reader confirms (the welcome email should not wait
a minute), it runs mailer.sending.automations.run_due on the daemon's clock with the
files as last loaded. Issues go first: the sender lets an issue interrupt an automatic
email, which goes on at the next tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from mailer.config import Newsletter
from mailer.rows import DeliveryCounts, Outcome, SendRow
from mailer.runners.slots import LoadedFiles
from mailer.schedule import Clock
from mailer.sending.automations import AutomationRun, DueEmail, Renders, run_due
from mailer.sending.report import Report
from mailer.sending.sender import Sender
from mailer.store import Store

log = logging.getLogger("mailer.automations")

TICK_SECONDS = 60.0


class AutomationRunner:
    """`await runner.run_until_stopped()`; `request()` asks for a look now."""

    def __init__(self, store: Store, sender: Sender, clock: Clock, *,
                 snapshot: Callable[[], LoadedFiles], tick_seconds: float = TICK_SECONDS
                 ) -> None:
        self.store = store
        self.sender = sender
        self.clock = clock
        self.snapshot = snapshot
        self.tick_seconds = tick_seconds
        self.stopping = False
        self._wake = asyncio.Event()
        self._said: set[str] = set()  # errors already logged, said once each

    def request(self, newsletter_id: str | None = None) -> None:
        """Look for due automatic emails now (a reader just confirmed)."""
        self._wake.set()

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()

    async def run_until_stopped(self) -> None:
        renders, first = Renders(), True
        while not self.stopping:
            self._wake.clear()
            try:
                run = await self.run_once(renders)
                if first or run.reports:
                    # Said after the first look (what a restart found due has gone out) and
                    # whenever something was due; a quiet minute says nothing.
                    log.info("automatic emails looked at", extra={
                        "delivered": len(run.reports), "clock": self.clock.now().isoformat()})
                first = False
            except Exception as exc:  # a database outage must not end the daemon
                log.exception("automatic emails failed", extra={"error": repr(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_seconds)

    async def run_once(self, renders: Renders) -> AutomationRun:
        """One look: queue and deliver what is due now; log each file that cannot go."""
        snap = self.snapshot()
        if not any(snap.automatic.values()):
            return AutomationRun()
        run = await run_due(snap.config, self.store, self.sender, snap.automatic,
                            now=self.clock.now(), renders=renders, observe=_AutomationLog,
                            take_paused=False)
        if not run.errors:
            self._said.clear()
        for error in run.errors:
            if str(error) not in self._said:
                self._said.add(str(error))
                log.error("automatic email not sent", extra={"error": str(error)})
        return run


class _AutomationLog:
    """One automatic email's delivery as log lines (a DeliveryObserver)."""

    def __init__(self, newsletter: Newsletter, due: DueEmail) -> None:
        self.fields: Mapping[str, Any] = {"newsletter": newsletter.id, "email": due.email.slug}

    def started(self, send: SendRow, counts: DeliveryCounts) -> None:
        pass

    def delivered(self, outcome: Outcome) -> None:
        pass

    def finished(self, report: Report) -> None:
        settled = {**report.counts.settled(), "open": report.counts.open}
        if report.tally.sent or report.tally.failed:
            log.info("automatic email delivered", extra={**self.fields, **settled})


__all__ = ["TICK_SECONDS", "AutomationRunner"]
