"""Automatic email files, who is due for them, and how they stay apart from issues."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailer import content
from mailer.content.automations import due_window, load_automatic_emails
from mailer.errors import ContentError
from mailer.sending.automations import Renders, queue_due
from mailer.sending.prepare import start_or_resume_send
from mailer.sending.sender import Sender
from mailer.states import SendKind, SendStatus, SubscriptionStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer

SmtpUrl = Callable[[RecordingServer], str]
T0 = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)


def write(folder: Path, name: str, front: str, body: str = "Hello.") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"---\n{front}\n---\n\n{body}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("after", "delta"), [
    ("3 days", timedelta(days=3)), ("1 day", timedelta(days=1)), ("12 hours", timedelta(hours=12)),
    ("2 weeks", timedelta(weeks=2)), ("90 minutes", timedelta(minutes=90)),
    ("1.5 days", timedelta(hours=36)),
])
def test_a_step_says_how_long_after_the_confirmation_it_goes(
    tmp_path: Path, after: str, delta: timedelta,
) -> None:
    step = content.load_issue(write(tmp_path / "sequence", "01.md",
                                    f"subject: Hi\nstatus: ready\nafter: {after}"))
    assert (step.kind, step.after, step.slug) == (SendKind.STEP, delta, "sequence/01.md")


@pytest.mark.parametrize(("front", "words", "line"), [
    ("subject: Hi\nstatus: ready", "after: required in a sequence step", 1),
    ("subject: Hi\nstatus: ready\nafter: 3", "expected a number and a unit", 4),
    ("subject: Hi\nstatus: ready\nafter: soon", "expected a number and a unit", 4),
    ("subject: Hi\nstatus: ready\nafter: 3 fortnights", "expected a number and a unit", 4),
    ("subject: Hi\nstatus: ready\nafter: 3 days\nsend_after: 2026-12-01", "unknown", 5),
])
def test_a_broken_step_is_refused_naming_its_file_line_and_key(
    tmp_path: Path, front: str, words: str, line: int,
) -> None:
    path = write(tmp_path / "sequence", "01.md", front)
    with pytest.raises(ContentError) as caught:
        content.load_issue(path)
    assert words in str(caught.value) and caught.value.line == line
    assert str(path) in str(caught.value)


def test_the_welcome_email_takes_no_send_after_nor_after(tmp_path: Path) -> None:
    path = write(tmp_path, "welcome.md", "subject: Hi\nstatus: ready\nafter: 1 day")
    with pytest.raises(ContentError, match="unknown front-matter key"):
        content.load_issue(path)


def test_steps_go_in_file_order_so_a_sooner_step_after_a_later_one_is_refused(
    tmp_path: Path,
) -> None:
    write(tmp_path / "sequence", "01-first.md", "subject: A\nstatus: ready\nafter: 3 days")
    second = write(tmp_path / "sequence", "02-second.md", "subject: B\nstatus: ready\nafter: 1 day")
    with pytest.raises(ContentError) as caught:
        load_automatic_emails(tmp_path)
    assert "sooner than sequence/01-first.md's 3 days" in str(caught.value)
    assert str(second) in str(caught.value)


def test_the_welcome_email_is_never_one_of_the_issues(tmp_path: Path) -> None:
    write(tmp_path, "welcome.md", "subject: Hi\nstatus: ready")
    write(tmp_path, "2026-12-07-first.md", "subject: First\nstatus: ready")
    write(tmp_path / "sequence", "01.md", "subject: Step\nstatus: ready\nafter: 1 day")
    assert [i.slug for i in content.load_issues(tmp_path)] == ["2026-12-07-first"]
    assert [e.slug for e in load_automatic_emails(tmp_path)] == ["welcome.md", "sequence/01.md"]


def test_no_issue_or_step_can_take_the_welcome_emails_address(tmp_path: Path) -> None:
    # Sends are told apart by slug: an issue `welcome.md.md` would share the welcome's.
    with pytest.raises(ContentError, match="welcome email's"):
        content.load_issue(write(tmp_path, "welcome.md.md", "subject: Hi\nstatus: ready"))
    step = content.load_issue(write(tmp_path / "sequence", "welcome.md",
                                    "subject: Step\nstatus: ready\nafter: 1 day"))
    assert step.slug == "sequence/welcome.md"


def test_who_is_due_counts_from_each_readers_confirmation_and_the_first_sight_of_the_step(
    tmp_path: Path,
) -> None:
    step = content.load_issue(write(tmp_path / "sequence", "01.md",
                                    "subject: Hi\nstatus: ready\nafter: 2 days"))
    window = due_window(step, first_seen=T0, now=T0 + timedelta(days=5),
                        catch_up=timedelta(hours=24))
    # Due: confirmed two days before now. Not long overdue: their point came at most a
    # day before the step was first seen.
    assert window.due_by == T0 + timedelta(days=3)
    assert window.not_before == T0 - timedelta(days=3)


async def _readers(store: Store, emails: list[str], started: datetime) -> None:
    await store.import_subscribers([(e, "") for e in emails], newsletter="ml-issues",
                                   confirmed=True, welcome=True, now=started)


async def test_leaving_and_coming_back_does_not_start_the_sequence_again(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    write(project.issues, "welcome.md", "subject: Welcome\nstatus: ready")
    write(project.issues / "sequence", "01.md", "subject: Day one\nstatus: ready\nafter: 1 day")
    emails = load_automatic_emails(project.issues)
    newsletter = config.newsletter("ml-issues")
    await _readers(store, ["ada@example.com"], T0)
    first = await queue_due(config, newsletter, store, emails[:1], now=T0, renders=Renders())
    assert [d.queued for d in first.due] == [1]
    sub = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert sub is not None
    await store.unsubscribe_subscription(sub.id, now=T0 + timedelta(hours=1))
    await store.resubscribe_subscription(sub.id, now=T0 + timedelta(hours=2))
    again = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert again is not None and again.status == SubscriptionStatus.CONFIRMED
    assert again.sequence_from == T0
    later = await queue_due(config, newsletter, store, emails[:1], now=T0 + timedelta(hours=3),
                            renders=Renders())
    assert [d.queued for d in later.due] == [0]  # still the one delivery from before
    # The day-one step counts from the first confirmation: due at T0 + 1 day, not at the
    # return two hours later.
    step = await queue_due(config, newsletter, store, emails[1:],
                           now=T0 + timedelta(days=1, minutes=30), renders=Renders())
    assert [d.queued for d in step.due] == [1]


@pytest.mark.parametrize("welcome", [False, True])
async def test_an_import_confirming_a_returning_reader_keeps_their_place(
    project: Project, store: Store, welcome: bool,
) -> None:
    # Ada confirmed at T0, left, and signed up again on the form (pending, her place kept);
    # an import that confirms her neither restarts her sequence nor ends it.
    project.configure()
    await _readers(store, ["ada@example.com"], T0)
    sub = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert sub is not None
    await store.unsubscribe_subscription(sub.id, now=T0 + timedelta(hours=1))
    await store.sign_up("ada@example.com", newsletter="ml-issues", name="",
                        now=T0 + timedelta(days=1), every=timedelta(minutes=5),
                        lease=timedelta(minutes=5))
    await store.import_subscribers([("ada@example.com", "")], newsletter="ml-issues",
                                   confirmed=True, welcome=welcome, now=T0 + timedelta(days=2))
    again = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert again is not None and again.status == SubscriptionStatus.CONFIRMED
    assert again.sequence_from == T0


async def test_automatic_emails_are_not_issues_the_archive_or_the_schedule_sees(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    write(project.issues, "welcome.md", "subject: Welcome aboard\nstatus: ready")
    await _readers(store, ["ada@example.com"], T0)
    await queue_due(config, config.newsletter("ml-issues"), store,
                    load_automatic_emails(project.issues), now=T0, renders=Renders())
    [welcome] = await store.automatic_sends("ml-issues")
    assert welcome.kind == SendKind.WELCOME
    assert await store.archived_issues("ml-issues") == []
    assert await store.archived_issue("ml-issues", "welcome.md") is None
    assert await store.sends("ml-issues") == []
    assert await store.unfinished_send("ml-issues") is None  # the due issue is not held up
    assert await store.sent_slugs("ml-issues") == set()
    # Its web-view link is the archive, which exists, not a page of its own.
    assert welcome.web_url.endswith("/issues/ml-issues")


async def test_editing_an_automatic_email_changes_what_readers_not_sent_it_yet_get(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    path = write(project.issues, "welcome.md", "subject: Welcome\nstatus: ready", "Old text.")
    newsletter = config.newsletter("ml-issues")
    await _readers(store, ["ada@example.com"], T0)
    await queue_due(config, newsletter, store, load_automatic_emails(project.issues), now=T0,
                    renders=Renders())
    path.write_text(path.read_text().replace("Old text.", "New text."), encoding="utf-8")
    await queue_due(config, newsletter, store, load_automatic_emails(project.issues),
                    now=T0 + timedelta(minutes=1), renders=Renders())
    [welcome] = await store.automatic_sends("ml-issues")
    assert "New text." in welcome.text and "Old text." not in welcome.text
    assert welcome.created_at == T0  # first seen then: the catch-up rule counts from it


async def test_an_issue_goes_before_an_automatic_email_under_way(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    readers = [f"reader{i:02}@example.com" for i in range(40)]
    config = project.configure(smtp_url=smtp_url_of(smtpd), rate_per_second=40, concurrency=2)
    write(project.issues, "welcome.md", "subject: Welcome aboard\nstatus: ready")
    newsletter = config.newsletter("ml-issues")
    await _readers(store, readers, T0)
    [welcome] = (await queue_due(config, newsletter, store,
                                 load_automatic_emails(project.issues), now=T0,
                                 renders=Renders())).due
    issue = await start_or_resume_send(config, newsletter, store, now=T0)
    assert issue is not None
    async with Sender(config, store) as sender:
        background = asyncio.create_task(sender.deliver(welcome.send, newsletter,
                                                        background=True))
        async def five_arrived() -> None:
            while len(smtpd.messages) < 5:  # noqa: ASYNC110 (the server appends from its task)
                await asyncio.sleep(0.01)

        await asyncio.wait_for(five_arrived(), 30)  # a failure fails, it does not hang
        await sender.deliver(issue, newsletter)
        stopped = await background
        subjects = [str(m.parsed()["Subject"]) for m in smtpd.messages]
        # The automatic email gave way: only what was in flight (2 connections) arrived
        # after the issue's first message, and it stopped with readers left for later.
        first_issue = next(i for i, s in enumerate(subjects) if s != "Welcome aboard")
        assert subjects[first_issue:].count("Welcome aboard") <= 2
        assert stopped.sent < len(readers)
        assert await store.open_deliveries(welcome.send.id) > 0
        await sender.deliver(welcome.send, newsletter, background=True)
    copies = Counter((r, str(m.parsed()["Subject"])) for m in smtpd.messages for r in m.rcpt_tos)
    assert set(copies.values()) == {1} and len(copies) == 2 * len(readers)


async def test_a_paused_automatic_email_waits_for_its_author_in_the_daemon_only(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    write(project.issues, "welcome.md", "subject: Welcome aboard\nstatus: ready")
    newsletter, emails = config.newsletter("ml-issues"), load_automatic_emails(project.issues)
    await _readers(store, ["ada@example.com"], T0)
    [due] = (await queue_due(config, newsletter, store, emails, now=T0, renders=Renders())).due
    await store.set_send_status(due.send.id, SendStatus.PAUSED, "5 of 5 failed")
    await _readers(store, ["bob@example.com"], T0 + timedelta(minutes=1))
    daemon = await queue_due(config, newsletter, store, emails, now=T0 + timedelta(minutes=2),
                             renders=Renders(), take_paused=False)
    assert daemon.due == [] and "is paused: 5 of 5 failed" in str(daemon.errors[0])
    # Bob is queued all the same, and the send stays paused until someone goes on with it.
    assert (await store.get_send(due.send.id)).status == SendStatus.PAUSED
    author = await queue_due(config, newsletter, store, emails, now=T0 + timedelta(minutes=3),
                             renders=Renders())
    assert [d.send.id for d in author.due] == [due.send.id]
    assert await store.open_deliveries(due.send.id) == 2
