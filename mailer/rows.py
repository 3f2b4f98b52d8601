"""The plain values the store hands out (no ORM objects that could lazy-load)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mailer.states import DeliveryStatus, SubscriptionStatus


@dataclass(frozen=True, slots=True)
class Recipient:
    """A claimed delivery: what a worker needs to build and send one message."""

    delivery_id: int
    subscription_id: int | None
    email: str
    name: str
    attempts: int


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


@dataclass(frozen=True, slots=True)
class ArchivedIssue:
    """One sent issue as the public archive lists it."""

    slug: str
    subject: str
    preheader: str
    sent_at: datetime


@dataclass(frozen=True, slots=True)
class QuotaUse:
    """What counts against a per-hour sending quota now (see Store.quota_use)."""

    used: int
    oldest: datetime | None  # when the oldest counted message was sent (None: only held rows)


@dataclass(frozen=True, slots=True)
class SubscriberRow:
    email: str
    name: str
    status: SubscriptionStatus
    created_at: datetime
    confirmed_at: datetime | None
