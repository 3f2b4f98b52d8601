"""returned_messages, and what a delivery keeps of a bounce that came later

returned_messages holds every bounce, complaint and auto-reply applied (the evidence behind
each suppression, unique by fingerprint so a replay changes nothing). deliveries gets the
kind, time and remote text of the returned message that acted on it ("bounced later"), and
indexes on message_id and email: a returned message is matched by its Message-ID, and the
soft bounce rule reads an address's history. The new subscription status `complained` needs
no DDL: statuses are stored as plain strings (0001: native_enum=False, VARCHAR(16)).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailer.store.models

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

KINDS = ("hard", "soft", "policy", "complaint", "auto_reply", "delayed", "unknown")


def upgrade() -> None:
    utc = mailer.store.models.UTCDateTime(timezone=True)
    op.create_table(
        "returned_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", utc, nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.Enum(*KINDS, name="returnkind", native_enum=False, length=16),
                  nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=True),
        sa.Column("send_id", sa.Integer(), nullable=True),
        sa.Column("subscription_id", sa.Integer(), nullable=True),
        sa.Column("address", sa.String(length=320), nullable=True),
        sa.Column("status_code", sa.String(length=16), nullable=True),
        sa.Column("smtp_code", sa.Integer(), nullable=True),
        sa.Column("diagnostic", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(length=250), nullable=True),
        sa.Column("fingerprint", sa.String(length=128), nullable=False),
        sa.Column("evidence", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"], ondelete="SET NULL",
                                name=op.f("fk_returned_messages_delivery_id_deliveries")),
        sa.ForeignKeyConstraint(["subscription_id"], ["subscriptions.id"], ondelete="SET NULL",
                                name=op.f("fk_returned_messages_subscription_id_subscriptions")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_returned_messages")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_returned_messages_fingerprint")),
    )
    op.create_index("ix_returned_messages_address_kind", "returned_messages",
                    ["address", "kind", "received_at"])
    op.create_index("ix_returned_messages_send_id", "returned_messages", ["send_id"])
    # Plain ADD COLUMN, as in 0005 and 0006: batch mode would recreate the table on SQLite.
    op.add_column("deliveries", sa.Column(
        "returned_kind", sa.Enum(*KINDS, name="returnkind", native_enum=False, length=16),
        nullable=True))
    op.add_column("deliveries", sa.Column("returned_at", utc, nullable=True))
    op.add_column("deliveries", sa.Column("returned_reply", sa.Text(), nullable=True))
    op.create_index("ix_deliveries_message_id", "deliveries", ["message_id"])
    op.create_index("ix_deliveries_email", "deliveries", ["email"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_email", table_name="deliveries")
    op.drop_index("ix_deliveries_message_id", table_name="deliveries")
    if op.get_bind().dialect.name != "sqlite":
        for column in ("returned_reply", "returned_at", "returned_kind"):
            op.drop_column("deliveries", column)
    else:
        with op.batch_alter_table("deliveries", recreate="always") as batch:
            for column in ("returned_reply", "returned_at", "returned_kind"):
                batch.drop_column(column)
    op.drop_index("ix_returned_messages_send_id", table_name="returned_messages")
    op.drop_index("ix_returned_messages_address_kind", table_name="returned_messages")
    op.drop_table("returned_messages")
