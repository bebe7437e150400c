"""WebSocket messages on /v1/ws, both directions (pydantic; one module so clients have one reference).

Client -> server messages may carry an ``id``; the server answers each with
``ack`` (same id) or ``error`` (same id). The first message must be ``join``
or ``resume``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from mediaserver.api.models import refuse_nul

Role = Literal["moderator", "publisher", "subscriber"]


class ClientMessage(BaseModel):
    # strict: a boolean is true or false, a number a number ("no" is not false).
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: object) -> object:
        return refuse_nul(data)
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
Source = Literal["camera", "microphone", "screen", "screen_audio"]


class Offer(ClientMessage):
    type: Literal["offer"]
    sdp: str = Field(..., max_length=65536)
    pc: Literal["publish", "subscribe"] = "publish"
    # What each offered track is, by its mid: a screen share goes before other videos when a
    # subscriber's link cannot carry them all. Unnamed tracks are cameras and microphones.
    sources: dict[Annotated[str, Field(min_length=1, max_length=16)], Source] = Field(default_factory=dict, max_length=8)


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


class VideoQuality(ClientMessage):
    """Which layer of a simulcast video track to receive: ``low``, ``medium`` or ``high`` (say,
    for the size you show it at), from the next keyframe of that layer; and at what frame rate:
    ``full``, ``half`` or ``quarter`` (a camera that sends VP8 temporal layers, as
    mediaserver.js asks of cameras; others are sent as they are). At least one of the two."""

    type: Literal["video_quality"]
    track_id: str = Field(..., max_length=128)
    quality: Literal["low", "medium", "high"] | None = None
    frame_rate: Literal["full", "half", "quarter"] | None = None

    @model_validator(mode="after")
    def _something(self) -> "VideoQuality":
        if self.quality is None and self.frame_rate is None:
            raise ValueError("give a quality (low, medium, high), a frame_rate (full, half, quarter), or both")
        return self


class Mute(ClientMessage):
    """Tell the others one of your tracks is muted (or not)."""

    type: Literal["mute"]
    track_id: str = Field(..., max_length=128)
    muted: bool


class VideoFallback(ClientMessage):
    """Publisher audio fallback: your uplink cannot carry your video (your browser's own estimate
    says so: mediaserver.js watches it), so you send audio only for now. Every subscriber of the
    track is told, as ``video_disabled_warning``, ``video_disabled_warning_lifted``,
    ``video_disabled`` and ``video_enabled`` with reason ``publisher``."""

    type: Literal["video_fallback"]
    track_id: str = Field(..., max_length=128)
    state: Literal["video_disabled_warning", "video_disabled_warning_lifted", "video_disabled", "video_enabled"]


class StartSession(ClientMessage):
    """Speakers: open an event's session to participants (from 5 minutes before its slot)."""

    type: Literal["start_session"]


# Stage: subscribers ask to "enable mic & camera"; speakers (moderators) approve or decline.
# Publishing takes a seat on screen (4 speakers, 6 others at most).
class RequestStage(ClientMessage):
    type: Literal["request_stage"]


class CancelStageRequest(ClientMessage):
    type: Literal["cancel_stage_request"]


class AnswerStageRequest(ClientMessage):
    type: Literal["answer_stage_request"]
    participant_id: str = Field(..., max_length=64)
    approve: bool


class LeaveStage(ClientMessage):
    """Step off screen: your publications end (close your publish connection)."""

    type: Literal["leave_stage"]


class RemoveFromStage(ClientMessage):
    type: Literal["remove_from_stage"]
    participant_id: str = Field(..., max_length=64)


class RemoveParticipant(ClientMessage):
    type: Literal["remove_participant"]
    participant_id: str = Field(..., max_length=64)


# Chat and Q&A. Length limits are the server's rules, each refusal with its own code
# (message_too_long, breakout_name_too_long): the schema leaves texts to them, and a whole
# message is bounded by the socket's frame limit.
class Chat(ClientMessage):
    """Say something to your room (the main room or your breakout room); ``all_rooms`` (speakers)
    writes to every room at once."""

    type: Literal["chat"]
    text: str
    all_rooms: bool = False


class ChatHistory(ClientMessage):
    type: Literal["chat_history"]
    limit: int = Field(100, ge=1, le=500)


class Ask(ClientMessage):
    type: Literal["ask"]
    text: str


class Upvote(ClientMessage):
    type: Literal["upvote"]
    question_id: str = Field(..., max_length=64)


