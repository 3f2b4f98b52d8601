"""erased_addresses: what is left of an address its owner erased

"Delete me" on the manage page removes the subscriber, their subscriptions and every copy
of the address (deliveries and returned messages keep their counts, not the address); this
table keeps only an HMAC-SHA256 of the normalised address under the install's secret key,
so `subscribers import --confirmed` and `subscribers add --confirmed` can refuse it.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import mailer.store.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "erased_addresses",
        sa.Column("address_hash", sa.String(length=64), nullable=False),
        sa.Column("erased_at", mailer.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address_hash", name=op.f("pk_erased_addresses")),
    )


def downgrade() -> None:
    op.drop_table("erased_addresses")
