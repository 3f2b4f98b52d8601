"""SQLAlchemy 2 models: subscribers, their subscriptions, sends and per-recipient deliveries."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql import text as sql_text
from sqlalchemy.types import TypeEngine

from mailer.returns.kinds import ReturnKind
from mailer.states import DeliveryStatus, SendKind, SendStatus, SubscriptionStatus, utcnow


class Attributes(TypeDecorator[dict[str, str]]):
    """JSON on SQLite, JSONB on PostgreSQL; the PostgreSQL type is imported only there (the
    dialect's modules cost a sending process on SQLite megabytes it never uses)."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB())
        return dialect.type_descriptor(JSON())


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC and always hands back tz-aware datetimes (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Stable constraint names so alembic migrations work the same on SQLite and PostgreSQL.
naming = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _enum(cls: type[enum.StrEnum]) -> Enum:
    # Stored as plain strings: no PostgreSQL ENUM type to migrate when a state is added.
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=naming)
    type_annotation_map = {
        datetime: UTCDateTime(),
        SubscriptionStatus: _enum(SubscriptionStatus),
        SendStatus: _enum(SendStatus),
        SendKind: _enum(SendKind),
        DeliveryStatus: _enum(DeliveryStatus),
    }


class Subscriber(Base):
    __tablename__ = "subscribers"
    # Ids are never reused (SQLite reuses the highest rowid after a delete without this):
    # links signed for a removed subscriber must never reach whoever comes next.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # normalised, see addresses.py
    name: Mapped[str] = mapped_column(String(200), default="")
    # Keys [a-z0-9_]+, string values (mailer/subscriptions/attributes.py checks both).
    attributes: Mapped[dict[str, str]] = mapped_column(
        Attributes(),
        default=dict, server_default=sql_text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"Subscriber(id={self.id!r}, email={self.email!r})"


class Subscription(Base):
    __tablename__ = "subscriptions"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "newsletter"),
        Index("ix_subscriptions_newsletter_status", "newsletter", "status"),
        # Tokens carry this id: never reused, see Subscriber.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    newsletter: Mapped[str] = mapped_column(String(64))
    status: Mapped[SubscriptionStatus] = mapped_column(default=SubscriptionStatus.PENDING)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    confirmed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]
    bounced_at: Mapped[datetime | None]
    # When a sign-up last claimed the confirmation email (it goes out at most so often),
    # and whether it is still on its way: after a crash the next sign-up sends it again.
    confirm_sent_at: Mapped[datetime | None]
    confirm_unsent: Mapped[bool] = mapped_column(default=False, server_default=false())
    hard_bounces: Mapped[int] = mapped_column(Integer, default=0)
    # Carried in confirmation links and bumped whenever the subscription ends or a new
    # pending period starts: a link mailed before that confirms nothing afterwards.
    token_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Where the welcome email and the sequence steps count from: the first confirmation
    # (on the daemon's clock), never moved by leaving and coming back, so a sequence is
    # never restarted. None: no automatic email (imported or added as confirmed).
    sequence_from: Mapped[datetime | None]

    def __repr__(self) -> str:
        return (f"Subscription(id={self.id!r}, newsletter={self.newsletter!r}, "
                f"status={self.status!r})")


