"""WebSocket messages on /v1/ws, both directions (pydantic; one module so clients have one reference).

Client -> server messages may carry an ``id``; the server answers each with
``ack`` (same id) or ``error`` (same id). The first message must be ``join``
or ``resume``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Role = Literal["moderator", "publisher", "subscriber"]


class ClientMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, max_length=64)


class Join(ClientMessage):
    type: Literal["join"]
    token: str = Field(..., max_length=4096)
    room_id: str = Field(..., max_length=64)


class Resume(ClientMessage):
    type: Literal["resume"]
    reconnect_token: str = Field(..., max_length=4096)


class Ping(ClientMessage):
    type: Literal["ping"]


class Pong(ClientMessage):
    type: Literal["pong"]


class Leave(ClientMessage):
    type: Literal["leave"]


class EndSession(ClientMessage):
    type: Literal["end_session"]


class SetRole(ClientMessage):
    type: Literal["set_role"]
    participant_id: str = Field(..., max_length=64)
    role: Role


# Media signaling (see mediaserver/media/sdp.py for the model): the client offers on its
# "publish" peer connection and we answer; we offer on its "subscribe" peer connection and
# it answers. Candidates need not be sent: our ICE-lite side learns addresses from checks.
class Offer(ClientMessage):
    type: Literal["offer"]
    sdp: str = Field(..., max_length=65536)
    pc: Literal["publish", "subscribe"] = "publish"


class Answer(ClientMessage):
    type: Literal["answer"]
    sdp: str = Field(..., max_length=65536)
    pc: Literal["publish", "subscribe"] = "subscribe"


class Candidate(ClientMessage):
    type: Literal["candidate"]
    candidate: str = Field(..., max_length=1024)
    sdp_mid: str | None = Field(None, max_length=64)
    sdp_mline_index: int | None = Field(None, ge=0, le=255)
    pc: Literal["publish", "subscribe"] = "publish"


class Subscribe(ClientMessage):
    """Receive (``subscribed: true``, the default for every track) or stop receiving a track."""

    type: Literal["subscribe"]
    track_id: str = Field(..., max_length=128)
    subscribed: bool


class Mute(ClientMessage):
    """Tell the others one of your tracks is muted (or not)."""

    type: Literal["mute"]
    track_id: str = Field(..., max_length=128)
    muted: bool


AnyClientMessage = Annotated[
    Union[Join, Resume, Ping, Pong, Leave, EndSession, SetRole, Offer, Answer, Candidate, Subscribe, Mute],
    Field(discriminator="type"),
]
client_message = TypeAdapter(AnyClientMessage)



# Server -> client ---------------------------------------------------------


class ServerMessage(BaseModel):
    type: str


class Joined(ServerMessage):
    type: Literal["joined"] = "joined"
    id: str | None = None
    resumed: bool
    participant: dict[str, Any]
    session: dict[str, Any]
    room: dict[str, Any]
    participants: list[dict[str, Any]]
    reconnect_token: str
    last_seq: int
    grace_seconds: float
    ping_seconds: float
    tracks: list[dict[str, Any]] = []


class ServerAnswer(ServerMessage):
    """Our answer to the client's publish offer."""

    type: Literal["answer"] = "answer"
    id: str | None = None
    pc: Literal["publish"] = "publish"
    sdp: str


class ServerOffer(ServerMessage):
    """Our offer on the client's subscribe peer connection; answer it with ``answer`` (pc=subscribe)."""

    type: Literal["offer"] = "offer"
    pc: Literal["subscribe"] = "subscribe"
    sdp: str


class MediaReset(ServerMessage):
    """Your peer connections are gone (e.g. the media server restarted): close both, publish
    again; a new subscribe offer follows."""

    type: Literal["media_reset"] = "media_reset"
    reason: str


class Ack(ServerMessage):
    type: Literal["ack"] = "ack"
    id: str | None = None


class Error(ServerMessage):
    type: Literal["error"] = "error"
    id: str | None = None
    code: str
    message: str


class ServerPing(ServerMessage):
    type: Literal["ping"] = "ping"
    ts: float


class ServerPong(ServerMessage):
    type: Literal["pong"] = "pong"
    id: str | None = None


class SessionEvent(ServerMessage):
    """Something that happened in the session: joined, left, disconnected, reconnected,
    role_changed, track_published, track_unpublished, muted, unmuted, session_ended.
    ``participant_id`` is whom it is about."""

    type: Literal["event"] = "event"
    seq: int
    event: str
    participant_id: str | None
    at: float
    data: dict[str, Any]


# WebSocket close codes (4000-4999 are the application's, RFC 6455 section 7.4.2)
CLOSE_LEFT = 1000
CLOSE_AUTH_FAILED = 4001
CLOSE_SESSION_ENDED = 4002
CLOSE_REMOVED = 4003
CLOSE_PROTOCOL = 4004
CLOSE_UNAVAILABLE = 4005
