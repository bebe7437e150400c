"""REST routes under /v1: rooms, tokens, sessions, participants."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mediaserver import tokens
from mediaserver.api.auth import Caller, api_key
from mediaserver.api.docs import AUTH, BODY, INPUT, errors
from mediaserver.api.grants import admit
from mediaserver.api.people import room_calendar
from mediaserver.api.models import (
    ChatMessage,
    Question,
    MAX_OFFSET,
    MAX_SEQ,
    Event,
    Participant,
    ParticipantDetail,
    Room,
    RoomCreate,
    RoomList,
    RoomUpdate,
    Strict,
    Session,
    SessionDetail,
    SessionList,
    TokenRequest,
    TokenResponse,
    check_capacity,
    to_dt,
    to_ts,
)
from mediaserver.errors import MediaserverError

router = APIRouter(prefix="/v1")
Auth = Annotated[Caller, Depends(api_key)]
STATUSES = ("live", "ending_soon", "ended")
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # search text: no control characters (NUL would cut the pattern short)


@router.get("/health", tags=["server"])
async def health(request: Request) -> dict:
    return {"status": "ok", "version": request.app.version}


# Rooms ----------------------------------------------------------------------


async def _room(request: Request, caller: Caller, room_id: str) -> dict:
    room = await request.app.state.store.get_room(room_id, caller.team_id)
    if room is None:
        raise MediaserverError("room_not_found", f"no room {room_id!r} in your team")
    return room


async def _check_group(request: Request, caller: Caller, room_type: str, group_id: str | None) -> None:
    """A group room names a group of the caller's team; an ad-hoc room names none."""
    if room_type == "group":
        if not group_id:
            raise MediaserverError("invalid_request", "a group room needs group_id: the group whose members join it")
        if await request.app.state.store.get_group(group_id, caller.team_id) is None:
            raise MediaserverError("group_not_found", f"no group {group_id!r} in your team")
    elif group_id:
        raise MediaserverError("invalid_request", "only group rooms have a group_id")


@router.post("/rooms", status_code=201, response_model=Room, tags=["rooms"], responses=errors(AUTH, BODY, "group_not_found"))
async def create_room(body: RoomCreate, request: Request, caller: Auth) -> Room:
    check_capacity(body.capacity, request.app.state.settings.max_room_capacity)
    await _check_group(request, caller, body.type, body.group_id)
    row = await request.app.state.store.create_room(caller.team_id, body.to_row(only_set=False))
    return Room.from_row(row)


