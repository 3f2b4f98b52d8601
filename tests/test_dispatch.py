"""The send pipeline against a real SMTP server scripted to fail: exactly once, outcomes kept."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from datetime import UTC, datetime

from mailer.config import Config
from mailer.sending.prepare import start_or_resume_send
from mailer.sending.sender import Sender
from mailer.states import DeliveryStatus, SendStatus
from mailer.store import Store
from tests import storehelp
from tests.conftest import Project
from tests.smtpd import RecordingServer

NOW = datetime(2026, 12, 8, 9, 0, tzinfo=UTC)
SmtpUrl = Callable[[RecordingServer], str]
READERS = [f"reader{i:02}@example.com" for i in range(20)]


async def confirmed(store: Store, emails: list[str]) -> None:
    await store.import_subscribers([(e, "") for e in emails], newsletter="ml-issues",
                                   confirmed=True)


async def run_send(config: Config, store: Store) -> int:
    newsletter = config.newsletter("ml-issues")
    send = await start_or_resume_send(config, newsletter, store, now=NOW)
    assert send is not None
    async with Sender(config, store) as sender:
        await sender.deliver(send, newsletter)
    return send.id


def received(server: RecordingServer) -> collections.Counter[str]:
    return collections.Counter(r for m in server.messages for r in m.rcpt_tos)


async def test_refused_connections_are_retried_and_everyone_gets_one_message(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    async with RecordingServer(reply_on_connect=["421 4.3.2 busy, try later"] * 4) as server:
        config = project.configure(smtp_url=smtp_url_of(server), retry_base_seconds=0)
        await confirmed(store, READERS)
        send_id = await run_send(config, store)

    assert received(server) == collections.Counter(READERS)
    rows = await storehelp.deliveries(store, send_id)
    assert {r.status for r in rows} == {DeliveryStatus.SENT}
    assert sum(r.attempts for r in rows) > len(READERS)  # the refusals were counted


async def test_a_recipient_refused_with_451_three_times_gets_it_on_the_fourth_attempt(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    slow = READERS[3]
    async with RecordingServer(fail_rcpt={slow: ["451 4.7.1 greylisted"] * 3}) as server:
        config = project.configure(smtp_url=smtp_url_of(server), retry_base_seconds=0)
        await confirmed(store, READERS)
        send_id = await run_send(config, store)

    assert received(server) == collections.Counter(READERS)
    row = next(r for r in await storehelp.deliveries(store, send_id) if r.email == slow)
    assert (row.status, row.attempts, row.smtp_code) == (DeliveryStatus.SENT, 4, 250)
    assert [reply for address, reply in server.rcpt_attempts if address == slow][:3] == [
        "451 4.7.1 greylisted"] * 3


async def test_permanent_refusals_are_stored_with_the_servers_text_and_never_retried(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    gone = {READERS[1]: "550 5.1.1 <r1>: mailbox unavailable",
            READERS[7]: "553 5.1.3 bad address syntax"}
    async with RecordingServer(reject_rcpt=gone) as server:
        config = project.configure(smtp_url=smtp_url_of(server), retry_base_seconds=0)
        await confirmed(store, READERS)
        send_id = await run_send(config, store)

    assert received(server) == collections.Counter(e for e in READERS if e not in gone)
    rows = {r.email: r for r in await storehelp.deliveries(store, send_id)}
    for email, reply in gone.items():
        assert rows[email].status == DeliveryStatus.FAILED
        assert rows[email].attempts == 1
        assert rows[email].smtp_code == int(reply[:3])
        assert reply[4:] in (rows[email].smtp_reply or "")
        assert [a for a, _ in server.rcpt_attempts].count(email) == 1


async def test_a_connection_dropped_before_the_end_of_data_is_retried_without_a_duplicate(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    # The 2nd and 5th DATA commands lose their connection before the server has the message.
    async with RecordingServer(drop_before_data_end={2, 5}) as server:
        config = project.configure(smtp_url=smtp_url_of(server), retry_base_seconds=0)
        await confirmed(store, READERS)
        send_id = await run_send(config, store)

    assert received(server) == collections.Counter(READERS)
    rows = await storehelp.deliveries(store, send_id)
    assert {r.status for r in rows} == {DeliveryStatus.SENT}
    assert sorted(r.attempts for r in rows)[-2:] == [2, 2]


async def test_a_connection_dropped_after_the_end_of_data_is_unknown_and_not_resent(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    async with RecordingServer(drop_after_data={3}) as server:
        config = project.configure(smtp_url=smtp_url_of(server), retry_base_seconds=0)
        await confirmed(store, READERS)
        send_id = await run_send(config, store)
        # Nothing is left to send: the unknown one is not retried (the server may have it).
        assert await start_or_resume_send(config, config.newsletter("ml-issues"), store,
                                          now=NOW) is None

    assert received(server) == collections.Counter(READERS)  # the server stored it once
    rows = await storehelp.deliveries(store, send_id)
    statuses = collections.Counter(r.status for r in rows)
    assert statuses == {DeliveryStatus.SENT: 19, DeliveryStatus.UNKNOWN: 1}
    assert (await store.get_send(send_id)).status == SendStatus.FINISHED


async def test_a_stalled_transaction_does_not_hold_up_the_other_connections(
    project: Project, store: Store,
) -> None:
    stalled = READERS[0]
    async with RecordingServer(stall_seconds=30, stall_for={stalled}) as server:
        url = f"smtp://{server.host}:{server.port}?timeout=4"
        config = project.configure(smtp_url=url, retry_base_seconds=0, concurrency=3)
        await confirmed(store, READERS)
        started = time.monotonic()
        send_id = await run_send(config, store)
        elapsed = time.monotonic() - started

    # Everyone else was delivered over the other two connections meanwhile; the stalled
    # message timed out after the server had it, so its outcome is unknown, not resent.
    assert elapsed < 20
    assert received(server) == collections.Counter(READERS)
    rows = {r.email: r.status for r in await storehelp.deliveries(store, send_id)}
    assert rows.pop(stalled) == DeliveryStatus.UNKNOWN
    assert set(rows.values()) == {DeliveryStatus.SENT}


async def test_a_dead_relay_pauses_the_send_and_a_resume_delivers_everyone_once(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    readers = [f"reader{i:03}@example.com" for i in range(60)]
    await confirmed(store, readers)
    async with RecordingServer(reply_on_connect=["421 4.3.2 relay down"] * 10_000) as dead:
        config = project.configure(smtp_url=smtp_url_of(dead), retry_base_seconds=0,
                                   error_window=10, max_error_rate=0.8, max_attempts=50)
        send_id = await run_send(config, store)
        assert dead.messages == []

    paused = await store.get_send(send_id)
    assert paused.status == SendStatus.PAUSED
    assert "of the last 10 attempts failed" in (paused.pause_reason or "")
    rows = await storehelp.deliveries(store, send_id)
    # Paused, not burnt: nobody was given up on, and few attempts were made.
    assert {r.status for r in rows} == {DeliveryStatus.PENDING}
    assert sum(r.attempts for r in rows) < 20

    async with RecordingServer() as healthy:
        config = project.configure(smtp_url=smtp_url_of(healthy), retry_base_seconds=0)
        resumed_id = await run_send(config, store)

    assert resumed_id == send_id
    assert received(healthy) == collections.Counter(readers)
    assert (await store.get_send(send_id)).status == SendStatus.FINISHED
