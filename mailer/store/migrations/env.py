"""Alembic environment: runs on the connection handed over by mailer.db.migrate."""

from __future__ import annotations

from alembic import context

from mailer.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # `alembic revision --autogenerate` from a developer's shell
    from sqlalchemy import create_engine

    connection = create_engine(context.config.get_main_option("sqlalchemy.url") or "").connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=True,  # SQLite can only ALTER tables by copying them
)
with context.begin_transaction():
    context.run_migrations()
