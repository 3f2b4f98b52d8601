"""What to send now (mailer.sending.prepare) and sending it end to end: store → render →
dispatch → a real SMTP server, both databases."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from mailer import tokens
from mailer.config import Config
from mailer.content import load_issues
from mailer.errors import ContentError, InputError
from mailer.runners.slots import LoadedFiles, SlotRunner
from mailer.schedule import Clock
from mailer.sending.prepare import (
    Prepared,
    Ready,
    Skip,
    SkipReason,
    choose,
    open_prepared,
    prepare,
    start_or_resume_send,
)
from mailer.sending.sender import Sender
from mailer.states import DeliveryStatus, SendStatus, SubscriptionStatus, utcnow
from mailer.store import Outcome, Store
from mailer.store.models import Subscription
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
SLOT = datetime(2026, 12, 7, 9, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # the project's first slot
SAMPLE = "2026-12-07-first-issue"
SmtpUrl = Callable[[RecordingServer], str]


def clipped_issue(project: Project) -> Path:
    """A ready issue due before the sample one, its HTML well past Gmail's 102 KB."""
    paragraph = ("A paragraph long enough to add up, with [a link](https://example.com/{n}) "
                 "and some *emphasis* so the markup weighs what real issues weigh.\n\n")
    body = "".join(paragraph.format(n=n) for n in range(700))
    return project.write_issue("2026-12-01-long.md", '---\nsubject: "A very long issue"\n'
                               f"status: ready\n---\n# A very long issue\n\n{body}")


async def subscribe(store: Store, *emails: str, status: SubscriptionStatus) -> None:
    for email in emails:
        sub = await store.add_subscriber(email, newsletter="ml-issues", confirmed=True)
        if status == SubscriptionStatus.CONFIRMED:
            continue
        async with store.session.begin() as s:
            row = await s.get(Subscription, sub.id)
            assert row is not None
            row.status = status


async def send_due_issue(config: Config, store: Store, **deliver: object) -> int:
    newsletter = config.newsletter("ml-issues")
    send = await start_or_resume_send(config, newsletter, store, now=NOW)
    assert send is not None, "the sample issue should be due"
    async with Sender(config, store) as sender:
        await sender.deliver(send, newsletter, **deliver)  # type: ignore[arg-type]
    return send.id


async def test_each_confirmed_subscriber_gets_one_message_and_no_one_else_gets_any(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd))
    confirmed = ["ada@example.com", "grace@example.com", "alan@example.org"]
    await subscribe(store, *confirmed, status=SubscriptionStatus.CONFIRMED)
    await store.add_subscriber("pending@example.com", newsletter="ml-issues")
    await subscribe(store, "left@example.com", status=SubscriptionStatus.UNSUBSCRIBED)
    await subscribe(store, "bounced@example.com", status=SubscriptionStatus.BOUNCED)

    send_id = await send_due_issue(config, store)

    assert sorted(r for m in smtpd.messages for r in m.rcpt_tos) == sorted(confirmed)
    assert (await store.get_send(send_id)).status == SendStatus.FINISHED
    rows = await storehelp.deliveries(store, send_id)
    assert [r.status for r in rows] == [DeliveryStatus.SENT] * 3
    assert all(r.smtp_code == 250 and r.message_id and r.sent_at and r.attempts == 1 for r in rows)
    received_ids = {m.parsed()["Message-ID"] for m in smtpd.messages}
    assert received_ids == {r.message_id for r in rows}


async def test_running_the_send_again_sends_nothing(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd))
    await subscribe(store, "ada@example.com", "grace@example.com",
                    status=SubscriptionStatus.CONFIRMED)
    send_id = await send_due_issue(config, store)
    newsletter = config.newsletter("ml-issues")

    assert await start_or_resume_send(config, newsletter, store, now=NOW) is None
    # Even delivering the finished send once more finds nothing open.
    async with Sender(config, store) as sender:
        await sender.deliver(await store.get_send(send_id), newsletter)
    assert len(smtpd.messages) == 2


async def test_every_message_has_its_own_message_id_and_unsubscribe_token(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd))
    emails = ["ada@example.com", "grace@example.com", "alan@example.org"]
    await subscribe(store, *emails, status=SubscriptionStatus.CONFIRMED)
    await send_due_issue(config, store)

    tokens_seen: dict[str, int] = {}
    for received in smtpd.messages:
        message = received.parsed()
        url = message["List-Unsubscribe"].strip("<>")
        token = url.rsplit("/", 1)[1]
        tokens_seen[received.rcpt_tos[0]] = tokens.read_unsubscribe_token("test-key", token)
        assert url.startswith(config.settings.base_url + "/unsubscribe/")
    subscriptions = {e: await storehelp.subscription_of(store, e, "ml-issues") for e in emails}
    assert tokens_seen == {e: s.id for e, s in subscriptions.items() if s}
    assert len({m.parsed()["Message-ID"] for m in smtpd.messages}) == 3