@router.get("/rooms", response_model=RoomList, tags=["rooms"], responses=errors(AUTH, INPUT))
async def list_rooms(
    request: Request,
    caller: Auth,
    q: Annotated[str | None, Query(max_length=100, pattern=PRINTABLE, description="Matches room ID, name or comment")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> RoomList:
    rows = await request.app.state.store.list_rooms(caller.team_id, q=q, limit=limit + 1, offset=offset)
    more = len(rows) > limit
    return RoomList(rooms=[Room.from_row(r) for r in rows[:limit]], next_offset=offset + limit if more else None)


@router.get("/rooms/{room_id}", response_model=Room, tags=["rooms"], responses=errors(AUTH, "room_not_found"))
async def get_room(room_id: str, request: Request, caller: Auth) -> Room:
    return Room.from_row(await _room(request, caller, room_id))


@router.patch("/rooms/{room_id}", response_model=Room, tags=["rooms"], responses=errors(AUTH, BODY, "room_not_found", "group_not_found"))
async def update_room(room_id: str, body: RoomUpdate, request: Request, caller: Auth) -> Room:
    current = await _room(request, caller, room_id)
    changes = body.to_row(only_set=True)
    check_capacity(changes.get("capacity"), request.app.state.settings.max_room_capacity)
    for required in ("name", "type", "media_mode", "archive_mode", "encryption", "capacity"):
        if required in changes and changes[required] is None:
            raise MediaserverError("invalid_request", f"{required} cannot be cleared")
    if "type" in changes or "group_id" in changes:
        await _check_group(request, caller, changes.get("type", current["type"]), changes.get("group_id", current.get("group_id")))
    starts = changes.get("starts_at", current["starts_at"])
    ends = changes.get("ends_at", current["ends_at"])
    if starts is not None and ends is not None and ends <= starts:
        raise MediaserverError("invalid_request", "ends_at must be after starts_at")
    row = await request.app.state.store.update_room(room_id, caller.team_id, changes)
    if row is None:
        raise MediaserverError("room_not_found", f"no room {room_id!r} in your team")
    return Room.from_row(row)


@router.get("/rooms/{room_id}/event.ics", tags=["rooms"], response_class=Response, responses=errors(AUTH, "room_not_found"))
async def room_ics(room_id: str, request: Request, caller: Auth) -> Response:
    """The room as an iCalendar event: its schedule, its comment and its page."""
    room = await _room(request, caller, room_id)
    url = f"{request.app.state.settings.base_url}/join/{quote(room_id)}"
    return Response(room_calendar(room, url), media_type="text/calendar",
                    headers={"Content-Disposition": f'attachment; filename="{room_id}.ics"'})


@router.post("/rooms/{room_id}/tokens", status_code=201, response_model=TokenResponse, tags=["tokens"], responses=errors(AUTH, BODY, "room_not_found", "token_ttl_too_long"))
async def create_token(room_id: str, body: TokenRequest, request: Request, caller: Auth) -> TokenResponse:
    await _room(request, caller, room_id)
    settings = request.app.state.settings
    token, grant = tokens.mint(
        key_id=caller.key_id,
        secret=caller.secret,
        room_id=room_id,
        identity=body.identity,
        name=body.name,
        role=body.role,
        ttl=body.ttl_seconds or settings.token_default_ttl,
        max_ttl=settings.token_max_ttl,
        not_before=to_ts(body.not_before),
    )
    base = settings.base_url
    return TokenResponse(
        token=token,
        room_id=room_id,
        identity=grant.identity,
        role=grant.role,
        expires_at=to_dt(grant.expires_at),
        ws_url=base.replace("http", "ws", 1) + "/v1/ws",
        join_url=f"{base}/join/{quote(room_id)}?token={quote(token)}",
    )


class JoinInfoRequest(Strict):
    token: str = Field(..., max_length=4096)
    room_id: str = Field(..., max_length=64)


class JoinInfo(BaseModel):
    room: Room
    identity: str
    name: str
    role: str
    expires_at: datetime
    session_status: str | None = Field(description="live or ending_soon while a session runs; null when none does")


@router.post("/join-info", response_model=JoinInfo, tags=["tokens"],
             responses=errors(BODY, "token_malformed", "token_expired", "token_not_yet_valid", "token_invalid_signature",
                              "token_unknown_key", "token_wrong_room", "room_not_found"))
async def join_info(body: JoinInfoRequest, request: Request) -> JoinInfo:
    """What a join link is for, checked as the join will check it (signature, expiry, room), so a
    page can show the room before turning a camera on, and refuse a bad link first. The token
    is the credential: no API key."""
    store = request.app.state.store
    admission = await admit(store, body.token, body.room_id)
    session = admission.session
    grant = admission.grant
    return JoinInfo(
        room=Room.from_row(admission.room), identity=grant.identity, name=grant.name, role=grant.role,
        expires_at=to_dt(grant.expires_at), session_status=session["status"] if session else None,
    )


# Sessions -------------------------------------------------------------------


def _statuses(status: str | None) -> list[str] | None:
    if not status:
        return None
    wanted = [s.strip() for s in status.split(",") if s.strip()]
    bad = [s for s in wanted if s not in STATUSES]
    if bad:
        raise MediaserverError("invalid_request", f"status must be among {', '.join(STATUSES)} (got {', '.join(bad)})")
    return wanted


@router.get("/sessions", response_model=SessionList, tags=["sessions"], responses=errors(AUTH, INPUT))
async def list_sessions(
    request: Request,
    caller: Auth,
    status: Annotated[str | None, Query(description="Comma-separated: live, ending_soon, ended")] = None,
    room_id: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=100, pattern=PRINTABLE, description="Matches session ID, room ID, room name, comment")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> SessionList:
    rows = await request.app.state.store.list_sessions(
        caller.team_id, status=_statuses(status), room_id=room_id, q=q, limit=limit + 1, offset=offset
    )
    grace = request.app.state.settings.grace_seconds
    more = len(rows) > limit
    return SessionList(
        sessions=[Session.from_row(r, grace=grace) for r in rows[:limit]],
        next_offset=offset + limit if more else None,
    )


async def _session(request: Request, caller: Caller, session_id: str) -> dict:
    row = await request.app.state.store.get_session(session_id, caller.team_id)
    if row is None:
        raise MediaserverError("session_not_found", f"no session {session_id!r} in your team")
    return row


@router.get("/sessions/{session_id}", response_model=SessionDetail, tags=["sessions"], responses=errors(AUTH, "session_not_found"))
async def get_session(session_id: str, request: Request, caller: Auth) -> SessionDetail:
    row = await _session(request, caller, session_id)
    store = request.app.state.store
    parts = await store.list_participants(session_id)
    counts = await store.participant_counts(session_id)
    quality = await store.latest_quality(session_id)
    base = Session.from_row(
        {**row, "participant_count": sum(p["state"] != "left" for p in parts)},
        grace=request.app.state.settings.grace_seconds,
    )
    return SessionDetail(
        **base.model_dump(),
        participants=[Participant.from_row(p, counts.get(p["id"]), quality.get(p["id"])) for p in parts],
        breakouts=row.get("meeting") or {},
    )


@router.get("/sessions/{session_id}/chat", response_model=list[ChatMessage], tags=["sessions"], responses=errors(AUTH, "session_not_found"))
async def session_chat(session_id: str, request: Request, caller: Auth) -> list[ChatMessage]:
    """Every chat message of the session (main room, breakout rooms, to all rooms), oldest first."""
    await _session(request, caller, session_id)
    return [ChatMessage.from_row(r) for r in await request.app.state.store.session_chat(session_id)]


@router.get("/sessions/{session_id}/questions", response_model=list[Question], tags=["sessions"], responses=errors(AUTH, "session_not_found"))
async def session_questions(session_id: str, request: Request, caller: Auth) -> list[Question]:
    """The session's Q&A: every question with its votes, status and answer, most votes first."""
    await _session(request, caller, session_id)
    rows = await request.app.state.store.session_questions(session_id)
    rows.sort(key=lambda q: (-q["votes"], q["asked_at"]))
    return [Question.from_row(r) for r in rows]


@router.get(
    "/sessions/{session_id}/participants/{participant_id}", response_model=ParticipantDetail, tags=["sessions"],
    responses=errors(AUTH, "session_not_found", "participant_not_found"),
)
async def get_participant(session_id: str, participant_id: str, request: Request, caller: Auth) -> ParticipantDetail:
    await _session(request, caller, session_id)
    store = request.app.state.store
    row = await store.get_participant(participant_id)
    if row is None or row["session_id"] != session_id:
        raise MediaserverError("participant_not_found", f"no participant {participant_id!r} in session {session_id!r}")
    evs = await store.participant_events(participant_id)
    counts = (await store.participant_counts(session_id)).get(participant_id)
    return ParticipantDetail(**Participant.from_row(row, counts).model_dump(), events=[Event.from_row(e) for e in evs])


@router.get("/sessions/{session_id}/events", response_model=list[Event], tags=["sessions"], responses=errors(AUTH, INPUT, "session_not_found"))
async def session_events(
    session_id: str,
    request: Request,
    caller: Auth,
    after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[Event]:
    """The session's whole event log (every participant's events and the session's own), in order."""
    await _session(request, caller, session_id)
    rows = await request.app.state.store.session_events(session_id, after_seq=after_seq, limit=limit)
    return [Event.from_row(r) for r in rows]


@router.post("/sessions/{session_id}/end", response_model=Session, tags=["sessions"], responses=errors(AUTH, "session_not_found", "session_ended", "unavailable"))
async def end_session(session_id: str, request: Request, caller: Auth) -> Session:
    row = await _session(request, caller, session_id)
    if row["status"] == "ended":
        raise MediaserverError("session_ended", "this session has already ended")
    await request.app.state.control.call(session_id, "end", "api")
    row = await _session(request, caller, session_id)
    return Session.from_row(row, grace=request.app.state.settings.grace_seconds)


# Server health ----------------------------------------------------------------


class WorkerHealth(BaseModel):
    name: str = Field(description="media:<node>:<index>")
    node: str
    region: str
    rate: float = Field(description="packets forwarded per second, over the last few seconds")
    port: int | None
    fastpath: bool | None
    transports: int
    cpu_seconds: float
    counters: dict[str, int] = Field(description="forwarded packets and bytes, RTCP handled, keyframe requests, NACKs")
    drops: dict[str, int] = Field(description="packets not forwarded, by reason")
    sessions: list[str] = Field(description="your team's unended sessions placed on this worker")


class HostHealth(BaseModel):
    name: str
    units: int = Field(description="sessions held in memory (someone is connected, or a call is under way)")
    asleep: int = Field(description="sessions in their grace period with nobody connected: kept only in the store")
    participants: int = Field(description="participants of the sessions held in memory")
    faults: int = Field(description="sessions rebuilt from the store after an unexpected failure")


class NodeHealth(BaseModel):
    node: str = Field(description="the node's IP address, its name here")
    region: str
    alive: bool
    state: str = Field(description="active, or draining (no new sessions)")
    media_address: str | None = Field(description="where clients send its media")
    workers: list[str]
    hosts: list[str]
    sessions: int = Field(description="unended sessions (all teams') whose media goes through it")
    rate: float = Field(description="packets its workers forward per second")


class ServerHealth(BaseModel):
    nodes: list[NodeHealth]
    hosts: list[HostHealth] = Field(description="the session hosts (all teams' sessions)")
    workers: list[WorkerHealth]
    live_sessions: int = Field(description="your team's live sessions (those counting against the limit)")
    ending_soon: int
    max_live_sessions: int


@router.get("/server", response_model=ServerHealth, tags=["server"], responses=errors(AUTH))
async def server_health(request: Request, caller: Auth) -> ServerHealth:
    """Media workers (with your sessions on each, forwarding counters and drops by reason) and your
    team's live sessions against its limit."""
    store, settings = request.app.state.store, request.app.state.settings
    unended = await store.list_sessions(caller.team_id, status=["live", "ending_soon"], limit=1000)
    team = await store.get_team(caller.team_id)
    limit = team["max_live_sessions"] if team and team["max_live_sessions"] is not None else settings.default_max_live_sessions
    control = request.app.state.control
    workers = []
    for name, stats in sorted((await control.media_stats()).items()):
        numeric = {k: int(v) for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        workers.append(WorkerHealth(
            name=name, node=stats["node"], region=stats["region"], rate=float(stats.get("rate", 0.0)),
            port=stats.get("port"), fastpath=stats.get("fastpath"), transports=stats.get("transports", 0),
            cpu_seconds=float(stats.get("cpu_seconds", 0.0)),
            counters={k: v for k, v in numeric.items() if not k.startswith("drop_") and k not in ("port", "transports", "cpu_seconds", "rate")},
            drops={k[5:]: v for k, v in numeric.items() if k.startswith("drop_") and v},
            sessions=[s["id"] for s in unended if s.get("media_worker") == name],
        ))
    return ServerHealth(
        nodes=[NodeHealth(**{k: v for k, v in n.items() if k in NodeHealth.model_fields}) for n in await control.node_summary()],
        hosts=[HostHealth(**h) for h in await control.host_stats()],
        workers=workers, live_sessions=sum(s["status"] == "live" for s in unended),
        ending_soon=sum(s["status"] == "ending_soon" for s in unended), max_live_sessions=limit,
    )
