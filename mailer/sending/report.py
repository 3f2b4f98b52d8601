"""One delivery report: the counts of a send, and who hears how its delivery goes.

Every entry point delivers a send the same way (deliver_with_report) and only presents
what it hears: the CLI as a progress bar, the daemon and the worker as log lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from mailer.config import Newsletter
from mailer.delivery.outcomes import Tally
from mailer.rows import Outcome, SendRow
from mailer.sending.sender import Sender
from mailer.states import DeliveryStatus
from mailer.store import Store


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    """A send's deliveries by state; recipients not yet queued count as pending."""

    pending: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0

    @classmethod
    def of(cls, by_state: Mapping[DeliveryStatus, int]) -> DeliveryCounts:
        """The counts of Store.delivery_counts' mapping."""
        return cls(**{state.value: by_state.get(state, 0) for state in DeliveryStatus})

    @property
    def open(self) -> int:
        """Not finished one way or the other: waiting (or retrying later), or in flight."""
        return self.pending + self.sending

    @property
    def total(self) -> int:
        return self.open + self.sent + self.failed + self.unknown + self.skipped

    @property
    def done(self) -> int:
        """Finished one way or the other (sent, failed, unknown, skipped)."""
        return self.total - self.open

    @property
    def undelivered(self) -> int:
        """Recipients who have not got the issue for sure: failed, unknown or still open."""
        return self.failed + self.unknown + self.open

    def settled(self) -> dict[str, int]:
        """The finished states by name, for a log line's fields."""
        return {"sent": self.sent, "failed": self.failed, "unknown": self.unknown,
                "skipped": self.skipped}


async def delivery_counts(store: Store, send_id: int) -> DeliveryCounts:
    """The send's counts as they are now in the database (every process's work)."""
    return DeliveryCounts.of(await store.delivery_counts(send_id))


@dataclass(frozen=True)
class Report:
    """How a delivery run ended: the send as it is now, its counts, and this process's tally."""

    send: SendRow
    counts: DeliveryCounts
    tally: Tally


class DeliveryObserver(Protocol):
    """Hears how one delivery run goes; implemented by the progress bar and the log lines."""

    def started(self, send: SendRow, counts: DeliveryCounts) -> None:
        """The run begins with these counts."""

    def delivered(self, outcome: Outcome) -> None:
        """One delivery was recorded (PENDING: a retry comes later)."""

    def finished(self, report: Report) -> None:
        """The run ended: finished, paused, stopped or interrupted (see report.send)."""


async def deliver_with_report(sender: Sender, send: SendRow, newsletter: Newsletter,
                              observer: DeliveryObserver) -> Report:
    """Deliver every open delivery of `send` from this process, telling `observer`."""
    observer.started(send, await delivery_counts(sender.store, send.id))
    tally = await sender.deliver(send, newsletter, on_outcome=observer.delivered)
    report = Report(send=await sender.store.get_send(send.id),
                    counts=await delivery_counts(sender.store, send.id), tally=tally)
    observer.finished(report)
    return report
