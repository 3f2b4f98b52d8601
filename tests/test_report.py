"""The delivery report's counts (mailer.sending.report.DeliveryCounts): pure arithmetic."""

from __future__ import annotations

from mailer.rows import DeliveryCounts
from mailer.states import DeliveryStatus


def test_counts_name_open_done_and_undelivered_from_the_stores_mapping() -> None:
    counts = DeliveryCounts.of({DeliveryStatus.PENDING: 4, DeliveryStatus.SENDING: 2,
                                DeliveryStatus.SENT: 10, DeliveryStatus.FAILED: 1,
                                DeliveryStatus.UNKNOWN: 3, DeliveryStatus.SKIPPED: 5})

    assert (counts.open, counts.done, counts.total) == (6, 19, 25)
    assert counts.undelivered == 1 + 3 + 6  # skipped recipients left; they are not owed it
    assert counts.settled() == {"sent": 10, "failed": 1, "unknown": 3, "skipped": 5}


def test_a_state_missing_from_the_mapping_counts_zero() -> None:
    counts = DeliveryCounts.of({DeliveryStatus.SENT: 2})
    assert counts == DeliveryCounts(sent=2)
    assert (counts.open, counts.done, counts.undelivered) == (0, 2, 0)
