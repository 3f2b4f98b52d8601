"""Sending quotas (pure): a token bucket per process and a sliding one-hour window.

Besides the two counters, the decisions the claim loop takes with them live here: each
live process's share of the per-second rate and how much it may claim at once, how long a
full hour waits, and the random pause after giving claims back.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

# A sending process counts as live (it takes its share of the rate, and keeps its claims)
# while its heartbeat is younger than this; mailer.sending.prepare releases older ones.
HEARTBEAT_TIMEOUT = timedelta(seconds=60)
# The longest a full hour's window waits before looking again: a send may finish elsewhere.
_LONGEST_QUOTA_WAIT = 60.0


class TokenBucket:
    """At most `rate` takes a second on average, and never more than `capacity` at once.

    `reserve()` never blocks: it takes a token at once, going into debt when the bucket is
    empty, and says how long the caller must wait before using it. So many concurrent
    takers each get their own evenly spaced slot, and a caller that wakes up late does not
    lose the next slot (the debt is measured from the slots, not from when callers woke).
    The clock is injected, so the arithmetic is tested without sleeping.
    """

    def __init__(self, rate: float, *, capacity: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """A full bucket.

        Raises:
            ValueError: a rate that is not positive, or room for less than one token.
        """
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._check(rate)
        self._rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._updated = clock()

    @staticmethod
    def _check(rate: float) -> None:
        if not rate > 0:  # also refuses NaN
            raise ValueError(f"rate must be positive, got {rate}")

    @property
    def rate(self) -> float:
        return self._rate

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self.capacity, self._tokens + elapsed * self._rate)
        self._updated = now

    def set_rate(self, rate: float) -> None:
        """Go on at `rate` from now; what accrued so far accrued at the old rate.

        Raises:
            ValueError: a rate that is not positive.
        """
        self._check(rate)
        self._refill()
        self._rate = rate

    def reserve(self, tokens: float = 1.0) -> float:
        """Take `tokens` now; the seconds to wait before using them (0.0: go at once)."""
        self._refill()
        self._tokens -= tokens
        return 0.0 if self._tokens >= 0 else -self._tokens / self._rate


@dataclass(frozen=True)
class SlidingWindow:
    """At most `limit` messages in any `span` (a provider's "N an hour"), counted elsewhere.

    The counting is the database's (every sending process sees the same rows); this only
    turns a count into what may be taken now and how long a full window stays full.
    """

    limit: int
    span: timedelta = timedelta(hours=1)

    def allowance(self, used: int) -> int:
        """How many more messages the window takes now."""
        return max(0, self.limit - used)

    def reopens_in(self, oldest: datetime | None, *, now: datetime) -> float | None:
        """Seconds until the oldest counted message leaves the window (None: none is dated).

        A full window whose count is only messages in flight has no date to wait for: the
        caller looks again after a short while.
        """
        if oldest is None:
            return None
        return max(0.0, (oldest + self.span - now).total_seconds())

    def wait_when_full(self, oldest: datetime | None, *, now: datetime,
                       poll_seconds: float) -> float:
        """Seconds a claimer with a full window waits before counting again.

        Until the oldest message leaves (a hair later, so the count surely sees it gone),
        at most a minute; `poll_seconds` when only messages in flight are counted.
        """
        wait = self.reopens_in(oldest, now=now)
        return poll_seconds if wait is None else min(wait + 0.01, _LONGEST_QUOTA_WAIT)

    def excess(self, used: int, *, claimed: int) -> int:
        """How many of the `claimed` rows (already in `used`) must be given back (0: none)."""
        return max(0, min(claimed, used - self.limit))


def share_of_rate(rate: float, *, live_workers: int) -> float:
    """This process's part of a per-second rate shared by every live sending process."""
    return rate / max(1, live_workers)


def claim_limit_for_share(share: float) -> int:
    """How many rows one claim may take at `share` messages a second.

    About two seconds' worth, never less than one: a worker that joins or leaves changes
    the share, and that is noticed at the next claim, within seconds.
    """
    return max(1, int(share * 2))


def give_back_pause(poll_seconds: float) -> float:
    """Seconds to wait after giving claims back over the hour's quota.

    Two claimers may both have counted the same free room and both given back: a random
    pause lets one of them claim first next time, instead of colliding again and again.
    """
    return random.uniform(0, poll_seconds)
