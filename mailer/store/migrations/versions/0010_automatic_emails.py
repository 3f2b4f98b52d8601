"""sends.kind and subscriptions.sequence_from: a newsletter's automatic emails

A welcome email and sequence steps are sends like issues (the same deliveries, journal and
exactly-once rule), told apart by `kind` so they never reach the archive or the issue
schedule. `sequence_from` is where a reader's steps count from: their first confirmation.
Readers confirmed before this version count from their confirmation (the only date there
is); the catch-up rule keeps old readers from getting every step at once.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailer.store.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, as in 0005 and 0008: no table copy on SQLite (which would drop the
    # AUTOINCREMENT of subscriptions, see 0003).
    op.add_column("sends", sa.Column("kind", sa.String(length=16), nullable=False,
                                     server_default="issue"))
    op.add_column("subscriptions", sa.Column(
        "sequence_from", mailer.store.models.UTCDateTime(timezone=True), nullable=True))
    op.execute("UPDATE subscriptions SET sequence_from = confirmed_at "
               "WHERE status = 'confirmed'")


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_column("subscriptions", "sequence_from")
        op.drop_column("sends", "kind")
        return
    with op.batch_alter_table("subscriptions", recreate="always",
                              table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("sequence_from")
    with op.batch_alter_table("sends", recreate="always") as batch:
        batch.drop_column("kind")
