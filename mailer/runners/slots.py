"""What running a newsletter's slot does: finish an interrupted send, then send the due issue.

The scheduler (mailer.runners.scheduler) decides when; mailer.sending.prepare decides what,
and the database makes it safe to decide twice. This runs the slots and logs what happens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from mailer.config import Config, Newsletter
from mailer.content import Issue
from mailer.content.fields import public_text
from mailer.errors import MailerError

# Re-exported while tests/test_scheduler.py imports it from here (it moved to prepare).
from mailer.rows import DeliveryCounts, Outcome, SendRow
from mailer.schedule import Clock, last_slot
from mailer.sending.prepare import Skip, SkipReason, prepare
from mailer.sending.recovery import recover_dead_workers
from mailer.sending.report import Report, deliver_with_report
from mailer.sending.sender import Sender
from mailer.states import DeliveryStatus, SendStatus
from mailer.store import Store

log = logging.getLogger("mailer.scheduler")  # one logger for the daemon's schedule


@dataclass(frozen=True)
class LoadedFiles:
    """What the daemon runs on: the configuration and every newsletter's parsed issues and
    automatic emails, as last loaded without an error."""

    config: Config
    issues: Mapping[str, Sequence[Issue]]
    fingerprint: tuple[object, ...] = ()
    automatic: Mapping[str, Sequence[Issue]] = field(default_factory=dict)

    @property
    def catch_up(self) -> timedelta:
        return timedelta(hours=self.config.settings.catch_up_hours)


class SlotRunner:
    """Runs newsletters' slots one at a time. A slot: finish an interrupted send first, then
    send the due issue unless this slot already had one. Running a slot twice, here or in
    another daemon on the same database, sends nothing twice: the database decides."""

    def __init__(self, store: Store, sender: Sender, clock: Clock, *,
                 snapshot: Callable[[], LoadedFiles],
                 refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        self.store = store
        self.sender = sender
        self.clock = clock
        self.snapshot = snapshot
        self.refresh = refresh
        self.stopping = False
        self._wanted: dict[str, None] = {}  # an ordered set: each newsletter queued once
        self._wake = asyncio.Event()

    def request(self, newsletter_id: str) -> None:
        """Queue a run of the newsletter's latest slot (once, however often it is asked)."""
        if not self.stopping:
            self._wanted[newsletter_id] = None
            self._wake.set()

    def stop(self) -> None:
        """Start no new run or message; what is in flight finishes and is recorded."""
        self.stopping = True
        self.sender.stop()
        self._wake.set()

    async def run_until_stopped(self) -> None:
        """Run queued slots until stop(); a failed slot is logged and the next one runs."""
        while not self.stopping:
            if not self._wanted:
                self._wake.clear()
                await self._wake.wait()
                continue
            newsletter_id = next(iter(self._wanted))
            del self._wanted[newsletter_id]
            try:
                await self.run_slot(newsletter_id)
            except MailerError as exc:
                log.error("slot failed", extra={"newsletter": newsletter_id, "error": str(exc)})
            except Exception as exc:  # a database outage must not end the daemon
                log.exception("slot failed", extra={"newsletter": newsletter_id,
                                                    "error": repr(exc)})

    async def run_slot(self, newsletter_id: str) -> None:
        """Finish interrupted sends of the newsletter, then give its latest slot its issue."""
        if self.refresh is not None:
            await self.refresh()
        snap = self.snapshot()
        newsletter = snap.config.newsletters.get(newsletter_id)
        if newsletter is None:
            return  # removed by a reload meanwhile
        await recover_dead_workers(self.store)
        seen: set[int] = set()
        while not self.stopping:
            now = self.clock.now()
            slot = (last_slot(newsletter.schedule, now, within=snap.catch_up)
                    if newsletter.schedule is not None else None)
            fields: dict[str, Any] = {"newsletter": newsletter_id}
            if slot is not None:
                fields["slot"] = slot.astimezone(newsletter.tz).isoformat()
                if now - slot > timedelta(minutes=1):
                    fields["late_by"] = str(now - slot).split(".")[0]
            # Without a slot in the catch-up window only an interrupted send is finished.
            result = await prepare(
                snap.config, newsletter, self.store, now=now,
                issues=snap.issues.get(newsletter_id, ()),
                slot_start=self.clock.to_real(slot) if slot is not None else None,
                resume_only=slot is None, take_paused=False)
            if isinstance(result, Skip):
                _log_skip(result, fields)
                return
            if result.send.id in seen:
                return  # stopped or interrupted again: the next start goes on with it
            seen.add(result.send.id)
            if result.resumed:
                log.info("send resumed", extra={"newsletter": newsletter_id,
                                                "slug": result.send.slug})
            else:
                # Personal fields show their defaults: a log is no place for one reader's.
                log.info("issue due", extra={**fields, "slug": result.send.slug,
                                             "subject": public_text(result.send.subject)})
            await self._deliver(result.send, newsletter)
            if not result.resumed:
                return  # the slot had its issue

    async def _deliver(self, send: SendRow, newsletter: Newsletter) -> None:
        fields = {"newsletter": newsletter.id, "slug": send.slug}
        if self.stopping:
            log.info("send left for the next start", extra=fields)
            return
        every = self.sender.config.settings.log_progress_every
        await deliver_with_report(self.sender, send, newsletter, _SlotLog(fields, every))


