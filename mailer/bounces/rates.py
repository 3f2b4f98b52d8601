"""A send's bounce and complaint rates, and the thresholds mailbox providers publish (pure).

Complaints: Gmail's and Yahoo's sender requirements (February 2024) ask bulk senders to stay
below 0.1% spam reports and never reach 0.3%; past that, mail goes to spam or is refused.
Bounces: no mailbox provider publishes one figure, so the hard bounce rate is held to the
ones sending services enforce: 2% is the common "look at your list" line (what most ESPs
ask for), 5% is where Amazon SES puts an account under review. Soft bounces are shown
beside them but not judged: a full mailbox or a host down for a day says little about a
list's hygiene. Each rate is per delivery that the relay accepted, each delivery counted
once per kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from mailer.returns.kinds import ReturnKind

COMPLAINT_WARNING = 0.001
COMPLAINT_ALARM = 0.003
BOUNCE_WARNING = 0.02
BOUNCE_ALARM = 0.05


class Level(StrEnum):
    """How a rate stands against its published threshold."""

    OK = "ok"
    WARNING = "warning"
    ALARM = "alarm"


@dataclass(frozen=True, slots=True)
class ReturnRates:
    """What came back for one send, against the messages of it that went out."""

    sent: int
    hard: int = 0
    soft: int = 0
    complaints: int = 0
    policy: int = 0

    @classmethod
    def of(cls, counts: Mapping[str, int], *, sent: int) -> ReturnRates:
        """The rates from Store.return_counts' mapping (kind → deliveries) and the sent count."""
        return cls(sent, counts.get(ReturnKind.HARD, 0), counts.get(ReturnKind.SOFT, 0),
                   counts.get(ReturnKind.COMPLAINT, 0), counts.get(ReturnKind.POLICY, 0))

    def rate(self, count: int) -> float:
        return count / self.sent if self.sent else 0.0

    @property
    def hard_level(self) -> Level:
        return _level(self.rate(self.hard), BOUNCE_WARNING, BOUNCE_ALARM)

    @property
    def complaint_level(self) -> Level:
        return _level(self.rate(self.complaints), COMPLAINT_WARNING, COMPLAINT_ALARM)


def _level(rate: float, warning: float, alarm: float) -> Level:
    if rate >= alarm:
        return Level.ALARM
    return Level.WARNING if rate >= warning else Level.OK
