"""The send pipeline against a real SMTP server scripted to fail: exactly once, outcomes kept."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

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
    # A refusing greeting is the relay's, not a reader's: one attempt each, the one that
    # went through.
    assert [r.attempts for r in rows] == [1] * len(READERS)
    assert server.connections > 4


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


async def test_a_cut_after_the_final_dot_is_resent_once_and_counted_as_a_possible_duplicate(
    project: Project, store: Store, smtp_url_of: SmtpUrl,
) -> None:
    # The 3rd DATA is stored, then the connection closes with no reply: the message may or
    # may not be delivered, and RFC 5321 leaves it with the client until the 250.
    async with RecordingServer(drop_after_data={3}) as server:
        config = project.configure(smtp_url=smtp_url_of(server), retry_base_seconds=0)
        await confirmed(store, READERS)
        send_id = await run_send(config, store)
        assert await start_or_resume_send(config, config.newsletter("ml-issues"), store,
                                          now=NOW) is None  # nothing left

    [cut] = [m.rcpt_tos[0] for i, m in enumerate(server.messages) if i == 2]
    assert received(server) == collections.Counter(READERS) + collections.Counter([cut])
    rows = {r.email: r for r in await storehelp.deliveries(store, send_id)}
    assert {r.status for r in rows.values()} == {DeliveryStatus.SENT}
    assert [e for e, r in rows.items() if r.possible_duplicate] == [cut]
    assert rows[cut].attempts == 2
    assert await store.possible_duplicates(send_id) == 1
    assert (await store.get_send(send_id)).status == SendStatus.FINISHED


@pytest.mark.slow
async def test_a_stalled_transaction_does_not_hold_up_the_others_and_is_resent_only_once(
    project: Project, store: Store,
) -> None:
    stalled = READERS[0]
    async with RecordingServer(stall_seconds=30, stall_for={stalled}) as server:
        url = f"smtp://{server.host}:{server.port}"
        # The reply to the final dot is awaited for 4 s (RFC 5321's 10 minutes, scaled).
        config = project.configure(smtp_url=url, retry_base_seconds=0, concurrency=3,
                                   smtp_timeout_scale=4 / 600)
        await confirmed(store, READERS)
        started = time.monotonic()
        send_id = await run_send(config, store)
        elapsed = time.monotonic() - started

    # Everyone else was delivered over the other two connections meanwhile. The stalled
    # message timed out after the server had it: resent once, timed out again, and then
    # left unknown (never a third copy).
    assert elapsed < 20
    assert received(server) == collections.Counter(READERS) + collections.Counter([stalled])
    rows = {r.email: r for r in await storehelp.deliveries(store, send_id)}
    assert (rows[stalled].status, rows[stalled].possible_duplicate) == (
        DeliveryStatus.UNKNOWN, True)
    assert {r.status for e, r in rows.items() if e != stalled} == {DeliveryStatus.SENT}
