"""When a newsletter goes out: ScheduleSpec, its APScheduler 3 trigger, and the date maths on it.

Pure: triggers only, never a scheduler. The daemon's wiring is in mailer.runners.scheduler.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from mailer.states import utcnow

_EVERY = re.compile(r"(\d+)\s*(week|day|hour|minute)s?", re.IGNORECASE)
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]  # crontab order: 0 (and 7) = Sunday
_TICK = timedelta(microseconds=1)  # the clock's resolution: "after t" is "at t + _TICK or later"


class ScheduleSpec(BaseModel):
    """`cron: "0 9 * * 1"`, or `every: 2 weeks` + `starting` (naive, local to `timezone`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cron: str | None = None
    every: str | None = Field(None, validate_default=True)
    starting: datetime | None = Field(None, validate_default=True)
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None:
            cron_trigger(value, ZoneInfo("UTC"))
        return value

    @field_validator("every")
    @classmethod
    def _valid_every(cls, value: str | None, info: ValidationInfo) -> str | None:
        cron = info.data.get("cron")
        if value is None:
            if cron is None and "cron" in info.data:
                raise ValueError("a schedule needs cron, or every + starting")
            return None
        if cron is not None:
            raise ValueError("set either cron or every + starting, not both")
        count, unit = parse_every(value)
        return f"{count} {unit.removesuffix('s') if count == 1 else unit}"

    @field_validator("starting")
    @classmethod
    def _valid_starting(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None and info.data.get("every"):
            raise ValueError("every needs starting, e.g. starting: 2026-12-07 09:00")
        if value is not None and info.data.get("cron"):
            raise ValueError("starting goes with every, not with cron")
        if value is not None and value.tzinfo is not None:
            raise ValueError("expected a local date and time without a UTC offset "
                             "(the offset comes from timezone)")
        return value

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {value!r}: expected an IANA name "
                             "like Europe/Berlin") from None
        return value


def parse_every(text: str) -> tuple[int, str]:
    """`"2 weeks"` → `(2, "weeks")`; the unit is weeks, days, hours or minutes.

    Raises:
        ValueError: anything else, or a count below 1.
    """
    match = _EVERY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected a count and a unit like '2 weeks', '1 day', '3 hours' "
                         f"or '30 minutes', got {text!r}")
    count = int(match[1])
    if count < 1:
        raise ValueError(f"the count must be at least 1, got {text!r}")
    return count, match[2].lower() + "s"


def cron_trigger(expr: str, tz: tzinfo) -> CronTrigger:
    """A CronTrigger for a 5-field crontab line, with crontab's own day-of-week numbers.

    APScheduler 3 numbers weekdays from Monday = 0, so `CronTrigger.from_crontab("0 9 * * 1")`
    fires on Tuesdays (agronholm/apscheduler#286); here 0 and 7 are Sunday, as in crontab(5).

    Raises:
        ValueError: not five fields, or a field APScheduler rejects.
    """
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"expected 5 crontab fields (minute hour day month weekday), got {expr!r}")
    minute, hour, day, month, weekday = fields
    if day != "*" and weekday != "*":
        # crontab(5) fires when EITHER matches; APScheduler requires both. Refuse the ambiguity.
        raise ValueError("restrict the day of month or the day of week, not both")
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_crontab_weekdays(weekday), timezone=tz)
    except ValueError as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from None


def _crontab_weekdays(field: str) -> str:
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()
    for part in field.lower().split(","):
        span, _, step = part.partition("/")
        if span == "*":
            first, last = 0, 6
        else:
            start, _, end = span.partition("-")
            first = _weekday_number(start)
            last = _weekday_number(end) if end else (6 if step else first)
        if step and not step.isdigit():
            raise ValueError(f"invalid day-of-week step in {field!r}")
        if first > last or int(step or 1) < 1:
            raise ValueError(f"invalid day-of-week range {part!r}")
        days.update(day % 7 for day in range(first, last + 1, int(step or 1)))
    return ",".join(_DAYS[day] for day in sorted(days))


