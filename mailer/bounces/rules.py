"""The bounce rules (pure): what a returned message of each kind does to its address.

hard       the address is `bounced` across the install, at once.
soft       the address is `bounced` once `soft_bounce_limit` of its messages bounced soft
           within `soft_bounce_days` (see `soft_bounces` for the window and its reset).
complaint  every subscription of the address is `complained`, at once.
policy     nothing against the address: a 5.7.x refusal is about our reputation or content,
           so it is counted against the send (`mailer status`).
auto-reply, delayed, unknown: stored as evidence only.

Coming back: an import never revives a bounced or complained address (it confirms pending
ones only). Signing up again through the public form does, the deliberate way: the
subscription becomes pending in a new token generation and is confirmed only by the link
mailed to that address, which proves both the mailbox and the will (mailer.store.signups).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailer.returns.kinds import ReturnKind
from mailer.rows import PastDelivery
from mailer.states import SubscriptionStatus

# RFC 5321 §4.5.4.1: a sender gives up on a message after "at least 4-5 days", and only
# then writes the DSN. A message accepted this long ago with nothing back got through.
SETTLE = timedelta(days=5)

IGNORED_KINDS = (ReturnKind.AUTO_REPLY, ReturnKind.DELAYED, ReturnKind.UNKNOWN)


@dataclass(frozen=True, slots=True)
class Decision:
    """What a returned message does: the status its address takes (None: none) and why."""

    suppress: SubscriptionStatus | None
    action: str  # one human line, as Applied.action


def soft_bounces(history: Sequence[PastDelivery], *, this: int, this_sent_at: datetime | None,
                 days: float, now: datetime) -> int:
    """How many soft bounces count against an address, this one (delivery `this`) included.

    The window: a message counts when a soft bounce for it arrived within the last `days`
    (days before `now`), so old trouble is forgotten; each message counts once, however
    many reports came back for it (a DSN per relay, a retried webhook).

    The reset: a later successful delivery starts the count again. "Later" is by when our
    messages were *sent*, not when their bounces arrived: a soft DSN typically comes days
    after its message, once the remote queue gives up, and by then newer issues may have
    gone out; ordering by arrival would let a message sent before the good one count.
    "Successful" means accepted by our relay, nothing bounced for it, and sent at least
    SETTLE (5 days, RFC 5321's give-up time) before `now`: until then its own DSN may still
    be on the way. So the count is: soft-bounced messages sent after the newest settled,
    unbounced message, with their bounce inside the window.

    Mailman 3 scores bounces the same way in spirit (a bounce score that goes stale after
    `bounce_info_stale_after` days without bounces) but cannot see deliveries that went
    through; with a per-delivery log we can, and do.
    """
    settled = now - SETTLE
    good = [d.sent_at for d in history
            if d.delivery_id != this and not d.bounced and d.sent_at <= settled]
    reset = max(good, default=None)
    since = now - timedelta(days=days)
    counted = {d.delivery_id for d in history
               if d.delivery_id != this and d.soft_bounced_at is not None
               and d.soft_bounced_at >= since and (reset is None or d.sent_at > reset)}
    if reset is None or this_sent_at is None or this_sent_at > reset:
        counted.add(this)
    return len(counted)


def decide(kind: ReturnKind, *, address: str, send: str, soft_count: int = 0,
           soft_limit: int = 3, soft_days: float = 30) -> Decision:
    """The status `address` takes for a returned message of `kind` about a message of
    `send` ("newsletter/slug"), and the line that says so; `soft_count` is what
    soft_bounces counted."""
    if kind == ReturnKind.HARD:
        return Decision(SubscriptionStatus.BOUNCED, f"hard bounce: {address} is now bounced")
    if kind == ReturnKind.SOFT:
        line = f"soft bounce {soft_count} of {soft_limit} within {soft_days:g} days"
        if soft_count >= soft_limit:
            return Decision(SubscriptionStatus.BOUNCED, f"{line}: {address} is now bounced")
        return Decision(None, line)
    if kind == ReturnKind.COMPLAINT:
        return Decision(SubscriptionStatus.COMPLAINED,
                        f"complaint: {address} is now complained")
    if kind == ReturnKind.POLICY:
        return Decision(None, f"policy refusal counted against {send}")
    return Decision(None, f"ignored: {kind.value.replace('_', '-')}")
