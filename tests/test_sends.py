"""Sending an issue end to end: store → render → dispatch → a real SMTP server, both databases."""

from __future__ import annotations

import socket
from collections.abc import Callable
from datetime import UTC, datetime

from mailer import tokens
from mailer.config import Config
from mailer.sending.prepare import start_or_resume_send
from mailer.sending.sender import Sender
from mailer.states import DeliveryStatus, SendStatus, SubscriptionStatus
from mailer.store import Outcome, Store
from tests.conftest import Project
from tests.smtpd import RecordingServer

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
SmtpUrl = Callable[[RecordingServer], str]


async def subscribe(store: Store, *emails: str, status: SubscriptionStatus) -> None:
    for email in emails:
        sub = await store.add_subscriber(email, newsletter="ml-issues", confirmed=True)
        if status == SubscriptionStatus.CONFIRMED:
            continue
        async with store.session.begin() as s:
            row = await s.get(type(sub), sub.id)
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
    rows = await store.deliveries(send_id)
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
    subscriptions = {e: await store.subscription_of(e, "ml-issues") for e in emails}
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
    rows = {r.email: r for r in await store.deliveries(send_id)}
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

    rows = {r.email: r for r in await store.deliveries(send_id)}
    assert rows["ada@example.com"].status == DeliveryStatus.SENT
    gone = rows["gone@example.com"]
    assert (gone.status, gone.smtp_code) == (DeliveryStatus.FAILED, 550)
    assert "no such user" in (gone.smtp_reply or "")
    subscription = await store.subscription_of("gone@example.com", "ml-issues")
    assert subscription is not None and subscription.status == SubscriptionStatus.BOUNCED
    assert (await store.failures(send_id))[0][:2] == ("gone@example.com", 550)


async def test_a_connection_lost_after_the_data_is_recorded_as_unknown_and_never_resent(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    async with RecordingServer(drop_after_data={"grace@example.com"}) as smtpd:
        config = project.configure(smtp_url=smtp_url_of(smtpd))
        await subscribe(store, "ada@example.com", "grace@example.com",
                        status=SubscriptionStatus.CONFIRMED)
        send_id = await send_due_issue(config, store)
        rows = {r.email: r for r in await store.deliveries(send_id)}
        assert rows["grace@example.com"].status == DeliveryStatus.UNKNOWN
        async with Sender(config, store) as sender:
            await sender.deliver(await store.get_send(send_id), config.newsletter("ml-issues"))

    # The server did store it once; the unknown outcome is not turned into a second copy.
    grace = [m for m in smtpd.messages if m.rcpt_tos == ["grace@example.com"]]
    assert len(grace) == 1


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
    assert len(await store.deliveries(first.id)) == 2


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
    rows = {r.email: r.status for r in await store.deliveries(send.id)}
    assert rows == {"ada@example.com": DeliveryStatus.SENT,
                    "grace@example.com": DeliveryStatus.SKIPPED}


async def test_an_unreachable_relay_is_retried_then_each_failure_is_recorded_with_its_reason(
    project: Project, store: Store,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = project.configure(smtp_url=f"smtp://127.0.0.1:{port}?timeout=2",
                               retry_base_seconds=0, max_attempts=2)
    await subscribe(store, "ada@example.com", "grace@example.com",
                    status=SubscriptionStatus.CONFIRMED)
    send_id = await send_due_issue(config, store)

    rows = await store.deliveries(send_id)
    assert [(r.status, r.attempts) for r in rows] == [(DeliveryStatus.FAILED, 2)] * 2
    assert all("cannot connect" in (r.smtp_reply or "") for r in rows)
    # Temporary failures never count as bounces.
    ada = await store.subscription_of("ada@example.com", "ml-issues")
    assert ada is not None and ada.status == SubscriptionStatus.CONFIRMED
