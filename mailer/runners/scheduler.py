"""The daemon's schedule as APScheduler 3 wiring: one job per newsletter, on the daemon's clock.

The date maths (fire times, the last slot, the test clock) is pure and lives in mailer.schedule;
what running a slot does is in mailer.runners.slots.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import TracebackType
from zoneinfo import ZoneInfo

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from mailer.config import Config, Newsletter
from mailer.runners.slots import SlotRunner
from mailer.schedule import Clock, ScheduleSpec, describe, last_slot, next_fire_time
from mailer.sending.recovery import recover_dead_workers
from mailer.states import utcnow
from mailer.store import Store

log = logging.getLogger("mailer.scheduler")

_TICK = timedelta(microseconds=1)  # "after t" is "at t + _TICK or later"
RECOVER_SECONDS = 30  # how often claims of crashed daemons sharing the database are freed


class SlotTrigger(BaseTrigger):  # type: ignore[misc]  # apscheduler 3 is untyped
    """A newsletter's schedule as APScheduler sees it: its fire times on the real clock (the
    test clock may run ahead of it), and never a start date that is already over."""

    def __init__(self, spec: ScheduleSpec, clock: Clock) -> None:
        self.spec = spec
        self.clock = clock
        self.tz = ZoneInfo(spec.timezone)

    def get_next_fire_time(self, previous_fire_time: datetime | None,
                           now: datetime) -> datetime | None:
        after = (self.clock.to_clock(previous_fire_time) if previous_fire_time is not None
                 else self.clock.to_clock(now) - _TICK)
        fire = next_fire_time(self.spec, after=after)
        return None if fire is None else self.clock.to_real(fire).astimezone(self.tz)

    def __str__(self) -> str:
        return describe(self.spec)


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