def _weekday_number(text: str) -> int:
    if text.isdigit() and int(text) <= 7:
        return int(text)
    if text[:3] in _DAYS and len(text) == 3:
        return _DAYS.index(text)
    raise ValueError(f"invalid day of week {text!r}: expected 0-7 (0 and 7 = Sunday) or mon…sun")


def to_trigger(spec: ScheduleSpec) -> BaseTrigger:
    """The APScheduler 3 trigger for `spec`.

    `every: N weeks|days` becomes a CalendarIntervalTrigger, which keeps the wall-clock time of
    `starting` (09:00 stays 09:00 local across DST); hours and minutes are exact intervals.

    Raises:
        ValueError: a spec that bypassed validation.
    """
    tz = ZoneInfo(spec.timezone)
    if spec.cron:
        return cron_trigger(spec.cron, tz)
    if spec.every is None or spec.starting is None:
        raise ValueError("a schedule needs cron, or every + starting")
    count, unit = parse_every(spec.every)
    start = spec.starting
    if unit in ("weeks", "days"):
        return CalendarIntervalTrigger(**{unit: count}, hour=start.hour, minute=start.minute,
                                       second=start.second, start_date=start.date(), timezone=tz)
    return IntervalTrigger(**{unit: count}, start_date=start.replace(tzinfo=tz), timezone=tz)


def describe(spec: ScheduleSpec) -> str:
    """`every 2 weeks from 2026-12-07 09:00 Europe/Berlin`, or `cron 0 9 * * 1 UTC`."""
    if spec.cron:
        return f"cron {spec.cron} {spec.timezone}"
    starting = f"{spec.starting:%Y-%m-%d %H:%M}" if spec.starting else "?"
    return f"every {spec.every} from {starting} {spec.timezone}"


def fire_times(spec: ScheduleSpec, *, after: datetime,
               until: datetime | None = None) -> Iterator[datetime]:
    """Each time `spec` fires strictly after `after` and, given `until`, at or before it;
    in the spec's time zone, earliest first."""
    trigger, tz = to_trigger(spec), ZoneInfo(spec.timezone)
    after = after.astimezone(tz)
    fire: datetime | None = trigger.get_next_fire_time(None, after + _TICK)
    while fire is not None and (until is None or fire <= until):
        if fire > after:
            yield fire
        # A CalendarIntervalTrigger with no previous fire time answers its start date even
        # when that is past, so the walk steps on from there until it passes `after`.
        fire = trigger.get_next_fire_time(fire, max(fire, after) + _TICK)


def next_fire_time(spec: ScheduleSpec, *, after: datetime) -> datetime | None:
    """The first time `spec` fires strictly after `after` (tz-aware), in the spec's time zone."""
    return next(fire_times(spec, after=after), None)


def last_slot(spec: ScheduleSpec, now: datetime, *, within: timedelta) -> datetime | None:
    """The latest time `spec` fired at or before `now`, if that is at most `within` ago."""
    return max(fire_times(spec, after=now - within - _TICK, until=now), default=None)


class Clock:
    """Real time, or the documented test clock `settings.test_now`: the daemon starts at that
    instant and its clock runs on in real time from there, so the scheduler's waits stay real."""

    def __init__(self, start: datetime | None = None) -> None:
        self.offset = start - utcnow() if start is not None else timedelta(0)

    def now(self) -> datetime:
        """The current time on this clock (UTC)."""
        return utcnow() + self.offset

    def to_real(self, moment: datetime) -> datetime:
        """`moment` on this clock → the same instant on the real clock (UTC)."""
        return moment.astimezone(UTC) - self.offset

    def to_clock(self, moment: datetime) -> datetime:
        """`moment` on the real clock → the same instant on this clock (UTC)."""
        return moment.astimezone(UTC) + self.offset
