"""outcome_of: what one SMTP transaction's result makes of its delivery (pure rules, no I/O).

Each reply class goes through the transport's own classify() first, as in a send: 2yz is
sent, 4yz (and 552) is retried later with jittered backoff until max_attempts, 5yz fails
and counts as a bounce, and a connection lost after the body left is unknown.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from mailer.delivery.outcomes import DispatchSettings, outcome_of, retry_delay
from mailer.delivery.wire import classify
from mailer.errors import DeliveryInDoubt, PermanentFailure, TemporaryFailure
from mailer.states import DeliveryStatus
from mailer.store import Outcome, Recipient

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
SETTINGS = DispatchSettings(max_attempts=5, retry_base_seconds=30.0)
SAMPLES = 200  # draws per backoff check: all must fall within the bounds


def recipient(attempts: int = 0) -> Recipient:
    return Recipient(delivery_id=7, subscription_id=3, email="ada@example.com", name="Ada",
                     attempts=attempts)


def outcome(exc: BaseException | None, *, attempts: int = 0,
            reply: tuple[int, str] | None = None, settings: DispatchSettings = SETTINGS,
            ) -> Outcome:
    return outcome_of(recipient(attempts), exc, reply, msg_id="<m1@example.com>",
                      settings=settings, now=NOW)


def test_a_2yz_reply_is_sent_with_the_reply_and_message_id() -> None:
    got = outcome(None, reply=(250, "2.0.0 Ok: queued as 4F2"))
    assert (got.delivery_id, got.status, got.smtp_code, got.smtp_reply, got.message_id) == (
        7, DeliveryStatus.SENT, 250, "2.0.0 Ok: queued as 4F2", "<m1@example.com>")
    assert got.retry_at is None and not got.bounce


@pytest.mark.parametrize(("code", "reply", "status", "bounce"), [
    (421, "4.3.2 service shutting down", DeliveryStatus.PENDING, False),
    (450, "4.2.1 mailbox busy", DeliveryStatus.PENDING, False),
    (451, "4.7.1 greylisted, try again", DeliveryStatus.PENDING, False),
    (452, "4.5.3 too many recipients", DeliveryStatus.PENDING, False),
    # 552 is transient on purpose (RFC 5321 4.5.3.1.10): a full mailbox empties.
    (552, "5.2.2 mailbox full", DeliveryStatus.PENDING, False),
    (550, "5.1.1 no such user", DeliveryStatus.FAILED, True),
    (553, "5.1.3 bad address syntax", DeliveryStatus.FAILED, True),
    (554, "5.7.1 rejected as spam", DeliveryStatus.FAILED, True),
])
def test_each_reply_class_becomes_its_delivery_state(
    code: int, reply: str, status: DeliveryStatus, bounce: bool,
) -> None:
    error = classify(code, reply, "ada@example.com")
    got = outcome(error)
    assert (got.status, got.smtp_code, got.bounce) == (status, code, bounce)
    assert got.smtp_reply == f"{code} {reply}"
    assert got.message_id is None
    assert (got.retry_at is not None) == (status == DeliveryStatus.PENDING)


def test_a_cut_after_the_final_dot_is_resent_at_once_as_a_possible_duplicate() -> None:
    got = outcome(DeliveryInDoubt("no reply to the final dot: connection lost"))
    assert (got.status, got.smtp_code, got.retry_at, got.bounce, got.possible_duplicate) == (
        DeliveryStatus.PENDING, None, NOW, False, True)
    assert got.smtp_reply == "no reply to the final dot: connection lost; resent once"


def test_a_second_cut_of_a_resent_message_is_unknown_never_a_third_copy() -> None:
    resent = dataclasses.replace(recipient(1), possible_duplicate=True)
    got = outcome_of(resent, DeliveryInDoubt("no reply to the final dot"), None,
                     msg_id="<m1@example.com>", settings=SETTINGS, now=NOW)
    assert (got.status, got.retry_at, got.possible_duplicate) == (
        DeliveryStatus.UNKNOWN, None, True)


def test_a_cut_of_our_own_making_is_unknown_and_not_resent() -> None:
    got = outcome(DeliveryInDoubt("cut by this process", by_us=True))
    assert (got.status, got.retry_at, got.possible_duplicate) == (
        DeliveryStatus.UNKNOWN, None, False)


def test_a_connection_lost_before_the_body_left_is_retried_without_a_code() -> None:
    got = outcome(TemporaryFailure("connection refused"))
    assert (got.status, got.smtp_code, got.smtp_reply) == (
        DeliveryStatus.PENDING, None, "connection refused")
    assert got.retry_at is not None


@pytest.mark.parametrize("attempts_before", [0, 1, 2, 3])
def test_a_temporary_failure_below_max_attempts_is_retried(attempts_before: int) -> None:
    got = outcome(classify(451, "4.7.1 greylisted"), attempts=attempts_before)
    assert got.status == DeliveryStatus.PENDING
    assert got.smtp_reply == "451 4.7.1 greylisted"


@pytest.mark.parametrize("attempts_before", [4, 5, 9])
def test_the_attempt_reaching_max_attempts_fails_the_delivery_without_a_bounce(
    attempts_before: int,
) -> None:
    got = outcome(classify(451, "4.7.1 greylisted"), attempts=attempts_before)
    assert (got.status, got.smtp_code, got.retry_at, got.bounce) == (
        DeliveryStatus.FAILED, 451, None, False)
    assert got.smtp_reply == f"gave up after {attempts_before + 1} attempts: 451 4.7.1 greylisted"


def test_max_attempts_one_gives_up_at_the_first_temporary_failure() -> None:
    got = outcome(classify(421, "4.3.2 busy"), settings=DispatchSettings(max_attempts=1))
    assert got.status == DeliveryStatus.FAILED
    assert got.smtp_reply == "gave up after 1 attempts: 421 4.3.2 busy"


@pytest.mark.parametrize(("attempts_before", "ceiling"), [
    (0, 30.0), (1, 60.0), (2, 120.0), (3, 240.0),
])
def test_retry_at_is_within_the_jittered_backoff_of_that_attempt(
    attempts_before: int, ceiling: float,
) -> None:
    # Full jitter over the upper half: base * 2^(attempt-1), halved at the low end.
    delays = [outcome(classify(451, "4.7.1 later"), attempts=attempts_before).retry_at - NOW
              for _ in range(SAMPLES)]
    low, high = timedelta(seconds=ceiling / 2), timedelta(seconds=ceiling)
    assert all(low <= d <= high for d in delays), (min(delays), max(delays))
    # Jittered, not one fixed delay: the draws spread over the range.
    assert max(delays) - min(delays) > (high - low) / 2, (min(delays), max(delays))


def test_the_backoff_is_capped_at_an_hour() -> None:
    delays = [retry_delay(attempts, 30.0) for attempts in (8, 12, 40) for _ in range(SAMPLES)]
    assert all(timedelta(minutes=30) <= d <= timedelta(hours=1) for d in delays)


def test_a_zero_retry_base_retries_at_once() -> None:
    got = outcome(classify(451, "4.7.1 later"),
                  settings=DispatchSettings(max_attempts=5, retry_base_seconds=0))
    assert got.retry_at == NOW


def test_a_permanent_failure_keeps_its_code_and_counts_as_a_bounce() -> None:
    got = outcome(PermanentFailure("550 5.1.1 gone", code=550, reply="5.1.1 gone"),
                  attempts=3)
    assert (got.status, got.smtp_code, got.smtp_reply, got.bounce, got.retry_at) == (
        DeliveryStatus.FAILED, 550, "550 5.1.1 gone", True, None)
