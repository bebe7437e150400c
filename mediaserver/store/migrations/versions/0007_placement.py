"""placement: each session's host (the actor that owns it) and media worker; nodes' drain state

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("host", sa.String(length=80), nullable=True))
        batch.add_column(sa.Column("media_worker", sa.String(length=80), nullable=True))
    op.create_index("ix_sessions_host_status", "sessions", ["host", "status"])
    op.create_index("ix_sessions_worker_status", "sessions", ["media_worker", "status"])
    op.create_table(
        "media_nodes",
        sa.Column("node", sa.String(length=80), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("node"),
    )


def downgrade() -> None:
    op.drop_table("media_nodes")
    op.drop_index("ix_sessions_worker_status", table_name="sessions")
    op.drop_index("ix_sessions_host_status", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("media_worker")
        batch.drop_column("host")