def _log_skip(skip: Skip, fields: Mapping[str, Any]) -> None:
    if skip.reason is SkipReason.NOTHING_TO_RESUME:
        return  # no slot to serve and nothing interrupted: nothing to say
    if skip.reason is SkipReason.PAUSED:
        # Paused for too many failures: the author fixes the relay and goes on.
        log.warning("send paused: new issues wait until it is finished", extra={
            "newsletter": skip.newsletter, "slug": skip.slug, "reason": skip.detail,
            "to_go_on": f"mailer send-now {skip.newsletter}"})
    elif skip.reason is SkipReason.SLOT_SERVED:
        log.info("slot already had its issue", extra={**fields, "slug": skip.slug})
    elif skip.reason is SkipReason.CLIPPED:
        log.warning("slot skipped: " + skip.reason.value, extra={
            **fields, "slug": skip.slug, "reason": skip.detail,
            "to_send": f"mailer send-now {skip.newsletter} --issue {skip.path} --force"})
    else:
        log.info("slot skipped: " + skip.reason.value, extra={**fields, **skip.fields})


class _SlotLog:
    """The delivery report as the daemon's log lines (a DeliveryObserver)."""

    def __init__(self, fields: Mapping[str, Any], every: int) -> None:
        self.fields = fields
        self.every = every
        self.total = 0
        self.done = 0

    def started(self, send: SendRow, counts: DeliveryCounts) -> None:
        self.total, self.done = counts.total, counts.done
        log.info("send started", extra={**self.fields, "recipients": counts.total,
                                        "open": counts.open})

    def delivered(self, outcome: Outcome) -> None:
        if outcome.status != DeliveryStatus.PENDING:  # PENDING: a retry comes later
            self.done += 1
            if self.done % self.every == 0:
                log.info("progress", extra={**self.fields, "done": self.done, "of": self.total})

    def finished(self, report: Report) -> None:
        # sent_here: this process's share; the rest went out from other processes.
        tally = {**report.counts.settled(), "sent_here": report.tally.sent}
        still_open = report.counts.open
        if report.send.status == SendStatus.PAUSED:
            log.warning("send paused", extra={**self.fields, **tally, "open": still_open,
                                              "reason": report.send.pause_reason})
        elif still_open:
            log.warning("send interrupted: the rest goes out on the next start",
                        extra={**self.fields, **tally, "open": still_open})
        else:
            log.info("send finished", extra={**self.fields, **tally})
