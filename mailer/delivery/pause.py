"""When a send pauses itself: too many of its recent attempts failed (pure rule, no I/O)."""

from __future__ import annotations

from collections import deque

from mailer.rows import Outcome
from mailer.states import DeliveryStatus


class PauseRule:
    """Fed every attempt's outcome; says once, with the reason, when the send must pause.

    listmonk's MaxSendErrors, as a rate over a sliding window of the last `window`
    attempts: one bad address among thousands of good ones never pauses a send, a dead
    relay does as soon as the window is full. Anything but SENT counts as an error.
    """

    def __init__(self, *, window: int, max_error_rate: float) -> None:
        self.window = window
        self._threshold = max_error_rate * window
        self._recent: deque[bool] = deque(maxlen=window)
        self._errors = 0  # how many of _recent are True, kept as they come and go
        self.reason: str | None = None

    def note(self, outcome: Outcome) -> str | None:
        """Count one attempt; the reason to pause if this one reached the rate, else None.

        The reason is given once: later outcomes keep the first one and return None.
        """
        failed = outcome.status != DeliveryStatus.SENT
        if self._recent and len(self._recent) == self.window:  # the oldest drops out
            self._errors -= self._recent[0]
        self._recent.append(failed)
        self._errors += failed
        if self.reason is not None or len(self._recent) < self.window or \
                self._errors < self._threshold:
            return None
        self.reason = (f"{self._errors} of the last {self.window} attempts failed "
                       f"(last: {outcome.smtp_reply or outcome.status})")
        return self.reason
