"""REST wire formats (pydantic). Times go out as ISO 8601 UTC; the store keeps UNIX seconds."""

from __future__ import annotations

from datetime import datetime, timezone
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RoomType = Literal["adhoc", "group"]
MediaMode = Literal["routed", "relayed", "auto"]
ArchiveMode = Literal["manual", "always"]
Encryption = Literal["server", "session_key", "passphrase"]
Role = Literal["moderator", "publisher", "subscriber"]
SessionStatus = Literal["live", "ending_soon", "ended"]

MAX_CAPACITY = 50  # participants in a session, unless the server allows more (max_room_capacity)
CAPACITY_CEILING = 100_000  # what any server allows


def check_capacity(capacity: int | None, allowed: int) -> None:
    """A room's capacity within what this server allows (``max_room_capacity``)."""
    from mediaserver.errors import MediaserverError

    if capacity is not None and capacity > allowed:
        raise MediaserverError(
            "invalid_request", f"capacity is at most {allowed} participants on this server (max_room_capacity)"
        )


def to_dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


def to_ts(dt: datetime | None) -> float | None:
    if dt is None:
        return None
    if dt.tzinfo is None:  # a time without a zone is taken as UTC
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


# Bounds of the integers the API reads (the databases' integers end at 2**63).
MAX_OFFSET = 1_000_000
MAX_SEQ = 2**31 - 1


def refuse_nul(data: object) -> object:
    """Text with a NUL character is refused everywhere (PostgreSQL cannot store it)."""
    if isinstance(data, str):
        if "\x00" in data:
            raise ValueError("text must not contain NUL characters")
    elif isinstance(data, dict):
        for k, v in data.items():
            refuse_nul(k)
            refuse_nul(v)
    elif isinstance(data, (list, tuple)):
        for v in data:
            refuse_nul(v)
    return data


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: object) -> object:
        return refuse_nul(data)


class RoomFields(Strict):
    name: str | None = Field(None, min_length=1, max_length=100)
    type: RoomType | None = None
    media_mode: MediaMode | None = None
    archive_mode: ArchiveMode | None = None
    encryption: Encryption | None = None
    location_hint: IPv4Address | IPv6Address | None = Field(
        None, description="An IP address near where most participants are; media is placed close to it."
    )
    capacity: int | None = Field(None, ge=1, le=CAPACITY_CEILING, description="Participants at most (50 unless the server allows more).")
    comment: str | None = Field(None, max_length=2000)
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    group_id: str | None = Field(None, max_length=40, description="For type group: the group whose members join.")

    @model_validator(mode="after")
    def _schedule_in_order(self) -> "RoomFields":
        if self.starts_at and self.ends_at and to_ts(self.ends_at) <= to_ts(self.starts_at):
            raise ValueError("ends_at must be after starts_at")
        return self

    def to_row(self, *, only_set: bool) -> dict:
        data = self.model_dump(exclude_unset=only_set)
        for key in ("starts_at", "ends_at"):
            if key in data:
                data[key] = to_ts(data[key])
        if data.get("location_hint") is not None:
            data["location_hint"] = str(data["location_hint"])
        return data


class RoomCreate(RoomFields):
    name: str = Field(..., min_length=1, max_length=100)
    type: RoomType = "adhoc"
    media_mode: MediaMode = "auto"
    archive_mode: ArchiveMode = "manual"
    encryption: Encryption = "server"
    capacity: int = Field(MAX_CAPACITY, ge=1, le=CAPACITY_CEILING)


class RoomUpdate(RoomFields):
    """Only the fields sent are changed; send null to clear an optional one."""


class Room(BaseModel):
    id: str
    name: str
    type: RoomType
    media_mode: MediaMode
    archive_mode: ArchiveMode
    encryption: Encryption
    location_hint: str | None
    capacity: int
    comment: str | None
    starts_at: datetime | None
    ends_at: datetime | None
    group_id: str | None = None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: dict) -> "Room":
        return cls(
            **{k: row.get(k) for k in cls.model_fields if k not in ("starts_at", "ends_at", "created_at", "updated_at")},
            starts_at=to_dt(row["starts_at"]),
            ends_at=to_dt(row["ends_at"]),
            created_at=to_dt(row["created_at"]),
            updated_at=to_dt(row["updated_at"]),
        )


class RoomList(BaseModel):
    rooms: list[Room]
    next_offset: int | None


