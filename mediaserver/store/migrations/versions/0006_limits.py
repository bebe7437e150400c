"""limits: an event-wide session allowance, invite links with a number of uses

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scheduled_events") as batch:
        batch.add_column(sa.Column("max_sessions", sa.Integer(), nullable=True))
    with op.batch_alter_table("invites") as batch:
        batch.add_column(sa.Column("max_uses", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("uses", sa.Integer(), nullable=False, server_default=sa.text("0")))
        batch.create_check_constraint("ck_invites_uses", "max_uses IS NULL OR uses <= max_uses")


def downgrade() -> None:
    with op.batch_alter_table("invites") as batch:
        batch.drop_constraint("ck_invites_uses", type_="check")
        batch.drop_column("uses")
        batch.drop_column("max_uses")
    with op.batch_alter_table("scheduled_events") as batch:
        batch.drop_column("max_sessions")
