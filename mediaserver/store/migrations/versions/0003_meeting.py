"""meeting features: stage seats and requests, breakout rooms, chat, Q&A

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
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("meeting", sa.JSON(), nullable=False, server_default=sa.text("'{}'")))
    with op.batch_alter_table("participants") as batch:
        batch.add_column(sa.Column("on_stage", sa.Boolean(), nullable=False, server_default=sa.text("false")))
        batch.add_column(sa.Column("stage_requested_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("breakout_id", sa.String(length=40), nullable=True))
    op.create_table(
        "chat_messages",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("participant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("breakout_id", sa.String(length=40), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_chat_session", "chat_messages", ["session_id", "seq"])
    op.create_table(
        "questions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("session_id", sa.String(length=40), nullable=False),
        sa.Column("participant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("answer", sa.Text(), nullable=True),
        sa.Column("answered_by", sa.String(length=40), nullable=True),
        sa.Column("votes", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("asked_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["sessions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_questions_session", "questions", ["session_id", "asked_at"])
    op.create_table(
        "question_votes",
        sa.Column("question_id", sa.String(length=40), nullable=False),
        sa.Column("participant_id", sa.String(length=40), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["question_id"], ["questions.id"]),
        sa.PrimaryKeyConstraint("question_id", "participant_id"),
    )


def downgrade() -> None:
    op.drop_table("question_votes")
    op.drop_index("ix_questions_session", table_name="questions")
    op.drop_table("questions")
    op.drop_index("ix_chat_session", table_name="chat_messages")
    op.drop_table("chat_messages")
    with op.batch_alter_table("participants") as batch:
        batch.drop_column("breakout_id")
        batch.drop_column("stage_requested_at")
        batch.drop_column("on_stage")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("meeting")
