"""The daemon's schedule: one APScheduler job per newsletter, and what running a slot does."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from types import TracebackType
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from mailer.config import Config, Newsletter
from mailer.content import Issue, pick_due_issue
from mailer.errors import MailerError
from mailer.models import DeliveryStatus, Send, SendStatus, utcnow
from mailer.schedule import ScheduleSpec, to_trigger
from mailer.sender import Sender
from mailer.sends import recover_dead_workers, start_or_resume_send
from mailer.store import Outcome, Store

log = logging.getLogger("mailer.scheduler")

_TICK = timedelta(microseconds=1)
RECOVER_SECONDS = 30  # how often claims of crashed daemons sharing the database are freed


class Clock:
    """Real time, or the documented test clock `settings.test_now`: the daemon starts at that
    instant and its clock runs on in real time from there, so the scheduler's waits stay real."""

    def __init__(self, start: datetime | None = None) -> None:
        self.offset = start - utcnow() if start is not None else timedelta(0)

    def now(self) -> datetime:
        return utcnow() + self.offset

    def to_real(self, moment: datetime) -> datetime:
        return moment.astimezone(UTC) - self.offset

    def to_clock(self, moment: datetime) -> datetime:
        return moment.astimezone(UTC) + self.offset


def _next_after(trigger: BaseTrigger, after: datetime, tz: tzinfo) -> datetime | None:
    # As schedule.next_fire_time, with one trigger: strictly after `after`, walking past a
    # CalendarIntervalTrigger's start date when that is already over.
    after = after.astimezone(tz)
    fire: datetime | None = trigger.get_next_fire_time(None, after + _TICK)
    while fire is not None and fire <= after:
        fire = trigger.get_next_fire_time(fire, after)
    return fire


def describe(spec: ScheduleSpec) -> str:
    """`every 2 weeks from 2026-12-07 09:00 Europe/Berlin`, or `cron 0 9 * * 1 UTC`."""
    if spec.cron:
        return f"cron {spec.cron} {spec.timezone}"
    starting = f"{spec.starting:%Y-%m-%d %H:%M}" if spec.starting else "?"
    return f"every {spec.every} from {starting} {spec.timezone}"


def last_slot(spec: ScheduleSpec, now: datetime, *, within: timedelta) -> datetime | None:
    """The latest time `spec` fired at or before `now`, if that is at most `within` ago."""
    trigger, tz = to_trigger(spec), ZoneInfo(spec.timezone)
    fire, last = _next_after(trigger, now - within - _TICK, tz), None
    while fire is not None and fire <= now:
        last, fire = fire, _next_after(trigger, fire, tz)
    return last


class SlotTrigger(BaseTrigger):  # type: ignore[misc]  # apscheduler 3 is untyped
    """A newsletter's schedule as APScheduler sees it: its fire times on the real clock (the
    test clock may run ahead of it), and never a start date that is already over."""

    def __init__(self, spec: ScheduleSpec, clock: Clock) -> None:
        self.spec = spec
        self.clock = clock
        self.tz = ZoneInfo(spec.timezone)
        self._trigger = to_trigger(spec)

    def get_next_fire_time(self, previous_fire_time: datetime | None,
                           now: datetime) -> datetime | None:
        after = (self.clock.to_clock(previous_fire_time) if previous_fire_time is not None
                 else self.clock.to_clock(now) - _TICK)
        fire = _next_after(self._trigger, after, self.tz)
        return None if fire is None else self.clock.to_real(fire).astimezone(self.tz)

    def __str__(self) -> str:
        return describe(self.spec)


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


