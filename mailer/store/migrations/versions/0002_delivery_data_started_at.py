"""deliveries.data_started_at: when the message body started to leave

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailer.store.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot ALTER a table in place beyond simple additions; harmless here.
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("data_started_at", mailer.store.models.UTCDateTime(),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("data_started_at")
