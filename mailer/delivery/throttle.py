"""Sending quotas (pure): a token bucket per process and a sliding one-hour window."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta


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
