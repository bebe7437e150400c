"""archives: a session's recordings (at most one recording at a time per session)

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "archives",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), sa.ForeignKey("teams.id"), nullable=False),
        sa.Column("session_id", sa.String(length=40), sa.ForeignKey("sessions.id"), nullable=False),
        sa.Column("room_id", sa.String(length=40), sa.ForeignKey("rooms.id"), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("output", sa.String(length=12), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("started_by", sa.String(length=40), nullable=True),
        sa.Column("stopped_at", sa.Float(), nullable=True),
        sa.Column("stop_reason", sa.String(length=20), nullable=True),
        sa.Column("files", sa.JSON(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column("size", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_archives_team", "archives", ["team_id", "started_at"])
    op.create_index("ix_archives_session", "archives", ["session_id", "started_at"])
    op.create_index(
        "ux_archives_one_recording_per_session", "archives", ["session_id"], unique=True,
        sqlite_where=sa.text("status = 'recording'"), postgresql_where=sa.text("status = 'recording'"),
    )


def downgrade() -> None:
    op.drop_table("archives")
