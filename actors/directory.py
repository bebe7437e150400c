"""Directory: finds or starts the SessionActor of a room and drives lifecycle timers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from actors import cluster, names
from actors.session import SessionActor
from mediaserver.control.directory import DirectoryCore
from mediaserver.store import Store

# An ended session's actor lingers this long so waiting long-polls see the end.
ENDED_LINGER_SECONDS = 10.0


class DirectoryActor:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.core = DirectoryCore(Store(cfg["db_url"]), default_max_live_sessions=cfg["default_max_live_sessions"])
        self._known: dict[str, float | None] = {}  # session id -> when we saw it ended
        self._tick_lock = asyncio.Lock()

    def _actor(self, session_id: str) -> Any:
        self._known.setdefault(session_id, None)
        return cluster.get_or_create(SessionActor, names.session(session_id), session_id, self.cfg)

    async def open_session(self, room: dict) -> tuple[dict, Any]:
        session = await self.core.open_session(room)
        return session, self._actor(session["id"])

    async def session_actor(self, session_id: str) -> Any:
        return self._actor(session_id)

    async def limit_for(self, team_id: str) -> int:
        return await self.core.limit_for(team_id)

    async def tick(self) -> int:
        """Tick every unended session (their grace timers) and retire ended sessions' actors."""
        if self._tick_lock.locked():
            return -1  # a slow tick is still running; several gateways may call this
        async with self._tick_lock:
            live = await self.core.live_session_ids()
            await asyncio.gather(
                *(cluster.call(self._actor(sid), "tick") for sid in live), return_exceptions=True
            )
            now = time.monotonic()
            for sid in list(self._known):
                if sid in live:
                    continue
                seen = self._known[sid]
                if seen is None:
                    self._known[sid] = now
                elif now - seen > ENDED_LINGER_SECONDS:
                    cluster.kill(names.session(sid), restart=False)
                    del self._known[sid]
            return len(live)
