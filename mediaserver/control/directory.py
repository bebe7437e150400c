"""Opening sessions and placing them, and the per-team limit on live sessions, without Ray.

The Directory is the store's placement columns (each session's host and media worker, chosen
when it opens) read through this class: any gateway, and any restarted host, finds a session
where it was put.
"""

from __future__ import annotations

import random
import time
from typing import Callable

from mediaserver.control.media import worker_index
from mediaserver.ids import new_id
from mediaserver.store import Store

LOADS_TTL = 1.0  # seconds the hosts' session counts are reused between placements


class DirectoryCore:
    def __init__(
        self, store: Store, *, default_max_live_sessions: int, hosts: list[str] | None = None, media_workers: int = 1,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.default_max_live_sessions = default_max_live_sessions
        self.hosts = hosts or []
        self.media_workers = media_workers
        self.clock = clock
        self._loads: dict[str, int] = {}
        self._loads_at = -1e9

    async def limit_for(self, team_id: str) -> int:
        team = await self.store.get_team(team_id)
        if team and team["max_live_sessions"] is not None:
            return int(team["max_live_sessions"])
        return self.default_max_live_sessions

    async def open_session(self, room: dict) -> dict:
        """The room's unended session, started (and placed) if there is none.

        A session that is ``ending_soon`` does not count against the team's limit; a join
        that would bring it back to ``live`` is checked like a new session. The store checks
        the limit in the transaction that opens the session, so concurrent first joins of a
        team's rooms cannot pass it together.
        """
        session_id = new_id("sess")
        session, _created = await self.store.open_session(
            room, self.clock(), default_limit=self.default_max_live_sessions, placement=await self.place(session_id),
        )
        return session

    async def place(self, session_id: str) -> dict:
        """Where a new session goes: the host holding the fewest unended sessions, and the media
        worker its id picks."""
        placement: dict = {"id": session_id, "media_worker": worker_index(session_id, self.media_workers)}
        if self.hosts:
            now = time.monotonic()
            if now - self._loads_at > LOADS_TTL:
                self._loads, self._loads_at = await self.store.host_loads(), now
            fewest = min(self._loads.get(h, 0) for h in self.hosts)
            host = random.choice([h for h in self.hosts if self._loads.get(h, 0) == fewest])
            self._loads[host] = self._loads.get(host, 0) + 1
            placement["host"] = host
        return placement

    async def host_of(self, session_id: str) -> str | None:
        """The host a session lives on. One placed nowhere we know (older, or on a host that no
        longer exists) moves to one we do, by a conditional write every gateway agrees on."""
        row = await self.store.get_session(session_id)
        if row is None:
            return None
        if row.get("host") in self.hosts or not self.hosts:
            return row.get("host")
        where = await self.place(session_id)
        moved = await self.store.place_session(
            session_id, host=where["host"], media_worker=row.get("media_worker") if row.get("media_worker") is not None
            else where["media_worker"], only_if_host=row.get("host"),
        )
        return moved["host"] if moved else None

    async def live_session_ids(self) -> list[str]:
        return await self.store.unended_session_ids()
