"""never reuse subscriber and subscription ids on SQLite (AUTOINCREMENT)

Confirm and unsubscribe tokens carry the subscription id. Without AUTOINCREMENT, SQLite
hands the highest id to the next row after that row is deleted, so a removed subscriber's
old unsubscribe link would act on whoever subscribed next. PostgreSQL sequences never
reuse ids; there this migration changes nothing.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("subscribers", "subscriptions")


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # SQLite cannot add AUTOINCREMENT in place: batch mode copies each table into a new one.
    # sqlite_sequence starts from the highest id copied, so no old id comes back.
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}):
            pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate="always",
                                  table_kwargs={"sqlite_autoincrement": False}):
            pass
