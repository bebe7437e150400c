"""Tables (SQLAlchemy Core). Times are UNIX seconds (float) so SQLite and PostgreSQL agree.

Changes to these tables go with a new Alembic revision in ``migrations/versions``.
"""

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    literal,
    text,
)

metadata = MetaData()


def fixed(value: str) -> Any:
    """``value`` written into a statement instead of bound to it, for comparisons with a column
    that a partial index's WHERE names (the ``status`` of sessions and of archives below).
    SQLite prepares such a statement again every time a bound value there changes, which is
    every time it runs: a join's lookup took 0.13 ms instead of 0.02."""
    return literal(value, literal_execute=True)


teams = Table(
    "teams",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("max_live_sessions", Integer, nullable=True),  # None: the server default
    Column("created_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=False),
    Column("secret", String(100), nullable=False),  # kept in the clear: it signs HMAC tokens
    Column("name", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

rooms = Table(
    "rooms",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("type", String(10), nullable=False),
    Column("media_mode", String(10), nullable=False),
    Column("archive_mode", String(10), nullable=False),
    Column("encryption", String(20), nullable=False),
    Column("location_hint", String(45), nullable=True),
    Column("capacity", Integer, nullable=False),
    Column("comment", Text, nullable=True),
    Column("starts_at", Float, nullable=True),
    Column("ends_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("group_id", String(40), nullable=True),  # a group room: its participants are the group's members
    Index("ix_rooms_team", "team_id", "created_at"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("room_id", String(40), ForeignKey("rooms.id"), nullable=False),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=False),
    Column("status", String(12), nullable=False),  # live | ending_soon | ended
    Column("started_at", Float, nullable=False),
    Column("empty_since", Float, nullable=True),  # when the last connected participant went away
    Column("ended_at", Float, nullable=True),
    Column("end_reason", String(20), nullable=True),  # moderator | grace_timeout | api
    Column("last_seq", Integer, nullable=False, server_default=text("0")),
    # Meeting state that is not per participant: breakout rooms ({"rooms": [{id, name}], "open": bool,
    # "plan": {participant: room}}).
    Column("meeting", JSON, nullable=False, server_default=text("'{}'")),
    # Where the session lives: the session host (actor) that owns it and the media worker its
    # media goes through, chosen when it opens so any gateway or restarted host finds the same.
    Column("host", String(80), nullable=True),
    Column("media_worker", String(80), nullable=True),
    Index("ix_sessions_team_status", "team_id", "status"),
    Index("ix_sessions_host_status", "host", "status"),
    Index("ix_sessions_worker_status", "media_worker", "status"),
    Index("ix_sessions_room", "room_id", "started_at"),
    # At most one session per room is not ended: the invariant the Directory relies on.
    Index(
        "ux_sessions_one_live_per_room",
        "room_id",
        unique=True,
        sqlite_where=text("status != 'ended'"),
        postgresql_where=text("status != 'ended'"),
    ),
)

participants = Table(
    "participants",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("identity", String(100), nullable=False),
    Column("name", String(100), nullable=False),
    Column("role", String(12), nullable=False),
    Column("state", String(14), nullable=False),  # connected | disconnected | left
    Column("joined_at", Float, nullable=False),
    Column("disconnected_at", Float, nullable=True),
    Column("left_at", Float, nullable=True),
    Column("left_reason", String(20), nullable=True),
    Column("on_stage", Boolean, nullable=False, server_default=text("false")),  # holds a seat on screen
    Column("stage_requested_at", Float, nullable=True),  # a pending "enable mic & camera" request
    Column("breakout_id", String(40), nullable=True),  # the breakout room it is in; None: the main room
    Index("ix_participants_session", "session_id", "joined_at"),
)

# Chat messages. ``breakout_id`` is the room it was said in (None: the main room, "*": to every room).
chat_messages = Table(
    "chat_messages",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("participant_id", String(40), nullable=False),
    Column("name", String(100), nullable=False),
    Column("breakout_id", String(40), nullable=True),
    Column("text", Text, nullable=False),
    Column("at", Float, nullable=False),
    Column("seq", Integer, nullable=False),  # the seq of its "chat" event: the order messages were said in
    Index("ix_chat_session", "session_id", "seq"),
)

questions = Table(
    "questions",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("participant_id", String(40), nullable=False),
    Column("name", String(100), nullable=False),
    Column("text", Text, nullable=False),
    Column("status", String(10), nullable=False),  # open | answered | dismissed
    Column("answer", Text, nullable=True),
    Column("answered_by", String(40), nullable=True),
    Column("votes", Integer, nullable=False, server_default=text("0")),
    Column("asked_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("ix_questions_session", "session_id", "asked_at"),
)

question_votes = Table(
    "question_votes",
    metadata,
    Column("question_id", String(40), ForeignKey("questions.id"), primary_key=True),
    Column("participant_id", String(40), primary_key=True),
    Column("at", Float, nullable=False),
)

# One row per thing that happened in a session. ``seq`` orders a session's
# events; rows with ``visibility='broadcast'`` are also pushed to every
# participant, ``'room'`` rows only to those in the room ``data.breakout_id``
# names (None: the main room), ``'log'`` rows only fill a participant's event log.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("participant_id", String(40), nullable=True),
    Column("type", String(40), nullable=False),
    Column("visibility", String(10), nullable=False),
    Column("data", JSON, nullable=False),
    Column("at", Float, nullable=False),
    UniqueConstraint("session_id", "seq", name="uq_events_session_seq"),
    Index("ix_events_participant", "participant_id", "seq"),
)

# Deployment-wide values every gateway must agree on (e.g. the reconnect-token secret).
server_state = Table(
    "server_state",
    metadata,
    Column("key", String(40), primary_key=True),
    Column("value", Text, nullable=False),
)

# Events with registration: an organizer's event, its hosts (employers) with their allowances,
# the time slots hosts picked (each a room of its own), and participants' registrations.
scheduled_events = Table(
    "scheduled_events",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("starts_at", Float, nullable=False),
    Column("ends_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("max_sessions", Integer, nullable=True),  # slots all hosts may pick together; None: no cap
    Index("ix_scheduled_events_team", "team_id", "starts_at"),
)

event_hosts = Table(
    "event_hosts",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("event_id", String(40), ForeignKey("scheduled_events.id"), nullable=False),
    Column("identity", String(100), nullable=False),
    Column("name", String(100), nullable=False),
    Column("max_sessions", Integer, nullable=False),
    Column("spots", Integer, nullable=False),  # participants per session
    Column("duration", Float, nullable=False),  # seconds per session
    Column("timeframes", JSON, nullable=False),  # [[starts_at, ends_at], ...] where sessions may be
    UniqueConstraint("event_id", "identity", name="uq_event_hosts_identity"),
)

event_slots = Table(
    "event_slots",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("event_id", String(40), ForeignKey("scheduled_events.id"), nullable=False),
    Column("host_id", String(40), ForeignKey("event_hosts.id"), nullable=False),
    Column("room_id", String(40), ForeignKey("rooms.id"), nullable=False, unique=True),
    Column("starts_at", Float, nullable=False),
    Column("ends_at", Float, nullable=False),
    Column("spots", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Index("ix_event_slots_host", "host_id", "starts_at"),
)

registrations = Table(
    "registrations",
    metadata,
    Column("slot_id", String(40), ForeignKey("event_slots.id"), primary_key=True),
    Column("identity", String(100), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("registered_at", Float, nullable=False),
)

# People: users (signed-in participants), groups with leader/co-leader/member roles, and
# invite links to ad-hoc rooms (signed, expiring, revocable).
users = Table(
    "users",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=False),
    Column("email", String(200), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("password_hash", String(200), nullable=False),  # argon2id
    Column("created_at", Float, nullable=False),
)

groups = Table(
    "groups",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),  # signs its members' tokens
    Column("created_at", Float, nullable=False),
)

group_members = Table(
    "group_members",
    metadata,
    Column("group_id", String(40), ForeignKey("groups.id"), primary_key=True),
    Column("user_id", String(40), ForeignKey("users.id"), primary_key=True),
    Column("role", String(10), nullable=False),  # leader | co_leader | member
    Column("added_at", Float, nullable=False),
)

invites = Table(
    "invites",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("room_id", String(40), ForeignKey("rooms.id"), nullable=False),
    Column("key_id", String(40), ForeignKey("api_keys.id"), nullable=False),  # signs the link and guests' tokens
    Column("role", String(12), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
    Column("max_uses", Integer, nullable=True),  # guests who may join through it; None: no cap
    Column("uses", Integer, nullable=False, server_default=text("0")),
    CheckConstraint("max_uses IS NULL OR uses <= max_uses", name="ck_invites_uses"),
    Index("ix_invites_room", "room_id", "created_at"),
)


# A node an operator drains takes no new sessions (its live ones move off, or end where they are).
media_nodes = Table(
    "media_nodes",
    metadata,
    Column("node", String(80), primary_key=True),  # the node's IP, as topology names it
    Column("state", String(12), nullable=False),  # active | draining
    Column("updated_at", Float, nullable=False),
)


# A session's recordings: its track files and, when asked, one composed file (see
# mediaserver/control/archive.py). ``files``: [{name, kind, size}] once written.
archives = Table(
    "archives",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("team_id", String(40), ForeignKey("teams.id"), nullable=False),
    Column("session_id", String(40), ForeignKey("sessions.id"), nullable=False),
    Column("room_id", String(40), ForeignKey("rooms.id"), nullable=False),
    Column("name", String(100), nullable=False),
    Column("output", String(12), nullable=False),  # individual | composed | both
    Column("status", String(12), nullable=False),  # recording | processing | ready | failed
    Column("started_at", Float, nullable=False),
    Column("started_by", String(40), nullable=True),  # the moderator's participant id (None: the API or always mode)
    Column("stopped_at", Float, nullable=True),
    Column("stop_reason", String(20), nullable=True),  # moderator | api | session_ended | max_duration | failed
    Column("files", JSON, nullable=False, server_default=text("'[]'")),
    Column("size", Integer, nullable=False, server_default=text("0")),
    Column("error", Text, nullable=True),
    Column("updated_at", Float, nullable=False),
    Index("ix_archives_team", "team_id", "started_at"),
    Index("ix_archives_session", "session_id", "started_at"),
    # At most one archive per session records at a time: the database holds the rule.
    Index(
        "ux_archives_one_recording_per_session",
        "session_id",
        unique=True,
        sqlite_where=text("status = 'recording'"),
        postgresql_where=text("status = 'recording'"),
    ),
)
