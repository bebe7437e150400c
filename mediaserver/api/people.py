"""Users, groups and invite links.

- Users sign in with e-mail and password (argon2id hashes) and get a user token; with it they
  ask for a participant token to a room of one of their groups (leaders and co-leaders as
  moderators, members as publishers) or to an ad-hoc room of their team.
- A group room's session may be started only by the group's leaders and co-leaders; members
  join while it is live.
- An ad-hoc room has invite links for guests without an account: signed, expiring, revocable,
  usable only while the room's session is live (no asynchronous access), and downloadable as
  an iCalendar event with the room's schedule and comment.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal
from urllib.parse import quote

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import VerificationError
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from mediaserver import tokens
from mediaserver.api.auth import Caller, api_key
from mediaserver.api.docs import AUTH, BODY, errors
from mediaserver.api.models import Strict, TokenResponse, to_dt
from mediaserver.errors import MediaserverError
from mediaserver.ids import new_id

router = APIRouter(prefix="/v1")
Auth = Annotated[Caller, Depends(api_key)]
hasher = PasswordHasher()
USER_AUDIENCE = "mediaserver:user"
INVITE_AUDIENCE = "mediaserver:invite"
USER_TOKEN_TTL = 12 * 3600
ROLE_OF = {"leader": "moderator", "co_leader": "moderator", "member": "publisher"}


class UserCreate(Strict):
    email: str = Field(..., min_length=3, max_length=200, pattern=r"^[^@\s]+@[^@\s]+$")
    name: str = Field(..., min_length=1, max_length=100)
    password: str = Field(..., min_length=8, max_length=200)


class User(BaseModel):
    id: str
    email: str
    name: str


class Login(Strict):
    email: str = Field(..., max_length=200)
    password: str = Field(..., max_length=200)


class LoginResponse(BaseModel):
    token: str = Field(..., description="Send as 'Authorization: Bearer <token>' to the user endpoints.")
    user: User
    expires_at: datetime


class GroupCreate(Strict):
    name: str = Field(..., min_length=1, max_length=100)


class MemberSet(Strict):
    user_id: str = Field(..., max_length=40)
    role: Literal["leader", "co_leader", "member"] = "member"


class Member(BaseModel):
    user_id: str
    name: str
    email: str
    role: str


class Group(BaseModel):
    id: str
    name: str
    members: list[Member]


class InviteCreate(Strict):
    role: Literal["publisher", "subscriber"] = "publisher"
    ttl_seconds: int = Field(7 * 86400, gt=0, le=30 * 86400)
    max_uses: int | None = Field(None, ge=1, le=10_000, description="How many guests may join through it; no cap if unset.")


class Invite(BaseModel):
    id: str
    room_id: str
    role: str
    expires_at: datetime
    revoked: bool
    max_uses: int | None
    uses: int
    url: str | None = Field(None, description="The link to share (only when the invite is made).")
    ics_url: str | None = None


class InviteInfo(BaseModel):
    room_name: str
    comment: str | None
    starts_at: datetime | None
    ends_at: datetime | None
    live: bool


class GuestJoin(Strict):
    name: str = Field(..., min_length=1, max_length=100)


# Users --------------------------------------------------------------------------------


@router.post("/users", status_code=201, response_model=User, tags=["people"], responses=errors(AUTH, BODY, "user_exists"))
async def create_user(body: UserCreate, request: Request, caller: Auth) -> User:
    row = await request.app.state.store.create_user(caller.team_id, body.email, body.name, hasher.hash(body.password))
    return User(id=row["id"], email=row["email"], name=row["name"])


@router.post("/auth/login", response_model=LoginResponse, tags=["people"], responses=errors(BODY, "invalid_credentials"))
async def login(body: Login, request: Request) -> LoginResponse:
    user = await request.app.state.store.user_by_email(body.email)
    try:
        # Verify against a dummy hash for unknown users, so timing does not tell which e-mails exist.
        hasher.verify(user["password_hash"] if user else _DUMMY, body.password)
    except VerificationError:
        user = None
    if user is None:
        raise MediaserverError("invalid_credentials", "wrong e-mail or password")
    exp = time.time() + USER_TOKEN_TTL
    token = jwt.encode(
        {"sub": user["id"], "team": user["team_id"], "aud": USER_AUDIENCE, "exp": int(exp), "jti": new_id("ut")},
        request.app.state.reconnect_secret, algorithm="HS256",
    )
    return LoginResponse(token=token, user=User(id=user["id"], email=user["email"], name=user["name"]), expires_at=to_dt(exp))


_DUMMY = hasher.hash("not a password anyone has")


async def signed_in(request: Request, authorization: Annotated[str | None, Header()] = None) -> dict:
    if not authorization or not authorization.lower().startswith("bearer "):
        raise MediaserverError("unauthorized", "sign in first and send 'Authorization: Bearer <user token>'")
    try:
        claims = jwt.decode(authorization[7:], request.app.state.reconnect_secret, algorithms=["HS256"], audience=USER_AUDIENCE)
    except jwt.ExpiredSignatureError:
        raise MediaserverError("unauthorized", "your sign-in has expired; sign in again")
    except jwt.InvalidTokenError:
        raise MediaserverError("unauthorized", "this is not a valid user token")
    user = await request.app.state.store.get_user(claims["sub"])
    if user is None:
        raise MediaserverError("unauthorized", "this user no longer exists")
    return user


SignedIn = Annotated[dict, Depends(signed_in)]


@router.get("/me", response_model=User, tags=["people"], responses=errors(AUTH))
async def me(user: SignedIn) -> User:
    return User(id=user["id"], email=user["email"], name=user["name"])


# Groups --------------------------------------------------------------------------------


def _group(row: dict) -> Group:
    return Group(id=row["id"], name=row["name"], members=[Member(**m) for m in row["members"]])


@router.post("/groups", status_code=201, response_model=Group, tags=["people"], responses=errors(AUTH, BODY))
async def create_group(body: GroupCreate, request: Request, caller: Auth) -> Group:
    return _group(await request.app.state.store.create_group(caller.team_id, body.name, caller.key_id))


@router.get("/groups/{group_id}", response_model=Group, tags=["people"], responses=errors(AUTH, "group_not_found"))
async def get_group(group_id: str, request: Request, caller: Auth) -> Group:
    row = await request.app.state.store.get_group(group_id, caller.team_id)
    if row is None:
        raise MediaserverError("group_not_found", f"no group {group_id!r} in your team")
    return _group(row)


@router.put("/groups/{group_id}/members", response_model=Group, tags=["people"], responses=errors(AUTH, BODY, "group_not_found", "user_not_found"))
async def set_member(group_id: str, body: MemberSet, request: Request, caller: Auth) -> Group:
    store = request.app.state.store
    if await store.get_group(group_id, caller.team_id) is None:
        raise MediaserverError("group_not_found", f"no group {group_id!r} in your team")
    user = await store.get_user(body.user_id)
    if user is None or user["team_id"] != caller.team_id:
        raise MediaserverError("user_not_found", f"no user {body.user_id!r} in your team")
    await store.set_member(group_id, body.user_id, body.role)
    return _group(await store.get_group(group_id))


@router.post("/rooms/{room_id}/join-token", status_code=201, response_model=TokenResponse, tags=["people"], responses=errors(AUTH, "room_not_found", "not_group_member", "unavailable"))
async def user_join_token(room_id: str, request: Request, user: SignedIn) -> TokenResponse:
    """A signed-in user's participant token: to a room of one of its groups, or an ad-hoc room of its team."""
    store, settings = request.app.state.store, request.app.state.settings
    room = await store.get_room(room_id, user["team_id"])
    if room is None:
        raise MediaserverError("room_not_found", f"no room {room_id!r} for you")
    if room.get("group_id"):
        group = await store.get_group(room["group_id"])
        member = await store.member_role(room["group_id"], user["id"])
        if group is None or member is None:
            raise MediaserverError("not_group_member", "this room is for the members of its group")
        key = await store.get_api_key(group["key_id"])
        role = ROLE_OF[member]
    else:
        keys = [k for k in await store.list_api_keys(user["team_id"]) if not k["revoked_at"]]
        if not keys:
            raise MediaserverError("unavailable", "your team has no API key to sign tokens with")
        key, role = keys[0], "publisher"
    token, grant = tokens.mint(
        key_id=key["id"], secret=key["secret"], room_id=room_id, identity=user["id"], name=user["name"], role=role,
        ttl=settings.token_default_ttl, max_ttl=settings.token_max_ttl,
    )
    return _token_response(settings, token, grant)


