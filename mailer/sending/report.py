"""One delivery report: the counts of a send, and who hears how its delivery goes.

Every entry point delivers a send the same way (deliver_with_report) and only presents
what it hears: the CLI as a progress bar, the daemon and the worker as log lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mailer.config import Newsletter
from mailer.delivery.outcomes import Tally
from mailer.rows import DeliveryCounts, Outcome, SendRow
from mailer.sending.sender import Sender
from mailer.store import Store


async def delivery_counts(store: Store, send_id: int) -> DeliveryCounts:
    """The send's counts as they are now in the database (every process's work)."""
    return DeliveryCounts.of(await store.delivery_counts(send_id),
                             possible_duplicates=await store.possible_duplicates(send_id))


@dataclass(frozen=True)
class Report:
    """How a delivery run ended: the send as it is now, its counts, and this process's tally."""

    send: SendRow
    counts: DeliveryCounts
    tally: Tally
    relay_failure: str | None = None  # no relay answered (each one's name and reason)


class DeliveryObserver(Protocol):
    """Hears how one delivery run goes; implemented by the progress bar and the log lines."""

    def started(self, send: SendRow, counts: DeliveryCounts) -> None:
        """The run begins with these counts."""

    def delivered(self, outcome: Outcome) -> None:
        """One delivery was recorded (PENDING: a retry comes later)."""

    def finished(self, report: Report) -> None:
        """The run ended: finished, paused, stopped or interrupted (see report.send)."""


async def deliver_with_report(sender: Sender, send: SendRow, newsletter: Newsletter,
                              observer: DeliveryObserver, *, background: bool = False
                              ) -> Report:
    """Deliver every open delivery of `send` from this process, telling `observer`
    (`background`: an automatic email, which gives way to an issue; see Sender.deliver)."""
    observer.started(send, await delivery_counts(sender.store, send.id))
    tally = await sender.deliver(send, newsletter, on_outcome=observer.delivered,
                                 background=background)
    report = Report(send=await sender.store.get_send(send.id),
                    counts=await delivery_counts(sender.store, send.id), tally=tally,
                    relay_failure=sender.relay_failure)
    observer.finished(report)
    return report
