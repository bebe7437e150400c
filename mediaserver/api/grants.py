"""A participant token checked against the store: the key that signed it, its room, its team."""

from __future__ import annotations

from dataclasses import dataclass

from mediaserver import tokens
from mediaserver.errors import MediaserverError
from mediaserver.store import Store


@dataclass(frozen=True)
class Admission:
    grant: tokens.Grant
    key: dict
    room: dict
    session: dict | None  # the room's unended session, if one runs
    slot: dict | None  # the event slot the room was made for, if it was


async def admit(store: Store, token: str, room_id: str | None) -> Admission:
    """The token's grant, the API key that signed it and its room; each way of failing has its
    own code (``token_*``, ``room_not_found``). The key, the room, its session and its event
    slot are read in one statement, before the token is verified (its key names the secret)."""
    kid, claimed = tokens.peek(token, room=room_id is None) if isinstance(token, str) else (None, None)
    wanted = room_id or claimed
    found = await store.join_lookup(kid, wanted) if kid and wanted else None
    keys: dict[str, dict | None] = {}

    async def secret_for(k: str) -> str | None:
        keys[k] = key = found[0] if found is not None and k == kid else await store.get_api_key(k)
        return key["secret"] if key else None

    grant = await tokens.verify(token, room_id=room_id, secret_for=secret_for)
    key = keys.get(grant.key_id)
    if found is not None and grant.room_id == wanted:
        room, session, slot = found[1:]
    else:
        room, session, slot = await store.room_for_join(grant.room_id)
    if room is None or key is None or room["team_id"] != key["team_id"]:
        raise MediaserverError("room_not_found", f"no room {grant.room_id!r} for this token's API key")
    return Admission(grant, key, room, session, slot)