def _token_response(settings, token: str, grant: tokens.Grant) -> TokenResponse:
    base = settings.base_url
    return TokenResponse(
        token=token, room_id=grant.room_id, identity=grant.identity, role=grant.role,
        expires_at=to_dt(grant.expires_at), ws_url=base.replace("http", "ws", 1) + "/v1/ws",
        join_url=f"{base}/join/{quote(grant.room_id)}?token={quote(token)}",
    )


# Invite links -----------------------------------------------------------------------------


def _invite(row: dict, base: str, link: str | None = None) -> Invite:
    return Invite(
        id=row["id"], room_id=row["room_id"], role=row["role"], expires_at=to_dt(row["expires_at"]),
        revoked=row["revoked_at"] is not None, max_uses=row.get("max_uses"), uses=row.get("uses") or 0,
        url=f"{base}/invite/{link}" if link else None,
        ics_url=f"{base}/v1/invites/{link}/event.ics" if link else None,
    )


@router.post("/rooms/{room_id}/invites", status_code=201, response_model=Invite, tags=["invites"], responses=errors(AUTH, BODY, "room_not_found"))
async def create_invite(room_id: str, body: InviteCreate, request: Request, caller: Auth) -> Invite:
    store = request.app.state.store
    room = await store.get_room(room_id, caller.team_id)
    if room is None:
        raise MediaserverError("room_not_found", f"no room {room_id!r} in your team")
    if room["type"] != "adhoc":
        raise MediaserverError("invalid_request", "invite links are for ad-hoc rooms; group rooms are for their members")
    row = await store.create_invite(room_id, caller.key_id, body.role, body.ttl_seconds, body.max_uses)
    link = jwt.encode(
        {"inv": row["id"], "aud": INVITE_AUDIENCE, "exp": int(row["expires_at"])}, caller.secret, algorithm="HS256",
        headers={"kid": caller.key_id},
    )
    return _invite(row, request.app.state.settings.base_url, link)


