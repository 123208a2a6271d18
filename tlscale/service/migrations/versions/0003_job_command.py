"""What a job runs: `tlscale train` (every job before this revision) or `tlscale fewshot` (a ladder's few-shot
cells, or a team's baselines).

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("command", sa.String(16), nullable=False, server_default="train"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("command")
