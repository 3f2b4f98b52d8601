"""scheduler: the trigger APScheduler runs on the test clock, slots, and one issue per slot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailer.content import Issue, load_issues
from mailer.runners.scheduler import Scheduler, SlotTrigger
from mailer.runners.slots import LoadedFiles, SlotRunner
from mailer.schedule import Clock, ScheduleSpec
from mailer.sending.prepare import skip_reasons, start_or_resume_send
from mailer.sending.sender import Sender
from mailer.states import SendStatus, utcnow
from mailer.store import Store
from tests.conftest import Project
from tests.smtpd import RecordingServer

BERLIN = ZoneInfo("Europe/Berlin")
SLOT = datetime(2026, 12, 7, 9, 0, tzinfo=BERLIN)  # the test project's first slot
BIWEEKLY = ScheduleSpec(every="2 weeks", starting=datetime(2026, 12, 7, 9, 0),
                        timezone="Europe/Berlin")
SmtpUrl = Callable[[RecordingServer], str]


def chain(trigger: SlotTrigger, count: int) -> list[datetime]:
    """Fire times as APScheduler asks for them: first from now, then each from the last."""
    fire = trigger.get_next_fire_time(None, utcnow())
    times = []
    for _ in range(count):
        assert fire is not None
        times.append(fire)
        fire = trigger.get_next_fire_time(fire, fire)
    return times


def test_the_trigger_fires_on_the_real_clock_when_the_test_clock_runs_ahead() -> None:
    trigger = SlotTrigger(BIWEEKLY, Clock(SLOT - timedelta(seconds=10)))
    fire = trigger.get_next_fire_time(None, utcnow())
    assert fire is not None
    assert timedelta(seconds=9) < fire - utcnow() <= timedelta(seconds=10)


def test_the_trigger_keeps_nine_in_berlin_across_dst_as_apscheduler_chains_it() -> None:
    clock = Clock(datetime(2027, 3, 2, tzinfo=UTC))
    times = [clock.to_clock(t).astimezone(BERLIN) for t in chain(SlotTrigger(BIWEEKLY, clock), 4)]
    # Berlin moves from UTC+1 to UTC+2 on 2027-03-28 and back on 2027-10-31.
    assert [t.isoformat() for t in times] == [
        "2027-03-15T09:00:00+01:00", "2027-03-29T09:00:00+02:00",
        "2027-04-12T09:00:00+02:00", "2027-04-26T09:00:00+02:00"]
    autumn = Clock(datetime(2027, 10, 20, tzinfo=UTC))
    later = [autumn.to_clock(t).astimezone(BERLIN)
             for t in chain(SlotTrigger(BIWEEKLY, autumn), 2)]
    assert [t.isoformat() for t in later] == ["2027-10-25T09:00:00+02:00",
                                              "2027-11-08T09:00:00+01:00"]


def test_the_trigger_never_answers_a_start_date_that_is_already_over() -> None:
    clock = Clock(datetime(2027, 1, 20, tzinfo=UTC))
    fire = SlotTrigger(BIWEEKLY, clock).get_next_fire_time(None, utcnow())
    assert fire is not None
    assert clock.to_clock(fire) == datetime(2027, 2, 1, 9, tzinfo=BERLIN)


def make(slug: str, *, status: str = "ready", send_after: datetime | None = None) -> Issue:
    return Issue(slug=slug, path=Path(f"{slug}.md"), subject=slug,
                 status=status, send_after=send_after,  # type: ignore[arg-type]
                 preheader="", body="")


def test_skip_reasons_name_the_unsent_drafts_and_the_issues_not_due_yet() -> None:
    issues = [make("a", status="draft"), make("b", send_after=SLOT + timedelta(days=1)),
              make("c", status="draft"), make("sent-draft", status="draft")]
    reasons = skip_reasons(issues, {"sent-draft"}, SLOT)
    assert reasons == {"drafts": "a, c",
                       "send_after_ahead": "b (2026-12-08T09:00:00+01:00)"}
    assert skip_reasons([], set(), SLOT) == {"drafts": "none", "send_after_ahead": "none"}


def second_issue(project: Project) -> None:
    project.write_issue("2026-12-08-second.md", "---\nsubject: Second\nstatus: ready\n---\nHi\n")


async def test_a_slot_that_already_had_its_issue_starts_no_other_one(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    second_issue(project)
    newsletter = config.newsletter("ml-issues")
    first, second = load_issues(newsletter.issues, tz=newsletter.tz)
    await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    slot_start = utcnow() - timedelta(minutes=1)
    send = await start_or_resume_send(config, newsletter, store, now=SLOT, issues=[first],
                                      slot_start=slot_start)
    assert send is not None and send.slug == first.slug
    await store.set_send_status(send.id, SendStatus.FINISHED)

    assert await start_or_resume_send(config, newsletter, store, now=SLOT, issues=[second],
                                      slot_start=slot_start) is None
    later = await start_or_resume_send(config, newsletter, store, now=SLOT, issues=[second],
                                       slot_start=utcnow())
    assert later is not None and later.slug == second.slug


async def test_two_daemons_running_one_slot_at_once_start_one_issue_between_them(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    second_issue(project)
    newsletter = config.newsletter("ml-issues")
    first, second = load_issues(newsletter.issues, tz=newsletter.tz)
    await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    slot_start = utcnow() - timedelta(minutes=1)
    other = await Store.open(project.db_url)  # a second daemon: its own connections
    try:
        got = await asyncio.gather(
            start_or_resume_send(config, newsletter, store, now=SLOT, issues=[first],
                                 slot_start=slot_start),
            start_or_resume_send(config, newsletter, other, now=SLOT, issues=[second],
                                 slot_start=slot_start))
    finally:
        await other.close()
    sends = await store.sends("ml-issues")
    assert len(sends) == 1
    assert {s.id for s in got if s is not None} == {sends[0].id}


async def test_an_interrupted_send_goes_first_and_counts_as_the_slots_issue(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd))
    newsletter = config.newsletter("ml-issues")
    for email in ("ada@example.com", "grace@example.com"):
        await store.add_subscriber(email, newsletter="ml-issues", confirmed=True)
    interrupted = await start_or_resume_send(config, newsletter, store, now=SLOT)
    assert interrupted is not None
    second_issue(project)  # due too, and older slots have passed: still the interrupted first
    snapshot = LoadedFiles(config, {"ml-issues": load_issues(newsletter.issues, tz=newsletter.tz)})
    async with Sender(config, store) as sender:
        runner = SlotRunner(store, sender, Clock(SLOT + timedelta(minutes=1)),
                            snapshot=lambda: snapshot)
        await runner.run_slot("ml-issues")
        await runner.run_slot("ml-issues")  # the same slot again: nothing more

    assert sorted(r for m in smtpd.messages for r in m.rcpt_tos) == [
        "ada@example.com", "grace@example.com"]
    assert {m.parsed()["Subject"] for m in smtpd.messages} == {interrupted.subject}
    assert [s.slug for s in await store.sends("ml-issues")] == [interrupted.slug]


async def test_a_paused_send_is_left_for_the_author_and_holds_back_new_issues(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd))
    newsletter = config.newsletter("ml-issues")
    await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    paused = await start_or_resume_send(config, newsletter, store, now=SLOT)
    assert paused is not None
    await store.set_send_status(paused.id, SendStatus.PAUSED, "9 of the last 10 failed")
    second_issue(project)
    snapshot = LoadedFiles(config, {"ml-issues": load_issues(newsletter.issues, tz=newsletter.tz)})
    async with Sender(config, store) as sender:
        runner = SlotRunner(store, sender, Clock(SLOT + timedelta(weeks=2, minutes=1)),
                            snapshot=lambda: snapshot)
        await runner.run_slot("ml-issues")

    assert smtpd.messages == []
    assert [(s.slug, s.status) for s in await store.sends("ml-issues")] == [
        (paused.slug, SendStatus.PAUSED)]


@pytest.mark.parametrize(("last_send", "next_run"), [
    ("none", SLOT), ("before the slot", SLOT), ("since the slot", SLOT + timedelta(weeks=2))])
async def test_a_start_catches_up_the_latest_slot_only_when_it_had_no_issue(
    project: Project, store: Store, last_send: str, next_run: datetime,
) -> None:
    config = project.configure()
    newsletter = config.newsletter("ml-issues")
    if last_send != "none":
        await start_or_resume_send(config, newsletter, store, now=SLOT)
    if last_send == "before the slot":
        # The clock starts 0.1 s after the slot, so the slot's real time is 0.1 s ago:
        # after that send, which is older than the 0.2 s slept here (both on one clock).
        await asyncio.sleep(0.2)
        clock = Clock(SLOT + timedelta(seconds=0.1))
    else:
        clock = Clock(SLOT + timedelta(hours=2))  # a send just now is after the slot
    snapshot = LoadedFiles(config, {"ml-issues": []})
    async with Sender(config, store) as sender:
        runner = SlotRunner(store, sender, clock, snapshot=lambda: snapshot)
        async with Scheduler(runner, store, clock) as scheduler:
            await scheduler.apply(config, starting=True)
            assert scheduler.next_run(newsletter) == next_run.isoformat()
