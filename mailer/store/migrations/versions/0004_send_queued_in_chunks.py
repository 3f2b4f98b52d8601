"""sends.queued_through and sends.queued_at: recipients are queued in chunks as sending goes

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailer.store.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sends") as batch:
        batch.add_column(sa.Column("queued_through", sa.Integer(), nullable=False,
                                   server_default="0"))
        batch.add_column(sa.Column("queued_at", mailer.store.models.UTCDateTime(), nullable=True))
    # Sends made before this revision queued everyone at once, when they were created.
    op.execute("UPDATE sends SET queued_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("sends") as batch:
        batch.drop_column("queued_at")
        batch.drop_column("queued_through")
