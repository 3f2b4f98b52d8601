"""schedule: ScheduleSpec → APScheduler trigger, fire times kept across DST, the test clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from apscheduler.triggers.calendarinterval import CalendarIntervalTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from mailer.schedule import (
    Clock,
    ScheduleSpec,
    cron_trigger,
    describe,
    fire_times,
    last_slot,
    next_fire_time,
    parse_every,
    to_trigger,
)
from mailer.states import utcnow

BERLIN = ZoneInfo("Europe/Berlin")
SLOT = datetime(2026, 12, 7, 9, 0, tzinfo=BERLIN)
BIWEEKLY = ScheduleSpec(every="2 weeks", starting=datetime(2026, 12, 7, 9, 0),
                        timezone="Europe/Berlin")


def fires(spec: ScheduleSpec, after: datetime, count: int) -> list[datetime]:
    times: list[datetime] = []
    for _ in range(count):
        fire = next_fire_time(spec, after=after)
        assert fire is not None
        times.append(fire)
        after = fire
    return times


def test_every_two_weeks_becomes_a_calendar_interval_trigger() -> None:
    spec = ScheduleSpec(every="2 weeks", starting=datetime(2026, 12, 7, 9, 0),
                        timezone="Europe/Berlin")
    trigger = to_trigger(spec)
    assert isinstance(trigger, CalendarIntervalTrigger)
    assert trigger.weeks == 2 and trigger.start_date.isoformat() == "2026-12-07"


def test_every_two_weeks_stays_at_nine_local_across_spring_and_autumn_dst() -> None:
    spec = ScheduleSpec(every="2 weeks", starting=datetime(2026, 12, 7, 9, 0),
                        timezone="Europe/Berlin")
    spring = fires(spec, datetime(2027, 3, 2, tzinfo=BERLIN), 3)
    assert [t.date().isoformat() for t in spring] == ["2027-03-15", "2027-03-29", "2027-04-12"]
    assert {(t.hour, t.minute) for t in spring} == {(9, 0)}
    # Berlin leaves CET (UTC+1) for CEST (UTC+2) on 2027-03-28: 08:00 UTC becomes 07:00 UTC.
    assert [t.utcoffset() for t in spring] == [timedelta(hours=1), timedelta(hours=2),
                                               timedelta(hours=2)]
    autumn = fires(spec, datetime(2027, 10, 20, tzinfo=BERLIN), 2)
    assert [t.isoformat() for t in autumn] == ["2027-10-25T09:00:00+02:00",
                                               "2027-11-08T09:00:00+01:00"]


def test_the_first_fire_is_the_starting_time() -> None:
    spec = ScheduleSpec(every="2 weeks", starting=datetime(2026, 12, 7, 9, 0),
                        timezone="Europe/Berlin")
    first = next_fire_time(spec, after=datetime(2026, 1, 1, tzinfo=BERLIN))
    assert first == datetime(2026, 12, 7, 9, 0, tzinfo=BERLIN)


def test_next_fire_time_is_strictly_after_the_given_time() -> None:
    spec = ScheduleSpec(every="1 day", starting=datetime(2026, 12, 7, 9, 0))
    at_fire = datetime(2026, 12, 8, 9, 0, tzinfo=ZoneInfo("UTC"))
    assert next_fire_time(spec, after=at_fire) == at_fire + timedelta(days=1)


def test_every_three_hours_is_an_exact_interval_even_across_dst() -> None:
    spec = ScheduleSpec(every="3 hours", starting=datetime(2027, 3, 27, 23, 0),
                        timezone="Europe/Berlin")
    assert isinstance(to_trigger(spec), IntervalTrigger)
    times = [t.astimezone(UTC) for t in fires(spec, datetime(2027, 3, 27, 22, tzinfo=BERLIN), 3)]
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [timedelta(hours=3)] * 2
    times = [t.astimezone(BERLIN) for t in times]
    assert times[1].hour == 3  # 02:00 local does not exist that night; elapsed time still 3 h


def test_every_thirty_minutes_is_an_interval_trigger() -> None:
    spec = ScheduleSpec(every="30 minutes", starting=datetime(2026, 1, 1))
    assert to_trigger(spec).interval == timedelta(minutes=30)  # type: ignore[attr-defined]


def test_cron_uses_crontab_weekday_numbers_where_one_is_monday() -> None:
    spec = ScheduleSpec(cron="0 9 * * 1", timezone="Europe/Berlin")
    assert isinstance(to_trigger(spec), CronTrigger)
    times = fires(spec, datetime(2026, 12, 1, tzinfo=BERLIN), 2)
    assert [t.strftime("%A %H:%M") for t in times] == ["Monday 09:00"] * 2
    assert times[0].date().isoformat() == "2026-12-07"


@pytest.mark.parametrize(("weekday", "names"), [
    ("0", {"Sunday"}), ("7", {"Sunday"}), ("sun", {"Sunday"}),
    ("1-5", {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday"}),
    ("5-7", {"Friday", "Saturday", "Sunday"}), ("*/3", {"Sunday", "Wednesday", "Saturday"}),
    ("mon,wed", {"Monday", "Wednesday"}),
])
def test_cron_weekday_fields_follow_crontab(weekday: str, names: set[str]) -> None:
    spec = ScheduleSpec(cron=f"30 8 * * {weekday}")
    times = fires(spec, datetime(2026, 12, 1, tzinfo=ZoneInfo("UTC")), 14)
    assert {t.strftime("%A") for t in times} == names


@pytest.mark.parametrize("expr", ["0 9 * *", "0 9 * * 8", "0 9 * * fri-mon", "61 9 * * 1",
                                  "0 9 1 * 1", "0 9 * * 1/0", "0 9 * * x"])
def test_bad_cron_expressions_are_value_errors(expr: str) -> None:
    with pytest.raises(ValueError):
        cron_trigger(expr, ZoneInfo("UTC"))


@pytest.mark.parametrize(("text", "parsed"), [
    ("2 weeks", (2, "weeks")), ("1 week", (1, "weeks")), ("1 day", (1, "days")),
    ("3 Hours", (3, "hours")), ("30 minutes", (30, "minutes")), (" 10days ", (10, "days")),
])
def test_parse_every_reads_a_count_and_a_unit(text: str, parsed: tuple[int, str]) -> None:
    assert parse_every(text) == parsed


@pytest.mark.parametrize("text", ["fortnightly", "0 weeks", "2 months", "weeks", "-1 day"])
def test_parse_every_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_every(text)


def test_a_spec_with_an_offset_in_starting_is_refused() -> None:
    with pytest.raises(ValidationError, match="without a UTC offset"):
        ScheduleSpec(every="1 week", starting=datetime(2026, 1, 1, tzinfo=BERLIN))


def test_a_spec_is_normalised_and_frozen() -> None:
    spec = ScheduleSpec(every=" 2  WEEKS", starting=datetime(2026, 1, 1))
    assert spec.every == "2 weeks"
    assert ScheduleSpec(every="1 days", starting=datetime(2026, 1, 1)).every == "1 day"
    with pytest.raises(ValidationError):
        spec.timezone = "UTC"  # type: ignore[misc]


@given(weeks=st.integers(1, 8), hour=st.integers(0, 23), minute=st.integers(0, 59),
       start=st.dates(datetime(2025, 1, 1).date(), datetime(2030, 1, 1).date()))
def test_calendar_schedules_keep_their_wall_clock_time_for_a_year(
        weeks: int, hour: int, minute: int, start: datetime) -> None:
    spec = ScheduleSpec(every=f"{weeks} weeks", timezone="Europe/Berlin",
                        starting=datetime.combine(start, datetime.min.time()).replace(
                            hour=hour, minute=minute))
    times = fires(spec, datetime(2025, 1, 1, tzinfo=BERLIN), 52 // weeks)
    # 02:xx does not exist on the spring-forward day; that date is skipped, never shifted.
    assert {(t.hour, t.minute) for t in times} == {(hour, minute)}
    assert all((b.date() - a.date()).days % (7 * weeks) == 0
               for a, b in zip(times, times[1:], strict=False))


def test_the_test_clock_starts_at_test_now_and_runs_on_in_real_time() -> None:
    clock = Clock(SLOT)
    first = clock.now()
    assert abs(first - SLOT) < timedelta(seconds=1)
    time.sleep(0.05)
    assert clock.now() - first >= timedelta(seconds=0.05)
    real = utcnow()
    assert abs(clock.to_real(clock.to_clock(real)) - real) < timedelta(microseconds=1)
    assert abs(Clock().now() - utcnow()) < timedelta(seconds=1)


def test_the_last_slot_is_found_only_within_the_catch_up_window() -> None:
    day = timedelta(days=1)
    assert last_slot(BIWEEKLY, SLOT + timedelta(hours=3), within=day) == SLOT
    assert last_slot(BIWEEKLY, SLOT, within=day) == SLOT
    assert last_slot(BIWEEKLY, SLOT + timedelta(hours=25), within=day) is None
    assert last_slot(BIWEEKLY, SLOT - timedelta(seconds=1), within=day * 30) is None
    assert last_slot(BIWEEKLY, SLOT + 15 * day, within=2 * day) == SLOT + 14 * day
    every_minute = ScheduleSpec(cron="* * * * *")
    now = datetime(2026, 12, 7, 8, 30, 40, tzinfo=UTC)
    assert last_slot(every_minute, now, within=day) == now.replace(second=0)


def test_fire_times_are_bounded_on_both_sides() -> None:
    times = list(fire_times(BIWEEKLY, after=SLOT, until=SLOT + timedelta(weeks=6)))
    assert times == [SLOT + timedelta(weeks=2), SLOT + timedelta(weeks=4),
                     SLOT + timedelta(weeks=6)]
    assert list(fire_times(BIWEEKLY, after=SLOT, until=SLOT)) == []


def test_a_schedule_is_described_in_its_own_words() -> None:
    assert describe(BIWEEKLY) == "every 2 weeks from 2026-12-07 09:00 Europe/Berlin"
    assert describe(ScheduleSpec(cron="0 9 * * 1")) == "cron 0 9 * * 1 UTC"
