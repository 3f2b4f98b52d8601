"""The pause rule of a send (PauseRule): when at least max_error_rate of the last
error_window attempts did not end sent, the send pauses itself, so a dead relay stops it at
once while one bad address among many never does.

The rule is pure: it only sees outcomes. test_dispatch covers the same rule end to end
against a dead SMTP server (the Dispatcher stops and the send is marked paused).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from mailer.delivery.pause import PauseRule
from mailer.rows import Outcome
from mailer.states import DeliveryStatus

SENT = Outcome(1, DeliveryStatus.SENT, 250, "2.0.0 Ok")
REFUSED = Outcome(2, DeliveryStatus.PENDING, 421, "421 4.3.2 relay down")
BOUNCED = Outcome(3, DeliveryStatus.FAILED, 550, "550 5.1.1 no such user")
IN_DOUBT = Outcome(4, DeliveryStatus.UNKNOWN, None, "connection lost after the data")


def rule_of(*, window: int, rate: float) -> PauseRule:
    return PauseRule(window=window, max_error_rate=rate)


def note(rule: PauseRule, outcomes: Iterable[Outcome]) -> None:
    for outcome in outcomes:
        rule.note(outcome)


def paused(rule: PauseRule) -> bool:
    return rule.reason is not None


def test_a_full_window_with_the_error_rate_reached_pauses_and_says_why() -> None:
    rule = rule_of(window=10, rate=0.5)
    note(rule, [SENT] * 5 + [REFUSED] * 4)
    assert not paused(rule)
    note(rule, [REFUSED])  # 5 of the last 10: exactly the rate
    assert paused(rule)
    assert rule.reason == "5 of the last 10 attempts failed (last: 421 4.3.2 relay down)"


def test_one_failure_short_of_the_rate_does_not_pause() -> None:
    rule = rule_of(window=10, rate=0.5)
    note(rule, [REFUSED, SENT] * 2 + [SENT] * 2 + [REFUSED, SENT] * 2)  # 4 of 10
    assert not paused(rule)


def test_no_pause_before_the_window_is_full_even_if_every_attempt_failed() -> None:
    rule = rule_of(window=10, rate=0.5)
    note(rule, [REFUSED] * 9)
    assert not paused(rule)
    note(rule, [REFUSED])
    assert paused(rule)
    assert rule.reason.startswith("10 of the last 10 attempts failed")


def test_the_window_slides_so_old_failures_no_longer_count() -> None:
    rule = rule_of(window=10, rate=0.5)
    note(rule, [REFUSED] * 4 + [SENT] * 6)  # 4 of 10
    note(rule, [SENT] * 4 + [REFUSED] * 4)  # the first 4 failures left the window: 4 of 10
    assert not paused(rule)
    note(rule, [REFUSED])  # 5 of the last 10
    assert paused(rule)


def test_one_bad_address_among_thousands_never_pauses() -> None:
    rule = rule_of(window=50, rate=0.5)
    for i in range(5000):
        note(rule, [BOUNCED if i % 100 == 0 else SENT])
    assert not paused(rule)


@pytest.mark.parametrize("failure", [REFUSED, BOUNCED, IN_DOUBT], ids=["retry", "failed",
                                                                       "unknown"])
def test_every_attempt_not_sent_counts_as_an_error(failure: Outcome) -> None:
    rule = rule_of(window=4, rate=0.75)
    note(rule, [SENT, failure, failure, failure])
    assert paused(rule)
    assert rule.reason == f"3 of the last 4 attempts failed (last: {failure.smtp_reply})"


def test_the_reason_names_the_status_when_there_was_no_reply() -> None:
    rule = rule_of(window=2, rate=1.0)
    note(rule, [Outcome(5, DeliveryStatus.UNKNOWN)] * 2)
    assert rule.reason == "2 of the last 2 attempts failed (last: unknown)"


def test_a_rate_of_one_pauses_only_when_the_whole_window_failed() -> None:
    rule = rule_of(window=5, rate=1.0)
    note(rule, [REFUSED] * 4 + [SENT] + [REFUSED] * 4)
    assert not paused(rule)
    note(rule, [REFUSED])
    assert paused(rule)


def test_the_first_reason_is_kept_while_failures_go_on() -> None:
    rule = rule_of(window=3, rate=0.5)
    note(rule, [SENT, REFUSED, REFUSED])
    first = rule.reason
    assert first == "2 of the last 3 attempts failed (last: 421 4.3.2 relay down)"
    note(rule, [BOUNCED] * 5)
    assert rule.reason == first


def test_the_reason_is_returned_once_when_the_rate_is_reached_and_never_again() -> None:
    rule = rule_of(window=2, rate=0.5)
    assert rule.note(SENT) is None
    reason = rule.note(REFUSED)
    assert reason == "1 of the last 2 attempts failed (last: 421 4.3.2 relay down)"
    assert [rule.note(REFUSED) for _ in range(3)] == [None, None, None]
    assert rule.reason == reason