@router.get("/rooms/{room_id}/invites", response_model=list[Invite], tags=["invites"], responses=errors(AUTH, "room_not_found"))
async def list_invites(room_id: str, request: Request, caller: Auth) -> list[Invite]:
    store = request.app.state.store
    if await store.get_room(room_id, caller.team_id) is None:
        raise MediaserverError("room_not_found", f"no room {room_id!r} in your team")
    return [_invite(r, request.app.state.settings.base_url) for r in await store.list_invites(room_id)]


@router.delete("/rooms/{room_id}/invites/{invite_id}", status_code=204, tags=["invites"], responses=errors(AUTH, "room_not_found", "not_found"))
async def revoke_invite(room_id: str, invite_id: str, request: Request, caller: Auth) -> Response:
    store = request.app.state.store
    if await store.get_room(room_id, caller.team_id) is None:
        raise MediaserverError("room_not_found", f"no room {room_id!r} in your team")
    if not await store.revoke_invite(room_id, invite_id):
        raise MediaserverError("not_found", f"no unrevoked invite {invite_id!r} for this room")
    return Response(status_code=204)


async def _open_invite(request: Request, link: str) -> tuple[dict, dict, dict]:
    """(invite, room, signing key) of a link, or the reason it is refused."""
    store = request.app.state.store
    try:
        kid = jwt.get_unverified_header(link).get("kid")
    except jwt.InvalidTokenError:
        raise MediaserverError("invite_invalid", "this is not an invite link")
    key = await store.get_api_key(kid) if isinstance(kid, str) else None
    if key is None:
        raise MediaserverError("invite_invalid", "this invite link is not valid (its key is gone)")
    try:
        claims = jwt.decode(link, key["secret"], algorithms=["HS256"], audience=INVITE_AUDIENCE)
    except jwt.ExpiredSignatureError:
        raise MediaserverError("invite_expired", "this invite link has expired; ask for a new one")
    except jwt.InvalidTokenError:
        raise MediaserverError("invite_invalid", "this invite link is not valid")
    invite = await store.get_invite(claims.get("inv", ""))
    if invite is None:
        raise MediaserverError("invite_invalid", "this invite link is not valid")
    if invite["revoked_at"] is not None:
        raise MediaserverError("invite_revoked", "this invite link has been withdrawn")
    room = await store.get_room(invite["room_id"])
    return invite, room, key


