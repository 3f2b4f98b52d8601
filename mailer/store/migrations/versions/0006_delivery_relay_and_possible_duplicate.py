"""deliveries.relay and deliveries.possible_duplicate

relay names the relay (host:port) that answered a delivery's last transaction, so
`mailer status` can say which relay carried how many messages when several take turns.
possible_duplicate marks a delivery whose connection was cut after the whole message and
before any reply: it was resent once, and the reader may have it twice.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, as in 0005: batch mode would recreate the table on SQLite.
    op.add_column("deliveries", sa.Column("relay", sa.String(length=255), nullable=True))
    op.add_column("deliveries", sa.Column("possible_duplicate", sa.Boolean(), nullable=False,
                                          server_default=sa.false()))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_column("deliveries", "possible_duplicate")
        op.drop_column("deliveries", "relay")
        return
    with op.batch_alter_table("deliveries", recreate="always") as batch:
        batch.drop_column("possible_duplicate")
        batch.drop_column("relay")
