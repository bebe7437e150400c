"""Finding and opening sessions, and the per-team limit on live sessions, without Ray."""

from __future__ import annotations

import time
from typing import Callable

from mediaserver.store import Store


class DirectoryCore:
    def __init__(self, store: Store, *, default_max_live_sessions: int, clock: Callable[[], float] = time.time):
        self.store = store
        self.default_max_live_sessions = default_max_live_sessions
        self.clock = clock

    async def limit_for(self, team_id: str) -> int:
        team = await self.store.get_team(team_id)
        if team and team["max_live_sessions"] is not None:
            return int(team["max_live_sessions"])
        return self.default_max_live_sessions

    async def open_session(self, room: dict) -> dict:
        """The room's unended session, started if there is none.

        A session that is ``ending_soon`` does not count against the team's limit; a join
        that would bring it back to ``live`` is checked like a new session. The store checks
        the limit in the transaction that opens the session, so concurrent first joins of a
        team's rooms cannot pass it together.
        """
        session, _created = await self.store.open_session(room, self.clock(), default_limit=self.default_max_live_sessions)
        return session

    async def live_session_ids(self) -> list[str]:
        return await self.store.unended_session_ids()
