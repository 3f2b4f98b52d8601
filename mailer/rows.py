"""The plain values the store hands out (no ORM objects that could lazy-load)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from mailer.states import DeliveryStatus, SendKind, SendStatus, SubscriptionStatus


@dataclass(frozen=True, slots=True)
class Recipient:
    """A claimed delivery: what a worker needs to build and send one message."""

    delivery_id: int
    subscription_id: int | None
    email: str
    name: str
    attempts: int
    # The connection was cut after this delivery's whole message once already, and it was
    # resent: a second cut makes it unknown, never a third copy.
    possible_duplicate: bool = False
    # The subscriber's attributes as they are at the claim (personal fields read them).
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one delivery, written after its SMTP transaction."""

    delivery_id: int
    status: DeliveryStatus
    smtp_code: int | None = None
    smtp_reply: str | None = None
    message_id: str | None = None
    retry_at: datetime | None = None  # set with status PENDING: a temporary failure
    bounce: bool = False  # a permanent failure that counts towards the subscriber's bounces
    relay: str | None = None  # the relay's name (host:port) that answered, if one did
    # Cut after the final dot with no reply: the server may have it, and it is resent once.
    possible_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class ArchivedIssue:
    """One sent issue as the public archive lists it."""

    slug: str
    subject: str
    preheader: str
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class DueWindow:
    """Who an automatic email is for now: readers whose `sequence_from` lies in
    [not_before, due_by] (see mailer.content.automations.due_window)."""

    not_before: datetime
    due_by: datetime


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """What counts against a per-hour sending quota now (see Store.quota_use)."""

    used: int
    oldest: datetime | None  # when the oldest counted message was sent (None: only held rows)


class ImportRow(NamedTuple):
    """One subscriber of an import file: address, name and attributes (no empty values)."""

    email: str
    name: str
    attributes: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SubscriberRow:
    """One subscriber of a newsletter as `subscribers list` and the export show it."""

    email: str
    name: str
    status: SubscriptionStatus
    created_at: datetime
    confirmed_at: datetime | None
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendRow:
    """One issue of one newsletter going out, as stored: its rendered content (a resume
    sends the same bytes), its state and how far its recipients are queued."""

    id: int
    newsletter: str
    slug: str
    subject: str
    preheader: str
    html: str
    text: str
    web_url: str
    status: SendStatus
    pause_reason: str | None
    created_at: datetime
    finished_at: datetime | None
    queued_through: int  # the highest subscription id queued so far
    queued_at: datetime | None  # when the last chunk was queued (None: more to queue)
    kind: SendKind = SendKind.ISSUE  # an issue, or an automatic email (welcome, step)


@dataclass(frozen=True, slots=True)
class SubscriptionRow:
    """One address on one newsletter: its double opt-in state and confirmation email."""

    id: int
    subscriber_id: int
    newsletter: str
    status: SubscriptionStatus
    created_at: datetime
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    bounced_at: datetime | None
    confirm_sent_at: datetime | None
    confirm_unsent: bool
    hard_bounces: int
    token_generation: int  # carried in confirmation links; bumped when the subscription ends


@dataclass(frozen=True, slots=True)
class RelayHealth:
    """How a sending process last found one relay (see mailer.delivery.relays)."""

    relay: str  # host:port, never a password
    up: bool | None  # None: not tried yet
    reason: str = ""  # why it is down


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A registered sending process and when it last showed it was alive."""

    id: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class SignUp:
    """What a sign-up from the public form did (see Store.sign_up)."""

    subscription_id: int
    generation: int  # the subscription's token generation, for its confirmation link
    claimed: bool  # this sign-up won the right to send the confirmation email now


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    """A send's deliveries by state; recipients not yet queued count as pending."""

    pending: int = 0
    sending: int = 0
    sent: int = 0
    failed: int = 0
    unknown: int = 0
    skipped: int = 0
    # Of all of these: cut after the whole message with no reply and resent once, so the
    # reader may have it twice (Store.possible_duplicates).
    possible_duplicates: int = 0

    @classmethod
    def of(cls, by_state: Mapping[DeliveryStatus, int], *,
           possible_duplicates: int = 0) -> DeliveryCounts:
        """The counts of Store.delivery_counts' mapping."""
        return cls(**{state.value: by_state.get(state, 0) for state in DeliveryStatus},
                   possible_duplicates=possible_duplicates)

    @property
    def open(self) -> int:
        """Not finished one way or the other: waiting (or retrying later), or in flight."""
        return self.pending + self.sending

    @property
    def total(self) -> int:
        return self.open + self.sent + self.failed + self.unknown + self.skipped

    @property
    def done(self) -> int:
        """Finished one way or the other (sent, failed, unknown, skipped)."""
        return self.total - self.open

    @property
    def undelivered(self) -> int:
        """Recipients who have not got the issue for sure: failed, unknown or still open."""
        return self.failed + self.unknown + self.open

    def settled(self) -> dict[str, int]:
        """The finished states by name, for a log line's fields."""
        return {"sent": self.sent, "failed": self.failed, "unknown": self.unknown,
                "skipped": self.skipped}


# -- the way back (mailer.bounces): kinds are mailer.returns.ReturnKind values, kept as str
# here because rows and returns are independent layers ---------------------------------------


@dataclass(frozen=True, slots=True)
class ReturnTarget:
    """The delivery a returned message is about, with what the bounce rules need of it."""

    delivery_id: int
    send_id: int
    subscription_id: int | None
    email: str  # the address we sent to (the delivery's snapshot)
    newsletter: str
    slug: str
    sent_at: datetime | None  # None: never accepted by our relay (then no DSN should come)


@dataclass(frozen=True, slots=True)
class PastDelivery:
    """One message that went to an address, and whether something came back for it."""

    delivery_id: int
    sent_at: datetime
    bounced: bool  # a hard or soft bounce came back for it
    soft_bounced_at: datetime | None  # when the last soft bounce for it arrived


@dataclass(frozen=True, slots=True)
class ReturnRecord:
    """One returned message as applied: what `returned_messages` keeps of it."""

    received_at: datetime
    source: str
    kind: str
    fingerprint: str
    delivery_id: int | None = None
    send_id: int | None = None
    subscription_id: int | None = None
    address: str | None = None
    status_code: str | None = None
    smtp_code: int | None = None
    diagnostic: str = ""
    reason: str = ""
    message_id: str | None = None
    evidence: bytes = b""


@dataclass(frozen=True, slots=True)
class ReturnedRow:
    """One returned message as `mailer bounces list` shows it."""

    received_at: datetime
    source: str
    kind: str
    address: str | None
    status_code: str | None
    diagnostic: str
    reason: str
    newsletter: str | None
    slug: str | None


@dataclass(frozen=True, slots=True)
class PersonRow:
    """A subscriber as their own manage page shows them: who, and every subscription."""

    subscriber_id: int
    email: str
    name: str
    attributes: Mapping[str, str]
    created_at: datetime
    subscriptions: tuple[SubscriptionRow, ...]


@dataclass(frozen=True, slots=True)
class PersonDelivery:
    """One issue that went (or was to go) to a subscriber, for their "download my data"."""

    newsletter: str
    issue: str  # the slug
    subject: str
    status: DeliveryStatus
    queued_at: datetime
    sent_at: datetime | None
    returned_kind: str | None
    returned_at: datetime | None