class AnswerQuestion(ClientMessage):
    """Speakers: answer (optionally in writing), mark answered, or dismiss a question."""

    type: Literal["answer_question"]
    question_id: str = Field(..., max_length=64)
    status: Literal["answered", "dismissed"] = "answered"
    answer: str | None = None


class Questions(ClientMessage):
    type: Literal["questions"]


# Breakout rooms (speakers): create up to 10, rename, assign, open, visit, close.
class BreakoutCreate(ClientMessage):
    type: Literal["breakout_create"]
    names: list[str] = Field(..., min_length=1, max_length=32)


class BreakoutRename(ClientMessage):
    type: Literal["breakout_rename"]
    breakout_id: str = Field(..., max_length=64)
    name: str


class BreakoutDelete(ClientMessage):
    type: Literal["breakout_delete"]
    breakout_id: str = Field(..., max_length=64)


class BreakoutAssign(ClientMessage):
    """participant id -> breakout room id (null: the main room)."""

    type: Literal["breakout_assign"]
    assignments: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=64)] | None] = Field(
        ..., max_length=100
    )


class BreakoutAutoAssign(ClientMessage):
    type: Literal["breakout_auto_assign"]


class BreakoutOpen(ClientMessage):
    type: Literal["breakout_open"]


class BreakoutClose(ClientMessage):
    type: Literal["breakout_close"]


class BreakoutVisit(ClientMessage):
    type: Literal["breakout_visit"]
    breakout_id: str | None = Field(None, max_length=64)


