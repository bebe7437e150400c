"""Finding and opening sessions, and the per-team limit on live sessions, without Ray."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

from mediaserver.errors import MediaserverError
from mediaserver.store import Store


class DirectoryCore:
    def __init__(self, store: Store, *, default_max_live_sessions: int, clock: Callable[[], float] = time.time):
        self.store = store
        self.default_max_live_sessions = default_max_live_sessions
        self.clock = clock
        # One Directory serialises opening, so two first joins cannot both pass the limit.
        self._lock = asyncio.Lock()

    async def limit_for(self, team_id: str) -> int:
        team = await self.store.get_team(team_id)
        if team and team["max_live_sessions"] is not None:
            return int(team["max_live_sessions"])
        return self.default_max_live_sessions

    async def open_session(self, room: dict) -> dict:
        """The room's unended session, started if there is none.

        A session that is ``ending_soon`` does not count against the team's
        limit; a join that would bring it back to ``live`` is checked like a
        new session.
        """
        async with self._lock:
            existing = await self.store.unended_session(room["id"])
            if existing and existing["status"] == "live":
                return existing
            limit = await self.limit_for(room["team_id"])
            live = await self.store.count_live_sessions(
                room["team_id"], exclude_session_id=existing["id"] if existing else None
            )
            if live >= limit:
                raise MediaserverError(
                    "session_limit_reached",
                    f"the team already has {live} live sessions, its limit; end one or raise the limit",
                )
            if existing:
                return existing
            session, _created = await self.store.open_session(room, self.clock())
            return session

    async def live_session_ids(self) -> list[str]:
        return await self.store.unended_session_ids()
