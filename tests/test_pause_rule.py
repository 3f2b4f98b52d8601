"""The pause rule of a send (Dispatcher._note_attempt): when at least max_error_rate of the
last error_window attempts did not end sent, the send pauses itself and stops taking
messages, so a dead relay stops it at once while one bad address among many never does.

A real Dispatcher on a real store; no message is sent (the rule only sees outcomes).
test_dispatch covers the same rule end to end against a dead SMTP server.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from mailer.content.render import UNSUBSCRIBE_SLOT, RenderedIssue
from mailer.delivery.dispatch import Dispatcher
from mailer.delivery.message import Letter, list_id
from mailer.delivery.outcomes import DispatchSettings
from mailer.delivery.transport import SmtpTransport, parse_smtp_url
from mailer.states import DeliveryStatus
from mailer.store import Outcome, Store

# The rule never touches the database: one backend is enough.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

BASE_URL = "http://127.0.0.1:8025"
SENT = Outcome(1, DeliveryStatus.SENT, 250, "2.0.0 Ok")
REFUSED = Outcome(2, DeliveryStatus.PENDING, 421, "421 4.3.2 relay down")
BOUNCED = Outcome(3, DeliveryStatus.FAILED, 550, "550 5.1.1 no such user")
IN_DOUBT = Outcome(4, DeliveryStatus.UNKNOWN, None, "connection lost after the data")


def dispatcher(store: Store, *, window: int, rate: float) -> Dispatcher:
    rendered = RenderedIssue(subject="Issue 1", preheader="",
                             html=f'<p>Hi</p><a href="{UNSUBSCRIBE_SLOT}">leave</a>',
                             text=f"Hi\n\nleave: {UNSUBSCRIBE_SLOT}\n",
                             web_url=f"{BASE_URL}/issues/ml-issues/issue-1")
    letter = Letter(sender="Machine Learning Issues <newsletter@example.com>", reply_to=None,
                    list_id=list_id("ml-issues", BASE_URL), rendered=rendered)
    target = parse_smtp_url("smtp://127.0.0.1:25")
    return Dispatcher(store, send_id=1, letter=letter, secret_key="pause-test-key",
                      base_url=BASE_URL, worker_id="pause-test",
                      transport_factory=lambda: SmtpTransport(target),
                      settings=DispatchSettings(error_window=window, max_error_rate=rate))


def note(d: Dispatcher, outcomes: Iterable[Outcome]) -> None:
    for outcome in outcomes:
        d._note_attempt(outcome)


def paused(d: Dispatcher) -> bool:
    assert (d.pause_reason is not None) == d.stopping  # a pause always stops the dispatcher
    return d.pause_reason is not None


async def test_a_full_window_with_the_error_rate_reached_pauses_and_says_why(
    store: Store,
) -> None:
    d = dispatcher(store, window=10, rate=0.5)
    note(d, [SENT] * 5 + [REFUSED] * 4)
    assert not paused(d)
    note(d, [REFUSED])  # 5 of the last 10: exactly the rate
    assert paused(d)
    assert d.pause_reason == "5 of the last 10 attempts failed (last: 421 4.3.2 relay down)"


async def test_one_failure_short_of_the_rate_does_not_pause(store: Store) -> None:
    d = dispatcher(store, window=10, rate=0.5)
    note(d, [REFUSED, SENT] * 2 + [SENT] * 2 + [REFUSED, SENT] * 2)  # 4 of 10
    assert not paused(d)


async def test_no_pause_before_the_window_is_full_even_if_every_attempt_failed(
    store: Store,
) -> None:
    d = dispatcher(store, window=10, rate=0.5)
    note(d, [REFUSED] * 9)
    assert not paused(d)
    note(d, [REFUSED])
    assert paused(d)
    assert d.pause_reason.startswith("10 of the last 10 attempts failed")


async def test_the_window_slides_so_old_failures_no_longer_count(store: Store) -> None:
    d = dispatcher(store, window=10, rate=0.5)
    note(d, [REFUSED] * 4 + [SENT] * 6)  # 4 of 10
    note(d, [SENT] * 4 + [REFUSED] * 4)  # the first 4 failures left the window: 4 of 10
    assert not paused(d)
    note(d, [REFUSED])  # 5 of the last 10
    assert paused(d)


async def test_one_bad_address_among_thousands_never_pauses(store: Store) -> None:
    d = dispatcher(store, window=50, rate=0.5)
    for i in range(5000):
        note(d, [BOUNCED if i % 100 == 0 else SENT])
    assert not paused(d)


@pytest.mark.parametrize("failure", [REFUSED, BOUNCED, IN_DOUBT], ids=["retry", "failed",
                                                                       "unknown"])
async def test_every_attempt_not_sent_counts_as_an_error(store: Store, failure: Outcome) -> None:
    d = dispatcher(store, window=4, rate=0.75)
    note(d, [SENT, failure, failure, failure])
    assert paused(d)
    assert d.pause_reason == f"3 of the last 4 attempts failed (last: {failure.smtp_reply})"


async def test_the_reason_names_the_status_when_there_was_no_reply(store: Store) -> None:
    d = dispatcher(store, window=2, rate=1.0)
    note(d, [Outcome(5, DeliveryStatus.UNKNOWN)] * 2)
    assert d.pause_reason == "2 of the last 2 attempts failed (last: unknown)"


async def test_a_rate_of_one_pauses_only_when_the_whole_window_failed(store: Store) -> None:
    d = dispatcher(store, window=5, rate=1.0)
    note(d, [REFUSED] * 4 + [SENT] + [REFUSED] * 4)
    assert not paused(d)
    note(d, [REFUSED])
    assert paused(d)


async def test_the_first_reason_is_kept_while_failures_go_on(store: Store) -> None:
    d = dispatcher(store, window=3, rate=0.5)
    note(d, [SENT, REFUSED, REFUSED])
    first = d.pause_reason
    assert first == "2 of the last 3 attempts failed (last: 421 4.3.2 relay down)"
    note(d, [BOUNCED] * 5)
    assert d.pause_reason == first
