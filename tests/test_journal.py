"""The journal's group commit (Journal, PendingOutcomes) on a real store, both databases.

Each connection's outcomes wait in its PendingOutcomes until they can ride along with its
next SENDING mark; a body may leave only when the mark is durable and the row still ours.
"""

from __future__ import annotations

import asyncio

from mailer.delivery.journal import MAX_PENDING_OUTCOMES, Journal, PendingOutcomes
from mailer.rows import Outcome, Recipient
from mailer.states import DeliveryStatus, utcnow
from mailer.store import Store


async def claimed(store: Store, readers: int) -> tuple[int, list[Recipient], Recipient]:
    """A send of `readers` deliveries: all but the last claimed by w1, the last by w2."""
    for i in range(readers):
        await store.add_subscriber(f"reader{i}@example.com", newsletter="ml-issues",
                                   confirmed=True)
    send, _ = await store.open_send(newsletter="ml-issues", slug="one", subject="s",
                                    preheader="", html="<p/>", text="t", web_url="http://x")
    mine = await store.claim_deliveries(send.id, worker_id="w1", limit=readers - 1,
                                        now=utcnow())
    [theirs] = await store.claim_deliveries(send.id, worker_id="w2", limit=1, now=utcnow())
    return send.id, mine, theirs


def sent(recipient: Recipient) -> Outcome:
    return Outcome(recipient.delivery_id, DeliveryStatus.SENT, 250, "2.0.0 Ok",
                   message_id=f"<{recipient.delivery_id}@example.com>")


async def test_a_body_may_leave_only_once_its_row_is_marked_sending_and_still_ours(
    store: Store,
) -> None:
    send_id, mine, theirs = await claimed(store, 3)
    async with Journal(store, worker_id="w1", bounce_limit=1) as journal:
        pending = PendingOutcomes(journal)
        assert await pending.hand_over(mine[0].delivery_id)
        assert not await pending.hand_over(theirs.delivery_id)  # w2 holds it
    counts = await store.delivery_counts(send_id)
    assert (counts[DeliveryStatus.SENDING], counts[DeliveryStatus.PENDING]) == (1, 2)


async def test_outcomes_ride_along_with_the_next_mark_and_then_are_no_longer_pending(
    store: Store,
) -> None:
    send_id, mine, _ = await claimed(store, 3)
    async with Journal(store, worker_id="w1", bounce_limit=1) as journal:
        pending = PendingOutcomes(journal)
        assert await pending.hand_over(mine[0].delivery_id)
        pending.add(sent(mine[0]))
        assert (await store.delivery_counts(send_id))[DeliveryStatus.SENT] == 0  # waits
        assert await pending.hand_over(mine[1].delivery_id)
        assert pending.outcomes == []
        assert not await pending.hand_over()  # nothing to write: no commit at all
    counts = await store.delivery_counts(send_id)
    assert (counts[DeliveryStatus.SENT], counts[DeliveryStatus.SENDING]) == (1, 1)


async def test_connections_handing_over_together_each_get_their_own_answer(
    store: Store,
) -> None:
    send_id, mine, theirs = await claimed(store, 4)
    async with Journal(store, worker_id="w1", bounce_limit=1) as journal:
        connections = [PendingOutcomes(journal) for _ in range(4)]
        ids = [r.delivery_id for r in mine] + [theirs.delivery_id]
        answers = await asyncio.gather(*(p.hand_over(i) for p, i in zip(connections, ids,
                                                                            strict=True)))
    assert answers == [True, True, True, False]
    assert (await store.delivery_counts(send_id))[DeliveryStatus.SENDING] == 3


async def test_outcomes_without_a_mark_to_ride_with_are_full_after_a_bounded_number(
    store: Store,
) -> None:
    _, mine, _ = await claimed(store, 2)
    async with Journal(store, worker_id="w1", bounce_limit=1) as journal:
        pending = PendingOutcomes(journal)
        refused = Outcome(mine[0].delivery_id, DeliveryStatus.PENDING, 451, "4.7.1 later",
                          retry_at=utcnow())
        for _ in range(MAX_PENDING_OUTCOMES - 1):
            pending.add(refused)
        assert not pending.full
        pending.add(refused)
        assert pending.full
        assert not await pending.hand_over()  # written; no mark asked for
        assert not pending.full
