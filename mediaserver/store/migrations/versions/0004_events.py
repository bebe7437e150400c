"""events with registration: events, hosts, slots, registrations

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scheduled_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=False),
        sa.Column("ends_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["team_id"], ["teams.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_scheduled_events_team", "scheduled_events", ["team_id", "starts_at"])
    op.create_table(
        "event_hosts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("identity", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("max_sessions", sa.Integer(), nullable=False),
        sa.Column("spots", sa.Integer(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=False),
        sa.Column("timeframes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["scheduled_events.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "identity", name="uq_event_hosts_identity"),
    )
    op.create_table(
        "event_slots",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("host_id", sa.String(length=40), nullable=False),
        sa.Column("room_id", sa.String(length=40), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=False),
        sa.Column("ends_at", sa.Float(), nullable=False),
        sa.Column("spots", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["event_id"], ["scheduled_events.id"]),
        sa.ForeignKeyConstraint(["host_id"], ["event_hosts.id"]),
        sa.ForeignKeyConstraint(["room_id"], ["rooms.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("room_id"),
    )
    op.create_index("ix_event_slots_host", "event_slots", ["host_id", "starts_at"])
    op.create_table(
        "registrations",
        sa.Column("slot_id", sa.String(length=40), nullable=False),
        sa.Column("identity", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("registered_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["slot_id"], ["event_slots.id"]),
        sa.PrimaryKeyConstraint("slot_id", "identity"),
    )


def downgrade() -> None:
    op.drop_table("registrations")
    op.drop_index("ix_event_slots_host", table_name="event_slots")
    op.drop_table("event_slots")
    op.drop_table("event_hosts")
    op.drop_index("ix_scheduled_events_team", table_name="scheduled_events")
    op.drop_table("scheduled_events")