@router.get("/invites/{link}", response_model=InviteInfo, tags=["invites"], responses=errors("invite_invalid", "invite_expired", "invite_revoked"))
async def invite_info(link: str, request: Request) -> InviteInfo:
    _, room, _ = await _open_invite(request, link)
    session = await request.app.state.store.unended_session(room["id"])
    return InviteInfo(
        room_name=room["name"], comment=room["comment"], starts_at=to_dt(room["starts_at"]),
        ends_at=to_dt(room["ends_at"]), live=session is not None and session["status"] == "live",
    )


@router.post("/invites/{link}/join", status_code=201, response_model=TokenResponse, tags=["invites"], responses=errors(BODY, "invite_invalid", "invite_expired", "invite_revoked", "invite_used_up", "session_not_live"))
async def guest_join(link: str, body: GuestJoin, request: Request) -> TokenResponse:
    """A guest without an account joins through an invite link, only while the session is live."""
    invite, room, key = await _open_invite(request, link)
    session = await request.app.state.store.unended_session(room["id"])
    if session is None or session["status"] != "live":
        raise MediaserverError(
            "session_not_live", "guests can join only while the session is live; come back when it has started"
        )
    await request.app.state.store.use_invite(invite["id"])
    settings = request.app.state.settings
    token, grant = tokens.mint(
        key_id=key["id"], secret=key["secret"], room_id=room["id"], identity=new_id("guest"), name=body.name,
        role=invite["role"], ttl=min(settings.token_default_ttl, max(int(invite["expires_at"] - time.time()), 60)),
        max_ttl=settings.token_max_ttl,
    )
    return _token_response(settings, token, grant)


def room_calendar(room: dict, url: str) -> bytes:
    """The room as an iCalendar event (RFC 5545) with its schedule, comment and the link."""
    from icalendar import Calendar, Event

    cal = Calendar()
    cal.add("prodid", "-//mediaserver//invite//EN")
    cal.add("version", "2.0")
    ev = Event()
    ev.add("uid", f"{room['id']}@mediaserver")
    ev.add("summary", room["name"])
    start = room["starts_at"] or time.time()
    end = room["ends_at"] or start + 3600
    ev.add("dtstart", datetime.fromtimestamp(start, tz=timezone.utc))
    ev.add("dtend", datetime.fromtimestamp(end, tz=timezone.utc) if end > start else datetime.fromtimestamp(start, tz=timezone.utc) + timedelta(hours=1))
    ev.add("dtstamp", datetime.now(tz=timezone.utc))
    ev.add("description", "\n\n".join(x for x in (room["comment"], f"Join: {url}") if x))
    ev.add("url", url)
    cal.add_component(ev)
    return cal.to_ical()


@router.get("/invites/{link}/event.ics", tags=["invites"], response_class=Response, responses=errors("invite_invalid", "invite_expired", "invite_revoked"))
async def invite_calendar(link: str, request: Request) -> Response:
    _, room, _ = await _open_invite(request, link)
    url = f"{request.app.state.settings.base_url}/invite/{link}"
    return Response(
        room_calendar(room, url), media_type="text/calendar",
        headers={"Content-Disposition": f'attachment; filename="{room["id"]}.ics"'},
    )
