"""subscriptions.token_generation and subscriptions.confirm_unsent

A confirmation link carries its subscription's token generation, which goes up whenever
the subscription ends or starts a new pending period, so a link mailed before someone
left cannot confirm their next sign-up. Links mailed before this revision carry none and
count as generation 0, which every existing row starts at: they keep working until the
subscription next ends. confirm_unsent marks a confirmation email claimed by a sign-up
and not yet taken by the relay, so one lost in a crash is sent again.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN, not batch mode: recreating the table on SQLite would drop its
    # AUTOINCREMENT (see 0003), and a column with a constant default needs no copy.
    op.add_column("subscriptions", sa.Column("token_generation", sa.Integer(), nullable=False,
                                             server_default="0"))
    op.add_column("subscriptions", sa.Column("confirm_unsent", sa.Boolean(), nullable=False,
                                             server_default=sa.false()))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_column("subscriptions", "confirm_unsent")
        op.drop_column("subscriptions", "token_generation")
        return
    with op.batch_alter_table("subscriptions", recreate="always",
                              table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("confirm_unsent")
        batch.drop_column("token_generation")
