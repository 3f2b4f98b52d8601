"""The store on a real SQLite file and a real PostgreSQL server: schema, subscribers, history."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from mailer.rows import SendRow, SubscriptionRow
from mailer.states import DeliveryStatus, SendStatus, SubscriptionStatus, utcnow
from mailer.store import Outcome, Store, db
from mailer.store import sends as store_sends
from mailer.store.models import Base, Subscription
from tests import storehelp
from tests.conftest import Project


def _schema_differences(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_the_migrations_build_exactly_the_schema_the_models_describe(store: Store) -> None:
    async with store.engine.connect() as connection:
        differences = await connection.run_sync(_schema_differences)
    assert differences == []


async def test_opening_an_existing_database_again_keeps_its_data(
    project: Project, store: Store,
) -> None:
    await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    # Opening migrates once more: that must be a no-op.
    async with Store.open(project.db_url) as again:
        assert await again.count_recipients("ml-issues") == 1
        assert again.engine.pool.checkedin() > 0
    # Leaving the block closed every connection it had pooled.
    assert again.engine.pool.checkedin() == 0


async def test_the_store_hands_out_frozen_rows_not_orm_objects(store: Store) -> None:
    sub = await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    send, created = await store.open_send(newsletter="ml-issues", slug="one", subject="One",
                                          preheader="", html="<p>1</p>", text="1",
                                          web_url="https://example.com/one")
    assert created and isinstance(send, SendRow) and isinstance(sub, SubscriptionRow)
    assert await store.get_send(send.id) == send
    assert await store.subscription(sub.id) == sub
    with pytest.raises(dataclasses.FrozenInstanceError):
        send.status = SendStatus.PAUSED  # type: ignore[misc]


async def test_a_new_subscriber_is_pending_and_confirming_stamps_the_time(store: Store) -> None:
    pending = await store.add_subscriber("ada@example.com", newsletter="ml-issues")
    assert pending.status == SubscriptionStatus.PENDING and pending.confirmed_at is None
    confirmed = await store.add_subscriber("ada@example.com", newsletter="ml-issues",
                                           confirmed=True)
    assert confirmed.id == pending.id
    assert confirmed.status == SubscriptionStatus.CONFIRMED
    assert confirmed.confirmed_at is not None and confirmed.confirmed_at.tzinfo is not None
    assert await store.count_recipients("ml-issues") == 1


async def test_one_address_has_one_subscription_per_newsletter(store: Store) -> None:
    first = await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    other = await store.add_subscriber("ada@example.com", newsletter="other-list", confirmed=True)
    again = await store.add_subscriber("ada@example.com", newsletter="ml-issues")
    assert first.id == again.id != other.id
    assert first.subscriber_id == other.subscriber_id
    # Adding without --confirmed never downgrades a confirmed subscription.
    assert again.status == SubscriptionStatus.CONFIRMED


async def test_an_import_is_one_transaction_and_skips_nobody(store: Store) -> None:
    rows = [(f"reader{i}@example.com", f"Reader {i}") for i in range(250)]
    assert await store.import_subscribers(rows, newsletter="ml-issues", confirmed=True) == 250
    exported = [row async for row in store.subscribers(newsletter="ml-issues")]
    assert [(r.email, r.name) for r in exported] == rows
    assert {r.status for r in exported} == {SubscriptionStatus.CONFIRMED}


async def test_removing_a_subscriber_keeps_the_send_history_with_the_address(
    store: Store,
) -> None:
    await store.add_subscriber("ada@example.com", newsletter="ml-issues", confirmed=True)
    send, _ = await store.open_send(newsletter="ml-issues", slug="one", subject="s",
                                    preheader="", html="<p/>", text="t", web_url="http://x")
    assert await store.remove_subscriber("ada@example.com", newsletter="ml-issues")
    assert not await store.remove_subscriber("ada@example.com", newsletter="ml-issues")

    [delivery] = await storehelp.deliveries(store, send.id)
    assert delivery.email == "ada@example.com" and delivery.subscription_id is None
    assert delivery.status == DeliveryStatus.PENDING
    assert [row async for row in store.subscribers(newsletter="ml-issues")] == []


async def test_only_confirmed_subscribers_are_queued_for_an_issue(store: Store) -> None:
    await store.add_subscriber("yes@example.com", newsletter="ml-issues", confirmed=True)
    await store.add_subscriber("pending@example.com", newsletter="ml-issues")
    await store.add_subscriber("elsewhere@example.com", newsletter="other", confirmed=True)
    send, created = await store.open_send(newsletter="ml-issues", slug="one", subject="s",
                                          preheader="", html="<p/>", text="t",
                                          web_url="http://x")
    assert created
    assert [d.email for d in await storehelp.deliveries(store, send.id)] == ["yes@example.com"]
    assert await store.sent_slugs("ml-issues") == {"one"}
    assert (await store.unfinished_send("ml-issues")) is not None


async def test_a_confirmed_import_never_resubscribes_someone_who_left(store: Store) -> None:
    left = await store.add_subscriber("left@example.com", newsletter="ml-issues", confirmed=True)
    async with store.session.begin() as s:
        row = await s.get(Subscription, left.id)
        assert row is not None
        row.status = SubscriptionStatus.UNSUBSCRIBED
    await store.add_subscriber("pending@example.com", newsletter="ml-issues")

    await store.import_subscribers(
        [("left@example.com", ""), ("pending@example.com", "P"), ("new@example.com", "")],
        newsletter="ml-issues", confirmed=True)

    states = {r.email: (r.status, r.name) async for r in store.subscribers(newsletter="ml-issues")}
    assert states == {"left@example.com": (SubscriptionStatus.UNSUBSCRIBED, ""),
                      "pending@example.com": (SubscriptionStatus.CONFIRMED, "P"),
                      "new@example.com": (SubscriptionStatus.CONFIRMED, "")}


async def test_a_removed_subscriptions_id_is_never_given_to_the_next_subscriber(
    store: Store,
) -> None:
    # Tokens carry the subscription id: a reused id would let a removed subscriber's old
    # unsubscribe link act on whoever subscribed next.
    await store.add_subscriber("first@example.com", newsletter="ml-issues", confirmed=True)
    last = await store.add_subscriber("last@example.com", newsletter="ml-issues", confirmed=True)
    await store.remove_subscriber("last@example.com", newsletter="ml-issues")
    newcomer = await store.add_subscriber("new@example.com", newsletter="ml-issues")
    assert newcomer.id > last.id
    assert newcomer.subscriber_id > last.subscriber_id
    assert await store.subscription(last.id) is None


async def test_the_journal_writes_what_the_store_reads_back(store: Store) -> None:
    # The journal talks to the driver directly; its rows must read back through the models
    # exactly as the rest of mailer wrote them (times in UTC, states by name).
    for name in ("sent", "retry", "refused", "other"):
        await store.add_subscriber(f"{name}@example.com", newsletter="ml-issues",
                                   confirmed=True)
    send, _ = await store.open_send(newsletter="ml-issues", slug="one", subject="s",
                                    preheader="", html="<p/>", text="t", web_url="http://x")
    before = utcnow()
    mine = await store.claim_deliveries(send.id, worker_id="w1", limit=3, now=before)
    [theirs] = await store.claim_deliveries(send.id, worker_id="w2", limit=3, now=before)
    ids = {r.email: r.delivery_id for r in [*mine, theirs]}
    retry_at = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    async with store.journal_writer(worker_id="w1", bounce_limit=1) as journal:
        # A row another worker holds is not this one's to send.
        marked = await journal.write(sending=list(ids.values()), outcomes=[])
        assert marked == {ids["sent@example.com"], ids["retry@example.com"],
                          ids["refused@example.com"]}
        # Outcomes and a mark in one write (one statement on PostgreSQL).
        assert await journal.write(sending=[ids["other@example.com"]], outcomes=[
            Outcome(ids["sent@example.com"], DeliveryStatus.SENT, 250, "2.0.0 Ok",
                    message_id="<m1@example.com>"),
            Outcome(ids["retry@example.com"], DeliveryStatus.PENDING, 451, "4.3.0 later",
                    retry_at=retry_at),
            Outcome(ids["refused@example.com"], DeliveryStatus.FAILED, 550, "5.1.1 no such user",
                    bounce=True),
        ]) == set()
    rows = {d.email: d for d in await storehelp.deliveries(store, send.id)}
    sent, retry, refused = (rows[f"{n}@example.com"] for n in ("sent", "retry", "refused"))
    assert sent.status == DeliveryStatus.SENT and sent.message_id == "<m1@example.com>"
    assert sent.sent_at is not None and before <= sent.sent_at <= utcnow()
    assert sent.smtp_reply == "2.0.0 Ok" and sent.attempts == 1 and sent.claimed_by is None
    assert retry.status == DeliveryStatus.PENDING and retry.next_attempt_at == retry_at
    assert retry.sent_at is None and retry.message_id is None and retry.smtp_code == 451
    assert refused.status == DeliveryStatus.FAILED and refused.smtp_reply == "5.1.1 no such user"
    assert rows["other@example.com"].status == DeliveryStatus.PENDING
    assert rows["other@example.com"].claimed_by == "w2"
    bounced = await store.subscription(refused.subscription_id or 0)
    assert bounced is not None and bounced.status == SubscriptionStatus.BOUNCED


async def test_a_long_list_is_queued_chunk_by_chunk_and_counted_whole_from_the_start(
    store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(store_sends, "QUEUE_CHUNK", 3)
    await store.import_subscribers([(f"r{i}@example.com", "") for i in range(7)],
                                   newsletter="ml-issues", confirmed=True)
    send, _ = await store.open_send(newsletter="ml-issues", slug="one", subject="s",
                                    preheader="", html="<p/>", text="t", web_url="http://x")
    assert len(await storehelp.deliveries(store, send.id)) == 3  # the first chunk only
    # Progress and "is it finished?" count the whole list from the start.
    assert (await store.delivery_counts(send.id))[DeliveryStatus.PENDING] == 7
    assert await store.open_deliveries(send.id) == 7
    # Someone confirmed while the send runs is queued when the sending reaches them.
    await store.add_subscriber("late@example.com", newsletter="ml-issues", confirmed=True)
    assert [await store.queue_more(send.id) for _ in range(4)] == [3, 2, 0, 0]
    emails = [d.email for d in await storehelp.deliveries(store, send.id)]
    assert emails == [f"r{i}@example.com" for i in range(7)] + ["late@example.com"]
    assert (await store.get_send(send.id)).queued_at is not None
    assert await store.open_deliveries(send.id) == 8


def test_the_head_revision_read_off_the_file_names_is_alembics_head() -> None:
    # db.migrate skips alembic when the database is at head_revision(): the two must agree.
    script = ScriptDirectory.from_config(_alembic_config())
    assert db.head_revision() == script.get_current_head()


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(db.MIGRATIONS))
    return cfg