class Scheduler:
    """APScheduler 3's AsyncIOScheduler in the daemon's loop, one job per scheduled newsletter.

    A job only hands its newsletter to the SlotRunner and returns at once: the scheduler
    decides when, never what, and stopping it cannot cancel a send (AsyncIOExecutor's
    shutdown cancels running jobs). It keeps no state worth saving (MemoryJobStore): each
    start derives everything from schedules.yaml and the database.
    """

    def __init__(self, runner: SlotRunner, store: Store, clock: Clock) -> None:
        self.runner = runner
        self.store = store
        self.clock = clock
        self._aps = AsyncIOScheduler(timezone=UTC)
        self._aps.add_listener(self._missed, EVENT_JOB_MISSED)
        self._specs: dict[str, tuple[ScheduleSpec, float]] = {}

    async def __aenter__(self) -> Scheduler:
        self._aps.start()
        self._aps.add_job(self._recover, "interval", seconds=RECOVER_SECONDS, id="recover")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def stop(self) -> None:
        """Fire nothing more."""
        if self._aps.running:
            self._aps.shutdown(wait=False)

    async def apply(self, config: Config, *, starting: bool = False) -> None:
        """Schedule every newsletter of `config`: a job added, replaced or removed as needed.

        On start, an interrupted send is queued at once, and a slot missed while the daemon
        was down (within catch_up_hours, and with no send since) is caught up once.
        """
        catch_up = timedelta(hours=config.settings.catch_up_hours)
        scheduled = {n.id: n for n in config.newsletters.values() if n.schedule is not None}
        for gone in set(self._specs) - set(scheduled):
            self._aps.remove_job(gone)
            del self._specs[gone]
            log.info("unscheduled", extra={"newsletter": gone})
        if starting:
            for newsletter in config.newsletters.values():
                if await self.store.unfinished_send(newsletter.id) is not None:
                    self.runner.request(newsletter.id)
        for newsletter in scheduled.values():
            assert newsletter.schedule is not None
            key = (newsletter.schedule, config.settings.catch_up_hours)
            if self._specs.get(newsletter.id) == key:
                continue
            trigger = SlotTrigger(newsletter.schedule, self.clock)
            first = await self._missed_slot(newsletter, catch_up) if starting else None
            first = first or trigger.get_next_fire_time(None, utcnow())
            self._specs[newsletter.id] = key
            if first is None:
                log.warning("schedule has no future run", extra={"newsletter": newsletter.id})
                continue
            # coalesce: however many fire times passed unseen (a blocked loop, a suspended
            # machine), the job runs once, and a slot only ever sends the latest slot's issue,
            # so an outage never turns into a burst of back issues. misfire_grace_time: a slot
            # is still run that late, the same window in which a start catches up a slot it
            # was down for (the job then starts at that slot and APScheduler's misfire check
            # lets it through). Later than that the slot is logged as missed and the next one
            # is kept: an issue days late, just before the next one, hurts the cadence more.
            self._aps.add_job(
                self._fire, trigger=trigger, args=[newsletter.id], id=newsletter.id,
                name=newsletter.id, replace_existing=True, next_run_time=first, coalesce=True,
                misfire_grace_time=max(1, int(catch_up.total_seconds())), max_instances=1,
            )
            log.info("scheduled", extra={"newsletter": newsletter.id, "schedule": str(trigger),
                                         "next_run": self.next_run(newsletter)})

    def next_run(self, newsletter: Newsletter) -> str:
        """When the newsletter's job fires next, on the daemon's clock, in its time zone."""
        job = self._aps.get_job(newsletter.id)
        if job is None or job.next_run_time is None:
            return "never"
        return self.clock.to_clock(job.next_run_time).astimezone(newsletter.tz).isoformat()

    async def _missed_slot(self, newsletter: Newsletter, catch_up: timedelta) -> datetime | None:
        assert newsletter.schedule is not None
        slot = last_slot(newsletter.schedule, self.clock.now(), within=catch_up)
        if slot is None:
            return None
        latest = await self.store.latest_send(newsletter.id)
        if latest is not None and latest.created_at >= self.clock.to_real(slot):
            return None
        log.info("catching up the latest slot", extra={
            "newsletter": newsletter.id, "slot": slot.astimezone(newsletter.tz).isoformat()})
        return self.clock.to_real(slot)

    async def _fire(self, newsletter_id: str) -> None:
        self.runner.request(newsletter_id)

    async def _recover(self) -> None:
        # Another daemon on this database may have crashed holding claims of a send that
        # this one is finishing: free them, so the send does not wait for ever.
        try:
            await recover_dead_workers(self.store)
        except Exception:
            log.exception("recovering dead senders failed")

    def _missed(self, event: JobExecutionEvent) -> None:
        log.warning("slot missed: later than catch_up_hours", extra={
            "newsletter": event.job_id,
            "slot": self.clock.to_clock(event.scheduled_run_time).isoformat()})
