"""Events with registration (/v1/events): an organizer sets up an event and its hosts (employers)
with their allowances; hosts pick time slots (each slot is a room); participants register with
one click while spots remain. The session of a slot starts when one of its speakers starts it,
from five minutes before the slot (see ``mediaserver.control.meeting``)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, model_validator

from mediaserver import tokens
from mediaserver.api.auth import Caller, api_key
from mediaserver.api.docs import AUTH, BODY, errors
from mediaserver.api.models import MAX_CAPACITY, Strict, to_dt, to_ts
from mediaserver.control.meeting import MAX_SPEAKERS_ON_SCREEN, START_EARLY
from mediaserver.errors import MediaserverError

router = APIRouter(prefix="/v1/events", tags=["events"])
Auth = Annotated[Caller, Depends(api_key)]


class Timeframe(Strict):
    starts_at: datetime
    ends_at: datetime


class HostIn(Strict):
    identity: str = Field(..., min_length=1, max_length=100, description="The host's (employer's) identity in tokens.")
    name: str | None = Field(None, min_length=1, max_length=100)
    max_sessions: int = Field(1, ge=1, le=100, description="How many sessions this host may hold.")
    spots: int = Field(MAX_CAPACITY, ge=1, le=MAX_CAPACITY, description="Participants per session.")
    duration_minutes: int = Field(30, ge=5, le=480)
    timeframes: list[Timeframe] = Field(
        default_factory=list, max_length=50, description="When this host's sessions may be; the whole event if empty."
    )


class EventCreate(Strict):
    name: str = Field(..., min_length=1, max_length=100)
    starts_at: datetime
    ends_at: datetime
    hosts: list[HostIn] = Field(..., min_length=1, max_length=200)
    max_sessions: int | None = Field(
        None, ge=1, le=10_000, description="Sessions available for the whole event (all hosts together); no cap if unset."
    )

    @model_validator(mode="after")
    def _valid(self) -> "EventCreate":
        start, end = to_ts(self.starts_at), to_ts(self.ends_at)
        if end <= start:
            raise ValueError("ends_at must be after starts_at")
        seen = set()
        for h in self.hosts:
            if h.identity in seen:
                raise ValueError(f"host {h.identity!r} is listed twice")
            seen.add(h.identity)
            for tf in h.timeframes:
                if not start <= to_ts(tf.starts_at) < to_ts(tf.ends_at) <= end:
                    raise ValueError(f"a timeframe of {h.identity!r} is not inside the event")
        return self


class Host(BaseModel):
    identity: str
    name: str
    max_sessions: int
    spots: int
    duration_minutes: int
    timeframes: list[Timeframe]


class Slot(BaseModel):
    id: str
    host_identity: str
    room_id: str
    starts_at: datetime
    ends_at: datetime
    spots: int
    registered: int
    remaining: int
    start_from: datetime = Field(..., description="From when the host may start the session (5 minutes before).")


class Event(BaseModel):
    id: str
    name: str
    starts_at: datetime
    ends_at: datetime
    max_sessions: int | None
    hosts: list[Host]
    slots: list[Slot]


class SlotCreate(Strict):
    host_identity: str = Field(..., min_length=1, max_length=100)
    starts_at: datetime


class RegistrationCreate(Strict):
    identity: str = Field(..., min_length=1, max_length=100)
    name: str | None = Field(None, min_length=1, max_length=100)


class Registration(BaseModel):
    slot_id: str
    room_id: str
    identity: str
    name: str
    registered_at: datetime
    token: str = Field(..., description="A participant token for the slot's room (role subscriber).")
    join_url: str


def _event(row: dict) -> Event:
    hosts = {h["id"]: h for h in row["hosts"]}
    return Event(
        id=row["id"], name=row["name"], starts_at=to_dt(row["starts_at"]), ends_at=to_dt(row["ends_at"]),
        max_sessions=row.get("max_sessions"),
        hosts=[
            Host(
                identity=h["identity"], name=h["name"], max_sessions=h["max_sessions"], spots=h["spots"],
                duration_minutes=round(h["duration"] / 60),
                timeframes=[Timeframe(starts_at=to_dt(a), ends_at=to_dt(b)) for a, b in h["timeframes"]],
            )
            for h in row["hosts"]
        ],
        slots=[_slot(s, hosts[s["host_id"]]) for s in row["slots"]],
    )


def _slot(s: dict, host: dict) -> Slot:
    n = len(s["registrations"])
    return Slot(
        id=s["id"], host_identity=host["identity"], room_id=s["room_id"], starts_at=to_dt(s["starts_at"]),
        ends_at=to_dt(s["ends_at"]), spots=s["spots"], registered=n, remaining=max(s["spots"] - n, 0),
        start_from=to_dt(s["starts_at"] - START_EARLY),
    )


async def _get(request: Request, caller: Caller, event_id: str) -> dict:
    row = await request.app.state.store.get_event(event_id, caller.team_id)
    if row is None:
        raise MediaserverError("event_not_found", f"no event {event_id!r} in your team")
    return row


@router.post("", status_code=201, response_model=Event, responses=errors(AUTH, BODY))
async def create_event(body: EventCreate, request: Request, caller: Auth) -> Event:
    start, end = to_ts(body.starts_at), to_ts(body.ends_at)
    hosts = [
        {
            "identity": h.identity, "name": h.name or h.identity, "max_sessions": h.max_sessions, "spots": h.spots,
            "duration": h.duration_minutes * 60.0,
            "timeframes": [[to_ts(t.starts_at), to_ts(t.ends_at)] for t in h.timeframes] or [[start, end]],
        }
        for h in body.hosts
    ]
    row = await request.app.state.store.create_event(caller.team_id, body.name, start, end, hosts, body.max_sessions)
    return _event(row)


@router.get("", response_model=list[Event], responses=errors(AUTH))
async def list_events(request: Request, caller: Auth) -> list[Event]:
    store = request.app.state.store
    return [_event(await store.get_event(e["id"])) for e in await store.list_events(caller.team_id)]


@router.get("/{event_id}", response_model=Event, responses=errors(AUTH, "event_not_found"))
async def get_event(event_id: str, request: Request, caller: Auth) -> Event:
    return _event(await _get(request, caller, event_id))


@router.post("/{event_id}/slots", status_code=201, response_model=Slot, responses=errors(AUTH, BODY, "event_not_found", "host_not_found", "slot_outside_window", "slot_overlap", "host_session_limit", "event_session_limit"))
async def pick_slot(event_id: str, body: SlotCreate, request: Request, caller: Auth) -> Slot:
    """A host picks a time slot for one of its sessions (within its timeframes, never overlapping
    its other sessions, within its allowance); the slot gets a room of its own."""
    event = await _get(request, caller, event_id)
    host = next((h for h in event["hosts"] if h["identity"] == body.host_identity), None)
    if host is None:
        raise MediaserverError("host_not_found", f"{body.host_identity!r} is not a host of this event")
    start = to_ts(body.starts_at)
    end = start + host["duration"]
    if not any(a <= start and end <= b for a, b in host["timeframes"]):
        raise MediaserverError(
            "slot_outside_window", f"a {round(host['duration'] / 60)}-minute session at that time is outside {host['name']}'s timeframes"
        )
    room = {
        "name": f"{event['name']}: {host['name']}"[:100], "type": "adhoc", "media_mode": "routed",
        "archive_mode": "manual", "encryption": "server", "location_hint": None,
        "comment": f"{event['name']} with {host['name']}"[:2000],
        # The spots are the participants'; the speakers come on top (within the 50 of any session).
        "capacity": min(MAX_CAPACITY, host["spots"] + MAX_SPEAKERS_ON_SCREEN),
    }
    slot = await request.app.state.store.add_slot(event, host, start, room)
    return _slot(slot, host)


@router.post("/{event_id}/slots/{slot_id}/registrations", status_code=201, response_model=Registration, responses=errors(AUTH, BODY, "event_not_found", "slot_not_found", "slot_full", "already_registered"))
async def register(event_id: str, slot_id: str, body: RegistrationCreate, request: Request, caller: Auth) -> Registration:
    """One-click registration for a session while spots remain; returns the participant's token."""
    event = await _get(request, caller, event_id)
    slot = next((s for s in event["slots"] if s["id"] == slot_id), None)
    if slot is None:
        raise MediaserverError("slot_not_found", f"no slot {slot_id!r} in this event")
    name = body.name or body.identity
    row = await request.app.state.store.register(slot_id, body.identity, name)
    settings = request.app.state.settings
    ttl = max(slot["ends_at"] - time.time(), 0) + 3600  # valid until an hour after the slot
    token, _ = tokens.mint(
        key_id=caller.key_id, secret=caller.secret, room_id=slot["room_id"], identity=body.identity, name=name,
        role="subscriber", ttl=min(ttl, settings.token_max_ttl), max_ttl=settings.token_max_ttl,
    )
    return Registration(
        slot_id=slot_id, room_id=slot["room_id"], identity=body.identity, name=name,
        registered_at=to_dt(row["registered_at"]), token=token,
        join_url=f"{settings.base_url}/join/{quote(slot['room_id'])}?token={quote(token)}",
    )
