"""Alembic environment: runs on the connection tlscale.service.store.migrate hands over."""
from alembic import context

from tlscale.service.store import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
