"""`mailer worker`: a sender-only process that delivers every open send, for scale-out.

Any number of workers, on one machine or several, can share one send on PostgreSQL: the
deliveries are claimed with FOR UPDATE SKIP LOCKED, so no two workers take the same row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from datetime import datetime
from pathlib import Path

from mailer import logs
from mailer.config import Config
from mailer.rows import DeliveryCounts, Outcome, SendRow
from mailer.sending.prepare import Skip, prepare
from mailer.sending.report import Report, deliver_with_report
from mailer.sending.sender import Sender
from mailer.states import utcnow
from mailer.store import Store

log = logging.getLogger("mailer.worker")


async def run_worker(config: Config, *, once: bool = False, poll_seconds: float = 2.0) -> int:
    """Deliver open sends until stopped (SIGTERM/SIGINT), or with `once` until none is open.

    A first signal lets in-flight messages finish and be recorded; a second exits at once
    (what was in flight is settled by the next start, see sending.recovery).
    Returns the exit code.
    """
    logs.configure(json_lines=config.settings.log_json)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    sender_ref: list[Sender] = []

    def on_signal() -> None:
        if stopping.is_set():
            os._exit(130)  # second signal: the author means it
        log.info("stopping: letting in-flight messages finish")
        stopping.set()
        for sender in sender_ref:
            sender.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        async with (Store.open(config.settings.database_url) as store,
                    Sender(config, store) as sender):
            sender_ref.append(sender)
            while not stopping.is_set():
                if await _deliver_open_sends(config, store, sender, stopping):
                    # A pass that delivered ended only once its sends had nothing open
                    # (or were paused): look again at once for the next queued send,
                    # instead of idling a whole poll first (with --once that idle was the
                    # tail of every run).
                    continue
                if once:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), poll_seconds)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


async def _deliver_open_sends(config: Config, store: Store, sender: Sender,
                              stopping: asyncio.Event) -> bool:
    """One pass over the newsletters; True if any send had work."""
    worked = False
    for newsletter in config.newsletters.values():
        if stopping.is_set():
            break
        # Only sends already queued: a paused one waits for its author (`mailer send-now`
        # goes on with it), and new issues are queued by `send-now --queue` or the daemon.
        ready = await prepare(config, newsletter, store, now=utcnow(), resume_only=True,
                              take_paused=False)
        if isinstance(ready, Skip) or await store.open_deliveries(ready.send.id) == 0:
            continue
        worked = True
        await deliver_with_report(sender, ready.send, newsletter, _WorkerLog(newsletter.id))
    return worked


async def queue_issue(config: Config, newsletter_id: str, *, now: datetime,
                      issue_path: Path | None, force: bool = False) -> str:
    """Queue the due (or given) issue for the workers without sending from here; an issue
    Gmail would clip is refused unless `force`, as `send-now` refuses it.

    Raises:
        ContentError: the issue file is broken, or Gmail would clip it.
        InputError: the given issue was already sent, or another send is not finished.
    """
    newsletter = config.newsletter(newsletter_id)
    async with Store.open(config.settings.database_url) as store:
        result = await prepare(config, newsletter, store, now=now, issue_path=issue_path,
                               force=force)
        if isinstance(result, Skip):
            error = result.error()
            if error is not None:
                raise error
            return f"nothing to queue: {newsletter.id} has no due issue"
        open_count = await store.open_deliveries(result.send.id)
        return (f"queued {newsletter.id}/{result.send.slug}: {open_count} message(s) open; "
                "`mailer worker` or `mailer run` delivers them")


class _WorkerLog:
    """The delivery report as the worker's log lines (a DeliveryObserver)."""

    def __init__(self, newsletter_id: str) -> None:
        self.newsletter_id = newsletter_id

    def started(self, send: SendRow, counts: DeliveryCounts) -> None:
        log.info("delivering", extra={"newsletter": self.newsletter_id, "slug": send.slug,
                                      "open": counts.open})

    def delivered(self, outcome: Outcome) -> None:
        pass  # the daemon logs progress; a worker is one of many, its total says enough

    def finished(self, report: Report) -> None:
        tally = report.tally
        # What this worker did; the send's own totals are in `mailer status`.
        log.info("delivered by this worker", extra={
            "newsletter": self.newsletter_id, "slug": report.send.slug, "sent_here": tally.sent,
            "failed_here": tally.failed, "retried_here": tally.retried,
            "unknown_here": tally.unknown, "open": report.counts.open})
