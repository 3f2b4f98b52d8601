"""What one SMTP transaction's result means for its delivery: pure rules, no I/O.

RFC 5321 reply classes become delivery states here (sent, retried later with backoff,
failed, unknown), and a process's tally of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailer.errors import DeliveryInDoubt, PermanentFailure, TemporaryFailure
from mailer.rows import Outcome, Recipient
from mailer.states import DeliveryStatus


@dataclass(frozen=True)
class DispatchSettings:
    concurrency: int = 10
    batch_size: int = 200
    max_attempts: int = 5
    retry_base_seconds: float = 30.0
    hard_bounce_limit: int = 1
    poll_seconds: float = 0.5
    max_error_rate: float = 0.5
    error_window: int = 50
    rate_per_second: float = 0.0  # across all workers; 0: unlimited
    max_per_hour: int = 0  # across all workers and sends; 0: no hourly quota


@dataclass
class Tally:
    """Outcomes seen by this process during one run (the store holds the full truth)."""

    sent: int = 0
    failed: int = 0
    retried: int = 0
    unknown: int = 0

    def count(self, outcome: Outcome) -> None:
        if outcome.status == DeliveryStatus.SENT:
            self.sent += 1
        elif outcome.status == DeliveryStatus.FAILED:
            self.failed += 1
        elif outcome.status == DeliveryStatus.UNKNOWN:
            self.unknown += 1
        else:
            self.retried += 1


def retry_delay(attempts: int, base: float) -> timedelta:
    """Exponential backoff with equal jitter: retries of many recipients spread out.

    Equal jitter (uniform between half the ceiling and the ceiling) rather than full
    jitter: a retry never comes much sooner than its backoff step, yet retries still spread.
    """
    ceiling = min(3600.0, base * 2 ** max(0, attempts - 1))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


def outcome_of(recipient: Recipient, exc: BaseException | None, reply: tuple[int, str] | None,
               *, msg_id: str, settings: DispatchSettings, now: datetime,
               relay: str | None = None) -> Outcome:
    """Map the result of one SMTP transaction (through `relay`) to the delivery's next state.

    A cut after the final dot with no reply leaves the message with us (RFC 5321 §6.1: the
    server takes responsibility with its 250), so it is resent at once, on another
    connection, and marked a possible duplicate; a second cut, or one of our own making (a
    stop out of grace), makes it unknown: resent only on the author's request.
    """
    rid = recipient.delivery_id
    dup = recipient.possible_duplicate
    if exc is None:
        assert reply is not None
        return Outcome(rid, DeliveryStatus.SENT, reply[0], reply[1], message_id=msg_id,
                       relay=relay, possible_duplicate=dup)
    if isinstance(exc, DeliveryInDoubt):
        if exc.by_us or dup:
            return Outcome(rid, DeliveryStatus.UNKNOWN, None, str(exc), relay=relay,
                           possible_duplicate=dup)
        return Outcome(rid, DeliveryStatus.PENDING, None, f"{exc}; resent once", retry_at=now,
                       relay=relay, possible_duplicate=True)
    if isinstance(exc, PermanentFailure):
        return Outcome(rid, DeliveryStatus.FAILED, exc.code, str(exc), bounce=True,
                       relay=relay, possible_duplicate=dup)
    assert isinstance(exc, TemporaryFailure)
    attempts = recipient.attempts + 1
    if attempts >= settings.max_attempts:
        return Outcome(rid, DeliveryStatus.FAILED, exc.code, f"gave up after {attempts} "
                       f"attempts: {exc}", relay=relay, possible_duplicate=dup)
    return Outcome(rid, DeliveryStatus.PENDING, exc.code, str(exc), relay=relay,
                   retry_at=now + retry_delay(attempts, settings.retry_base_seconds),
                   possible_duplicate=dup)