class TokenRequest(Strict):
    identity: str = Field(..., min_length=1, max_length=100, description="Who joins; unique within a session.")
    name: str | None = Field(None, min_length=1, max_length=100, description="Display name; the identity if unset.")
    role: Role = "publisher"
    ttl_seconds: int | None = Field(None, gt=0, le=10**9, description="Lifetime; default 24 h, at most 30 days.")
    not_before: datetime | None = None


class TokenResponse(BaseModel):
    token: str
    room_id: str
    identity: str
    role: Role
    expires_at: datetime
    ws_url: str
    join_url: str


class Participant(BaseModel):
    id: str
    session_id: str
    identity: str
    name: str
    role: Role
    state: Literal["connected", "disconnected", "left"]
    joined_at: datetime
    left_at: datetime | None
    left_reason: str | None
    on_stage: bool = False
    stage_requested: bool = False
    breakout_id: str | None = None
    counts: dict[str, int] = Field(
        default_factory=dict, description="chat_messages sent, questions asked and upvotes given"
    )
    quality: dict | None = Field(
        None, description="latest reception quality: loss_percent, jitter_ms, grade (good, fair, poor)"
    )

    @classmethod
    def from_row(cls, row: dict, counts: dict[str, int] | None = None, quality: dict | None = None) -> "Participant":
        return cls(
            **{k: row[k] for k in ("id", "session_id", "identity", "name", "role", "state", "left_reason")},
            joined_at=to_dt(row["joined_at"]),
            left_at=to_dt(row["left_at"]),
            on_stage=bool(row.get("on_stage")),
            stage_requested=row.get("stage_requested_at") is not None,
            breakout_id=row.get("breakout_id"),
            counts=counts or {"chat_messages": 0, "questions": 0, "upvotes": 0},
            quality=quality,
        )


class Event(BaseModel):
    seq: int
    type: str
    participant_id: str | None
    at: datetime
    data: dict

    @classmethod
    def from_row(cls, row: dict) -> "Event":
        return cls(seq=row["seq"], type=row["type"], participant_id=row["participant_id"], at=to_dt(row["at"]), data=row["data"] or {})


class ParticipantDetail(Participant):
    events: list[Event]


class Session(BaseModel):
    id: str
    room_id: str
    room_name: str
    status: SessionStatus
    started_at: datetime
    ended_at: datetime | None
    ending_at: datetime | None = Field(None, description="When an ending_soon session ends unless someone joins.")
    end_reason: str | None
    participant_count: int | None = None
    host: str | None = Field(None, description="The session host (control-plane actor) that owns it.")
    media_worker: str | None = Field(None, description="The media worker its media goes through (media:<node>:<index>).")
    end_to_end_encrypted: bool = Field(False, description=(
        "Its room's encryption is session_key or passphrase: media, chat and questions are encrypted in the "
        "participants' browsers, and the server (this API, the dashboard) cannot show their content."))

    @classmethod
    def from_row(cls, row: dict, *, grace: float) -> "Session":
        ending = row["empty_since"] + grace if row["status"] == "ending_soon" and row["empty_since"] else None
        return cls(
            id=row["id"],
            room_id=row["room_id"],
            room_name=row["room_name"],
            status=row["status"],
            started_at=to_dt(row["started_at"]),
            ended_at=to_dt(row["ended_at"]),
            ending_at=to_dt(ending),
            end_reason=row["end_reason"],
            participant_count=row.get("participant_count"),
            host=row.get("host"),
            media_worker=row.get("media_worker"),
            end_to_end_encrypted=row.get("room_encryption") in ("session_key", "passphrase"),
        )


class SessionDetail(Session):
    participants: list[Participant]
    breakouts: dict = Field(default_factory=dict, description="breakout rooms: {rooms, open, plan}")


class ChatMessage(BaseModel):
    id: str
    participant_id: str
    name: str
    breakout_id: str | None = Field(None, description='the room it was said in (null: the main room, "*": every room)')
    text: str
    at: datetime

    @classmethod
    def from_row(cls, row: dict) -> "ChatMessage":
        return cls(**{k: row[k] for k in ("id", "participant_id", "name", "breakout_id", "text")}, at=to_dt(row["at"]))


class Question(BaseModel):
    id: str
    participant_id: str
    name: str
    text: str
    status: Literal["open", "answered", "dismissed"]
    answer: str | None
    votes: int
    voters: list[str]
    asked_at: datetime

    @classmethod
    def from_row(cls, row: dict) -> "Question":
        return cls(
            **{k: row[k] for k in ("id", "participant_id", "name", "text", "status", "answer", "votes", "voters")},
            asked_at=to_dt(row["asked_at"]),
        )


class SessionList(BaseModel):
    sessions: list[Session]
    next_offset: int | None


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
