"""How far a job's run folder has been turned into events: the metrics.jsonl offset and the last
checkpoint step, kept on the job's row so replicas sharing the database never add an event twice.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("events_offset", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("checkpoint_step", sa.Integer, nullable=False, server_default="-1"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("checkpoint_step")
        batch.drop_column("events_offset")
