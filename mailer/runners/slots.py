"""What running a newsletter's slot does: finish an interrupted send, then send the due issue.

The scheduler (mailer.runners.scheduler) decides when; this decides what, and the database makes
it safe to decide twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from mailer.config import Config, Newsletter
from mailer.content import Issue, pick_due_issue
from mailer.errors import MailerError
from mailer.runners.scheduler import Clock, last_slot
from mailer.sending.prepare import recover_dead_workers, start_or_resume_send
from mailer.sending.sender import Sender
from mailer.states import DeliveryStatus, SendStatus
from mailer.store import Outcome, Store
from mailer.store.models import Send

log = logging.getLogger("mailer.scheduler")  # one logger for the daemon's schedule


@dataclass(frozen=True)
class Snapshot:
    """What the daemon runs on: the configuration and every newsletter's parsed issues, as
    last loaded without an error."""

    config: Config
    issues: Mapping[str, Sequence[Issue]]
    fingerprint: tuple[object, ...] = ()

    @property
    def catch_up(self) -> timedelta:
        return timedelta(hours=self.config.settings.catch_up_hours)


def skip_reasons(issues: Sequence[Issue], sent: Collection[str], now: datetime
                 ) -> dict[str, str]:
    """Why no issue is due: the unsent drafts, and the ready issues whose send_after is ahead."""
    unsent = [i for i in issues if i.slug not in sent]
    drafts = [i.slug for i in unsent if i.status == "draft"]
    waiting = [f"{i.slug} ({i.send_after.isoformat()})" for i in unsent
               if i.status == "ready" and i.send_after is not None and i.send_after > now]
    return {"drafts": ", ".join(drafts) or "none", "send_after_ahead": ", ".join(waiting) or "none"}


class SlotRunner:
    """Runs newsletters' slots one at a time. A slot: finish an interrupted send first, then
    send the due issue unless this slot already had one. Running a slot twice, here or in
    another daemon on the same database, sends nothing twice: the database decides."""

    def __init__(self, store: Store, sender: Sender, clock: Clock, *,
                 snapshot: Callable[[], Snapshot],
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
        if not await self._resume(newsletter) or newsletter.schedule is None:
            return
        now = self.clock.now()
        slot = last_slot(newsletter.schedule, now, within=snap.catch_up)
        if slot is None:
            return
        fields: dict[str, Any] = {"newsletter": newsletter_id,
                                  "slot": slot.astimezone(newsletter.tz).isoformat()}
        if now - slot > timedelta(minutes=1):
            fields["late_by"] = str(now - slot).split(".")[0]
        # Sent slugs first, the latest send second: a send another daemon starts between the
        # two reads then shows as this slot's, not as "no due issue".
        sent = await self.store.sent_slugs(newsletter_id)
        latest = await self.store.latest_send(newsletter_id)
        if latest is not None and latest.created_at >= self.clock.to_real(slot):
            log.info("slot already had its issue", extra={**fields, "slug": latest.slug})
            return
        issues = snap.issues.get(newsletter_id, ())
        due = pick_due_issue(issues, sent, now)
        if due is None:
            log.info("slot skipped: no due issue", extra={**fields,
                                                          **skip_reasons(issues, sent, now)})
            return
        send = await start_or_resume_send(snap.config, newsletter, self.store, now=now,
                                          issues=[due], slot_start=self.clock.to_real(slot))
        if send is None:
            log.info("slot skipped: another process sent its issue", extra=fields)
            return
        log.info("issue due", extra={**fields, "slug": send.slug, "subject": send.subject})
        await self._deliver(send, newsletter)

    async def _resume(self, newsletter: Newsletter) -> bool:
        # True once no send of the newsletter is unfinished: only then may a new one start.
        seen: set[int] = set()
        while not self.stopping:
            send = await self.store.unfinished_send(newsletter.id)
            if send is None:
                return True
            fields = {"newsletter": newsletter.id, "slug": send.slug}
            if send.status == SendStatus.PAUSED:
                # Paused for too many failures: the author fixes the relay and goes on.
                log.warning("send paused: new issues wait until it is finished", extra={
                    **fields, "reason": send.pause_reason,
                    "to_go_on": f"mailer send-now {newsletter.id}"})
                return False
            if send.id in seen:
                return False
            seen.add(send.id)
            log.info("send resumed", extra=fields)
            await self._deliver(send, newsletter)
        return False

    async def _deliver(self, send: Send, newsletter: Newsletter) -> None:
        fields = {"newsletter": newsletter.id, "slug": send.slug}
        if self.stopping:
            log.info("send left for the next start", extra=fields)
            return
        counts = await self.store.delivery_counts(send.id)
        total = sum(counts.values())
        log.info("send started", extra={**fields, "recipients": total,
                                        "open": counts[DeliveryStatus.PENDING]
                                        + counts[DeliveryStatus.SENDING]})
        every = self.sender.config.settings.log_progress_every
        done = [total - counts[DeliveryStatus.PENDING] - counts[DeliveryStatus.SENDING]]

        def progress(outcome: Outcome) -> None:
            if outcome.status != DeliveryStatus.PENDING:  # PENDING: a retry comes later
                done[0] += 1
                if done[0] % every == 0:
                    log.info("progress", extra={**fields, "done": done[0], "of": total})

        mine = await self.sender.deliver(send, newsletter, on_outcome=progress)
        counts = await self.store.delivery_counts(send.id)
        tally: dict[str, int] = {state.value: n for state, n in counts.items()
                                 if state not in (DeliveryStatus.PENDING, DeliveryStatus.SENDING)}
        tally["sent_here"] = mine.sent  # the rest went out from other processes
        still_open = counts[DeliveryStatus.PENDING] + counts[DeliveryStatus.SENDING]
        after = await self.store.get_send(send.id)
        if after.status == SendStatus.PAUSED:
            log.warning("send paused", extra={**fields, **tally, "open": still_open,
                                              "reason": after.pause_reason})
        elif still_open:
            log.warning("send interrupted: the rest goes out on the next start",
                        extra={**fields, **tally, "open": still_open})
        else:
            log.info("send finished", extra={**fields, **tally})