# Relayed (peer-to-peer) rooms: each publisher offers one peer connection to each room mate.
class PeerTrack(ClientMessage):
    name: str = Field(..., min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$")  # e.g. the transceiver's mid
    kind: Literal["audio", "video"]


class PeerPublish(ClientMessage):
    """What I now send my room mates directly (an empty list: nothing); answered with my tracks."""

    type: Literal["peer_publish"]
    tracks: list[PeerTrack] = Field(..., max_length=4)


class Signal(ClientMessage):
    """An offer, answer or ICE candidate for one room mate, on the link whose publisher is
    ``link`` (me when I offer my media, the other when I answer or receive)."""

    type: Literal["signal"]
    to: str = Field(..., max_length=64)
    link: str = Field(..., max_length=64)
    kind: Literal["offer", "answer", "candidate"]
    sdp: str | None = Field(None, max_length=65536)
    candidate: str | None = Field(None, max_length=1024)  # "" or absent with kind candidate: end of candidates
    sdp_mid: str | None = Field(None, max_length=64)
    sdp_mline_index: int | None = Field(None, ge=0, le=255)

    @model_validator(mode="after")
    def _has_what_it_says(self) -> "Signal":
        if self.kind in ("offer", "answer") and not self.sdp:
            raise ValueError(f"a {self.kind} carries sdp")
        if self.kind == "candidate" and self.sdp:
            raise ValueError("a candidate carries candidate, not sdp")
        return self

    def payload(self) -> dict[str, Any]:
        return self.model_dump(exclude={"type", "id", "to", "link"}, exclude_none=True)


class QualityReport(ClientMessage):
    """Relayed rooms: what I receive from my peers, from my own getStats (loss since my last
    report, jitter), for my connection-quality log and the dashboard."""

    type: Literal["quality_report"]
    loss_percent: float = Field(..., ge=0, le=100)
    jitter_ms: float = Field(..., ge=0, le=60_000)


class DirectFailed(ClientMessage):
    """Auto rooms: I cannot connect to a peer directly (and no TURN got me through): route the
    session's media through the server."""

    type: Literal["direct_failed"]


class ArchiveStart(ClientMessage):
    """Moderators: start recording the session (answered with the archive)."""

    type: Literal["archive_start"]
    name: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")
    output: Literal["individual", "composed", "both"] = "individual"


class ArchiveStop(ClientMessage):
    """Moderators: stop the archive recording now (or the one named)."""

    type: Literal["archive_stop"]
    archive_id: str | None = Field(None, max_length=64)


AnyClientMessage = Annotated[
    Union[
        Join, Resume, Ping, Pong, Leave, EndSession, SetRole, Offer, Answer, Candidate, Subscribe, VideoQuality, Mute, VideoFallback,
        StartSession, RequestStage, CancelStageRequest, AnswerStageRequest, LeaveStage, RemoveFromStage, RemoveParticipant,
        Chat, ChatHistory, Ask, Upvote, AnswerQuestion, Questions,
        BreakoutCreate, BreakoutRename, BreakoutDelete, BreakoutAssign, BreakoutAutoAssign, BreakoutOpen,
        BreakoutClose, BreakoutVisit, PeerPublish, Signal, QualityReport, DirectFailed, ArchiveStart, ArchiveStop,
    ],
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
    chat: list[dict[str, Any]] = []  # the latest messages of your room
    questions: list[dict[str, Any]] = []
    breakouts: dict[str, Any] = {}  # {"rooms": [{id, name}], "open": bool, "plan": {participant: room}}
    # For an event's session: {"slot_id", "starts_at", "start_from", "spots", "started"}; speakers
    # start it (start_session) from start_from on; participants join once it has started.
    event: dict[str, Any] | None = None
    # RTCIceServer entries for every peer connection: STUN, and TURN with credentials for this
    # participant (TURN REST scheme) that expire; a resume brings fresh ones.
    ice_servers: list[dict[str, Any]] = []
    # How media goes now: "routed" (through the server) or "relayed" (directly between
    # participants); an auto room changes it with a media_mode_changed event.
    media_mode: str = "routed"
    # The archive recording the session now ({"id", "name", "started_at"}), if one is.
    archive: dict[str, Any] | None = None
    # Who speaks in your room now ({"active", "speaking"}, as the ``speakers`` message that
    # follows each change says); null where media goes directly between participants.
    speakers: dict[str, Any] | None = None


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


class Layers(ServerMessage):
    """Which layers of your simulcast track to send (lowest first; ``false``: nobody receives it
    now, stop encoding it); more come as that changes."""

    type: Literal["layers"] = "layers"
    track_id: str
    active: list[bool]


class Speakers(ServerMessage):
    """Who speaks in your room now (routed media; from the audio levels publishers send, RFC
    6464): ``active`` is the one who started last and still speaks (``null``: nobody does),
    ``speaking`` all who do. Sent when that changes."""

    type: Literal["speakers"] = "speakers"
    active: str | None
    speaking: list[str]


class VideoAdaptation(ServerMessage):
    """Your link cannot carry a video you receive (audio fallback) or can again (video
    recovery), per publisher's track: ``video_disabled_warning`` (it is on its lowest layer and
    the link still struggles), ``video_disabled`` (paused; its audio goes on),
    ``video_disabled_warning_lifted``, ``video_enabled`` (back, from a keyframe). Nobody else's
    video changes. ``reason``: ``bandwidth`` (your link), ``publisher`` (the publisher's uplink:
    it sends audio only for now, to everyone)."""

    type: Literal["video_disabled_warning", "video_disabled_warning_lifted", "video_disabled", "video_enabled"]
    track_id: str
    reason: Literal["bandwidth", "publisher"] = "bandwidth"


class MediaReset(ServerMessage):
    """Your peer connections are gone (e.g. the media server restarted): close both, publish
    again; a new subscribe offer follows."""

    type: Literal["media_reset"] = "media_reset"
    reason: str


class ServerSignal(ServerMessage):
    """A room mate's offer, answer or candidate (relayed rooms); ``from`` sent it."""

    model_config = ConfigDict(populate_by_name=True)
    type: Literal["signal"] = "signal"
    from_: str = Field(..., alias="from", serialization_alias="from")
    link: str
    kind: Literal["offer", "answer", "candidate"]
    sdp: str | None = None
    candidate: str | None = None
    sdp_mid: str | None = None
    sdp_mline_index: int | None = None


class PeerClosed(ServerMessage):
    """Relayed rooms: close your links with this participant (only those it publishes on, when
    ``as_publisher_only``): it left, or left the stage."""

    type: Literal["peer_closed"] = "peer_closed"
    participant_id: str
    as_publisher_only: bool
    reason: str


class PeersChanged(ServerMessage):
    """Relayed rooms: who is in your room changed (breakout rooms): close links with anyone who is
    not in your room now, and offer yours to those who are."""

    type: Literal["peers_changed"] = "peers_changed"


class Ack(ServerMessage):
    type: Literal["ack"] = "ack"
    id: str | None = None
    data: Any = None  # the command's result, where it has one (a chat message, a question, ...)


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
    role_changed, track_published, track_unpublished, muted, unmuted, session_ended;
    stage_joined, stage_left, stage_requested, stage_request_cancelled, stage_approved,
    stage_declined; chat; question_asked, question_upvoted, question_answered,
    question_dismissed; breakouts_changed, breakouts_opened, breakouts_closed, moved;
    media_mode_changed (auto rooms: ``mode`` and ``reason``).
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
