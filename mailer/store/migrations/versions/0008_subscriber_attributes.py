"""subscribers.attributes: a JSON object of string values per subscriber

The personal data an author can greet a reader with (`{{ subscriber.attributes.city }}`),
filled by CSV import (every column after email,name) and `subscribers add --attr`. JSONB on
PostgreSQL, JSON (text) on SQLite. Every existing subscriber starts with no attributes, {}.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN with a constant default, as in 0005: no table copy on SQLite (which
    # would drop its AUTOINCREMENT, see 0003), and existing rows read {} at once.
    op.add_column("subscribers", sa.Column(
        "attributes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
        nullable=False, server_default=sa.text("'{}'")))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_column("subscribers", "attributes")
        return
    with op.batch_alter_table("subscribers", recreate="always",
                              table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.drop_column("attributes")