async def test_a_temporary_refusal_is_retried_and_both_attempts_are_counted(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    async with RecordingServer(fail_rcpt={"grace@example.com": ["451 4.3.0 try later"]}) as smtpd:
        config = project.configure(smtp_url=smtp_url_of(smtpd), retry_base_seconds=0)
        await subscribe(store, "ada@example.com", "grace@example.com",
                        status=SubscriptionStatus.CONFIRMED)
        send_id = await send_due_issue(config, store)

    assert sorted(r for m in smtpd.messages for r in m.rcpt_tos) == [
        "ada@example.com", "grace@example.com"]
    rows = {r.email: r for r in await storehelp.deliveries(store, send_id)}
    assert rows["grace@example.com"].status == DeliveryStatus.SENT
    assert rows["grace@example.com"].attempts == 2


async def test_a_permanent_refusal_is_recorded_with_the_reply_and_bounces_the_subscriber(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    async with RecordingServer(reject_rcpt={"gone@example.com": "550 5.1.1 no such user"}) as smtpd:
        config = project.configure(smtp_url=smtp_url_of(smtpd))
        await subscribe(store, "ada@example.com", "gone@example.com",
                        status=SubscriptionStatus.CONFIRMED)
        send_id = await send_due_issue(config, store)

    rows = {r.email: r for r in await storehelp.deliveries(store, send_id)}
    assert rows["ada@example.com"].status == DeliveryStatus.SENT
    gone = rows["gone@example.com"]
    assert (gone.status, gone.smtp_code) == (DeliveryStatus.FAILED, 550)
    assert "no such user" in (gone.smtp_reply or "")
    subscription = await storehelp.subscription_of(store, "gone@example.com", "ml-issues")
    assert subscription is not None and subscription.status == SubscriptionStatus.BOUNCED
    assert (await store.failures(send_id))[0][:2] == ("gone@example.com", 550)


async def test_a_message_cut_after_its_data_twice_is_unknown_and_never_sent_a_third_time(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    # Every transaction for grace is stored and then cut before the reply.
    async with RecordingServer(drop_after_data={"grace@example.com"}) as smtpd:
        config = project.configure(smtp_url=smtp_url_of(smtpd))
        await subscribe(store, "ada@example.com", "grace@example.com",
                        status=SubscriptionStatus.CONFIRMED)
        send_id = await send_due_issue(config, store)
        rows = {r.email: r for r in await storehelp.deliveries(store, send_id)}
        assert (rows["grace@example.com"].status, rows["grace@example.com"].possible_duplicate
                ) == (DeliveryStatus.UNKNOWN, True)
        async with Sender(config, store) as sender:
            await sender.deliver(await store.get_send(send_id), config.newsletter("ml-issues"))

    # Resent once after the first cut (counted as a possible duplicate); the second cut
    # made it unknown, and unknown is not turned into a third copy.
    grace = [m for m in smtpd.messages if m.rcpt_tos == ["grace@example.com"]]
    assert len(grace) == 2


async def test_an_interrupted_send_resumes_and_everyone_gets_exactly_one_message(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd), concurrency=1)
    emails = [f"reader{i}@example.com" for i in range(12)]
    await subscribe(store, *emails, status=SubscriptionStatus.CONFIRMED)
    newsletter = config.newsletter("ml-issues")
    send = await start_or_resume_send(config, newsletter, store, now=NOW)
    assert send is not None

    async with Sender(config, store) as sender:
        def stop_after_three(outcome: Outcome) -> None:
            if outcome.status == DeliveryStatus.SENT and len(smtpd.messages) >= 3:
                sender.stop()

        await sender.deliver(send, newsletter, on_outcome=stop_after_three)
    first_run = len(smtpd.messages)
    assert 3 <= first_run < len(emails)
    assert (await store.get_send(send.id)).status == SendStatus.SENDING

    resumed = await start_or_resume_send(config, newsletter, store, now=NOW)
    assert resumed is not None and resumed.id == send.id
    async with Sender(config, store) as sender:
        await sender.deliver(resumed, newsletter)

    assert sorted(r for m in smtpd.messages for r in m.rcpt_tos) == sorted(emails)
    assert (await store.get_send(send.id)).status == SendStatus.FINISHED


async def test_queueing_an_issue_twice_queues_each_subscriber_once(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    await subscribe(store, "ada@example.com", "grace@example.com",
                    status=SubscriptionStatus.CONFIRMED)
    args = dict(newsletter="ml-issues", slug="x", subject="s", preheader="", html="<p>h</p>",
                text="t", web_url=config.settings.base_url)
    first, created = await store.open_send(**args)
    again, created_again = await store.open_send(**args)
    assert (created, created_again) == (True, False)
    assert again.id == first.id
    assert len(await storehelp.deliveries(store, first.id)) == 2


async def test_someone_who_leaves_after_the_issue_was_queued_does_not_get_it(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd))
    await subscribe(store, "ada@example.com", "grace@example.com",
                    status=SubscriptionStatus.CONFIRMED)
    newsletter = config.newsletter("ml-issues")
    send = await start_or_resume_send(config, newsletter, store, now=NOW)
    assert send is not None
    await store.remove_subscriber("grace@example.com", newsletter="ml-issues")

    async with Sender(config, store) as sender:
        await sender.deliver(send, newsletter)

    assert [m.rcpt_tos for m in smtpd.messages] == [["ada@example.com"]]
    rows = {r.email: r.status for r in await storehelp.deliveries(store, send.id)}
    assert rows == {"ada@example.com": DeliveryStatus.SENT,
                    "grace@example.com": DeliveryStatus.SKIPPED}


async def test_an_unreachable_relay_costs_nobody_an_attempt_and_a_giving_up_sender_says_why(
    project: Project, store: Store,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = project.configure(smtp_url=f"smtp://127.0.0.1:{port}",
                               retry_base_seconds=0, max_attempts=2)
    await subscribe(store, "ada@example.com", "grace@example.com",
                    status=SubscriptionStatus.CONFIRMED)
    newsletter = config.newsletter("ml-issues")
    send = await start_or_resume_send(config, newsletter, store, now=NOW)
    assert send is not None
    async with Sender(config, store, give_up_on_relays=True) as sender:
        await sender.deliver(send, newsletter)
        assert sender.relay_failure == f"127.0.0.1:{port}: cannot connect: connection refused"

    rows = await storehelp.deliveries(store, send.id)
    assert [(r.status, r.attempts) for r in rows] == [(DeliveryStatus.PENDING, 0)] * 2
    assert (await store.get_send(send.id)).status == SendStatus.SENDING  # to go on later
    ada = await storehelp.subscription_of(store, "ada@example.com", "ml-issues")
    assert ada is not None and ada.status == SubscriptionStatus.CONFIRMED


# -- prepare: every reason to send nothing ---------------------------------------------------


async def test_no_due_issue_is_a_skip_naming_the_drafts_and_the_issues_not_due_yet(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    sample = project.issues / f"{SAMPLE}.md"
    sample.write_text(sample.read_text().replace("status: ready", "status: draft"))
    project.write_issue("2026-12-21-later.md", "---\nsubject: Later\nstatus: ready\n"
                        "send_after: 2026-12-20\n---\nBody\n")

    skip = await prepare(config, config.newsletter("ml-issues"), store, now=NOW)

    assert isinstance(skip, Skip) and skip.reason is SkipReason.NO_DUE_ISSUE
    assert skip.error() is None
    assert skip.fields == {"drafts": SAMPLE,
                           "send_after_ahead": "2026-12-21-later (2026-12-20T00:00:00+01:00)"}
    assert await store.sends("ml-issues") == []


@pytest.mark.slow
async def test_an_issue_gmail_would_clip_is_a_skip_unless_forced(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    newsletter = config.newsletter("ml-issues")
    path = clipped_issue(project)

    skip = await prepare(config, newsletter, store, now=NOW)

    assert isinstance(skip, Skip) and skip.reason is SkipReason.CLIPPED
    assert (skip.slug, skip.path) == ("2026-12-01-long", path)
    assert "Gmail clips messages past 102 KB" in skip.detail
    error = skip.error()
    assert isinstance(error, ContentError) and "--force" in str(error)
    assert str(path) in str(error)
    with pytest.raises(ContentError):
        await start_or_resume_send(config, newsletter, store, now=NOW)
    assert await store.sends("ml-issues") == []

    forced = await prepare(config, newsletter, store, now=NOW, force=True)
    assert isinstance(forced, Ready) and not forced.resumed
    assert forced.send.slug == "2026-12-01-long"


async def test_a_given_issue_sent_before_is_a_skip_whose_error_names_the_file(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    newsletter = config.newsletter("ml-issues")
    sent = await prepare(config, newsletter, store, now=NOW)
    assert isinstance(sent, Ready)
    await store.set_send_status(sent.send.id, SendStatus.FINISHED)
    path = project.issues / f"{SAMPLE}.md"

    skip = await prepare(config, newsletter, store, now=NOW, issue_path=path)

    assert isinstance(skip, Skip) and skip.reason is SkipReason.ALREADY_SENT
    error = skip.error()
    assert isinstance(error, InputError) and str(path) in str(error)
    assert [s.slug for s in await store.sends("ml-issues")] == [SAMPLE]


async def test_an_unfinished_send_comes_first_and_a_paused_one_waits_when_asked_to(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    newsletter = config.newsletter("ml-issues")
    other = project.write_issue("2026-12-21-second.md", "---\nsubject: Second\n"
                                "status: ready\nsend_after: 2026-12-05\n---\nBody\n")
    opened = await prepare(config, newsletter, store, now=NOW)
    assert isinstance(opened, Ready) and not opened.resumed

    again = await prepare(config, newsletter, store, now=NOW)
    assert isinstance(again, Ready) and again.resumed and again.send.id == opened.send.id
    blocked = await prepare(config, newsletter, store, now=NOW, issue_path=other)
    assert isinstance(blocked, Skip) and blocked.reason is SkipReason.UNFINISHED_FIRST
    assert isinstance(blocked.error(), InputError) and SAMPLE in str(blocked.error())

    await store.set_send_status(opened.send.id, SendStatus.PAUSED, "9 of the last 10 failed")
    paused = await prepare(config, newsletter, store, now=NOW, take_paused=False)
    assert isinstance(paused, Skip) and paused.reason is SkipReason.PAUSED
    assert (paused.slug, paused.detail) == (SAMPLE, "9 of the last 10 failed")
    resumed = await prepare(config, newsletter, store, now=NOW, resume_only=True)
    assert isinstance(resumed, Ready) and resumed.send.id == opened.send.id

    await store.set_send_status(opened.send.id, SendStatus.FINISHED)
    nothing = await prepare(config, newsletter, store, now=NOW, resume_only=True)
    assert isinstance(nothing, Skip) and nothing.reason is SkipReason.NOTHING_TO_RESUME
    assert [s.slug for s in await store.sends("ml-issues")] == [SAMPLE]


async def test_a_slot_gets_one_issue_even_when_another_process_opens_one_meanwhile(
    project: Project, store: Store,
) -> None:
    config = project.configure()
    newsletter = config.newsletter("ml-issues")
    slot_start = utcnow() - timedelta(minutes=1)

    chosen = await choose(config, newsletter, store, now=NOW, slot_start=slot_start)
    assert isinstance(chosen, Prepared) and chosen.issue.slug == SAMPLE
    assert await store.sends("ml-issues") == []  # choosing stores nothing
    # Between choosing and opening, another daemon opens another issue in the same slot.
    meanwhile, _ = await store.open_send(newsletter="ml-issues", slug="other", subject="s",
                                         preheader="", html="<p>h</p>", text="t",
                                         web_url=config.settings.base_url)
    taken = await open_prepared(store, chosen)
    assert isinstance(taken, Skip) and taken.reason is SkipReason.SLOT_TAKEN

    await store.set_send_status(meanwhile.id, SendStatus.FINISHED)
    served = await prepare(config, newsletter, store, now=NOW, slot_start=slot_start)
    assert isinstance(served, Skip) and served.reason is SkipReason.SLOT_SERVED
    assert served.slug == "other" and served.error() is None
    assert [s.slug for s in await store.sends("ml-issues")] == ["other"]


async def test_the_daemon_skips_a_slot_whose_issue_gmail_would_clip_and_logs_why(
    project: Project, store: Store, smtpd: RecordingServer, smtp_url_of: SmtpUrl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = project.configure(smtp_url=smtp_url_of(smtpd))
    path = clipped_issue(project)
    await subscribe(store, "ada@example.com", status=SubscriptionStatus.CONFIRMED)
    newsletter = config.newsletter("ml-issues")
    snapshot = LoadedFiles(config, {"ml-issues": load_issues(newsletter.issues, tz=newsletter.tz)})
    caplog.set_level(logging.INFO, logger="mailer.scheduler")

    async with Sender(config, store) as sender:
        runner = SlotRunner(store, sender, Clock(SLOT + timedelta(minutes=1)),
                            snapshot=lambda: snapshot)
        await runner.run_slot("ml-issues")

    assert smtpd.messages == []
    assert await store.sends("ml-issues") == []
    [record] = [r for r in caplog.records if r.getMessage().startswith("slot skipped")]
    assert record.getMessage() == "slot skipped: Gmail would clip the issue"
    assert record.levelno == logging.WARNING
    assert record.__dict__["slug"] == path.stem and "KB" in record.__dict__["reason"]
    assert record.__dict__["to_send"] == f"mailer send-now ml-issues --issue {path} --force"
