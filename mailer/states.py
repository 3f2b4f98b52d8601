"""The states a subscription, a send and a delivery go through, and the clock they are
stamped with (pure: the store maps them to columns, everything else reads them)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime


class SubscriptionStatus(enum.StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    # Reported as spam by its reader (an ARF report, a provider's complaint): no further
    # mail of this install, like BOUNCED; only their own double opt-in brings them back.
    COMPLAINED = "complained"


class SendStatus(enum.StrEnum):
    SENDING = "sending"
    PAUSED = "paused"
    FINISHED = "finished"


class SendKind(enum.StrEnum):
    """What a send carries: an issue, or one of a newsletter's automatic emails (never in
    the archive, never picked as a due issue, queued reader by reader as each is due)."""

    ISSUE = "issue"
    WELCOME = "welcome"  # welcome.md: once to each reader when they confirm
    STEP = "step"  # sequence/*.md: once to each reader, `after` their confirmation


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting, or claimed by a worker (claimed_by set) but not started
    SENDING = "sending"  # its body has started to leave: ambiguous if the sender dies now
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"  # the sender died mid-transaction: maybe delivered, never resent blindly
    SKIPPED = "skipped"  # unsubscribed, bounced or removed after the send was queued


def utcnow() -> datetime:
    return datetime.now(UTC)