class Send(Base):
    """One issue of one newsletter going out; holds the rendered content, so a resume sends
    the same bytes."""

    __tablename__ = "sends"
    __table_args__ = (UniqueConstraint("newsletter", "slug"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    newsletter: Mapped[str] = mapped_column(String(64))
    # An issue's file stem; an automatic email's `welcome` or `sequence/<stem>` (a slash no
    # issue slug can hold, so the two never meet on the unique key).
    slug: Mapped[str] = mapped_column(String(200))
    kind: Mapped[SendKind] = mapped_column(default=SendKind.ISSUE, server_default="issue")
    subject: Mapped[str] = mapped_column(Text)
    preheader: Mapped[str] = mapped_column(Text, default="")
    html: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    web_url: Mapped[str] = mapped_column(Text)
    status: Mapped[SendStatus] = mapped_column(default=SendStatus.SENDING)
    pause_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    # Recipients are queued in chunks by subscription id, as the sending reaches them
    # (Store.queue_more): the highest id queued so far, and when the last chunk was.
    queued_through: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    queued_at: Mapped[datetime | None]

    def __repr__(self) -> str:
        return f"Send(id={self.id!r}, newsletter={self.newsletter!r}, slug={self.slug!r})"


class Delivery(Base):
    """One recipient of one send: the delivery log row whose state is the truth about that
    message."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("send_id", "subscription_id"),
        Index("ix_deliveries_send_status", "send_id", "status"),
        # A returned message without a VERP token is found by its Message-ID; the soft
        # bounce rule reads an address's history by its email.
        Index("ix_deliveries_message_id", "message_id"),
        Index("ix_deliveries_email", "email"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    send_id: Mapped[int] = mapped_column(ForeignKey("sends.id", ondelete="CASCADE"))
    # SET NULL: removing a subscriber keeps the send's history (email snapshot below).
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="SET NULL")
    )
    email: Mapped[str] = mapped_column(String(320))
    name: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[DeliveryStatus] = mapped_column(default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(120))
    smtp_code: Mapped[int | None]
    smtp_reply: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(250))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    # When the body started to leave (set with SENDING, after the server's 354). Cleared
    # by the outcome: a retry is a new transaction.
    data_started_at: Mapped[datetime | None]
    # The relay (host:port) that answered the last transaction; None before any did.
    relay: Mapped[str | None] = mapped_column(String(255))
    # Cut after the whole message with no reply, and resent once: the reader may have two.
    possible_duplicate: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Bounced later: the kind of the last returned message that acted on it (hard, soft,
    # complaint, policy), when it came, and the remote server's text.
    returned_kind: Mapped[ReturnKind | None] = mapped_column(_enum(ReturnKind))
    returned_at: Mapped[datetime | None]
    returned_reply: Mapped[str | None] = mapped_column(Text)

    def __repr__(self) -> str:
        return f"Delivery(id={self.id!r}, send_id={self.send_id!r}, status={self.status!r})"


class SenderProcess(Base):
    """A live sending process; rows it claimed are freed when its heartbeat stops or its pid
    is gone."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReturnedMessage(Base):
    """One bounce, complaint or auto-reply that came back, whatever brought it: the evidence
    behind every suppression, and what `mailer bounces list` shows."""

    __tablename__ = "returned_messages"
    __table_args__ = (
        Index("ix_returned_messages_address_kind", "address", "kind", "received_at"),
        Index("ix_returned_messages_send_id", "send_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(16))  # smtp, imap, pipe, ses, postmark, mailgun
    kind: Mapped[ReturnKind] = mapped_column(_enum(ReturnKind))
    # SET NULL: the evidence outlives a removed subscriber or an erased address.
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"))
    send_id: Mapped[int | None]
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscriptions.id", ondelete="SET NULL"))
    address: Mapped[str | None] = mapped_column(String(320))
    status_code: Mapped[str | None] = mapped_column(String(16))  # RFC 3463, "5.1.1"
    smtp_code: Mapped[int | None]
    diagnostic: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    message_id: Mapped[str | None] = mapped_column(String(250))
    # sha256 of the raw message, or the provider's event id: a replay inserts nothing.
    fingerprint: Mapped[str] = mapped_column(String(128), unique=True)
    evidence: Mapped[bytes] = mapped_column(LargeBinary, default=b"")

    def __repr__(self) -> str:
        return (f"ReturnedMessage(id={self.id!r}, kind={self.kind!r}, "
                f"delivery_id={self.delivery_id!r})")


class ErasedAddress(Base):
    """An address whose owner erased it ("delete me" on their manage page): only a keyed
    hash of it, so an import with --confirmed cannot bring it back and nothing else of it
    is kept."""

    __tablename__ = "erased_addresses"

    # HMAC-SHA256 of the normalised address under the install's secret key, hex: without
    # the key, a list of known addresses cannot be checked against it.
    address_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(default=utcnow)

    def __repr__(self) -> str:
        return f"ErasedAddress(erased_at={self.erased_at!r})"
