"""ControlPlane: what the gateway asks of the actors, in plain async methods."""

from __future__ import annotations

import asyncio
from typing import Any

from actors import cluster, names
from actors.directory import DirectoryActor
from mediaserver.config import Settings
from mediaserver.errors import MediaserverError


def actor_config(settings: Settings) -> dict:
    """The settings actors need, as plain data (actors may run on other nodes)."""
    return {
        "db_url": settings.db_url,
        "grace_seconds": settings.grace_seconds,
        "stale_seconds": settings.stale_seconds,
        "default_max_live_sessions": settings.default_max_live_sessions,
        "media_workers": settings.media_workers,
        "media_port": settings.media_port,
        "media_bind_host": settings.media_bind_host,
        "media_advertised_host": settings.media_advertised_host
        or ("127.0.0.1" if settings.media_bind_host in ("0.0.0.0", "::") else settings.media_bind_host),
        "media_allowed_networks": list(settings.media_allowed_networks),
        "media_fastpath": settings.media_fastpath,
        "quality_seconds": settings.quality_seconds,
    }


class ControlPlane:
    def __init__(self, settings: Settings):
        self.cfg = actor_config(settings)
        self._directory: Any = None
        self._sessions: dict[str, Any] = {}

    def start(self) -> None:
        self._directory = cluster.get_or_create(DirectoryActor, names.DIRECTORY, self.cfg)

    async def _session(self, session_id: str) -> Any:
        handle = self._sessions.get(session_id)
        if handle is None:
            handle = await cluster.call_retrying(self._directory, "session_actor", session_id)
            self._sessions[session_id] = handle
        return handle

    async def open_session(self, room: dict) -> dict:
        session, handle = await cluster.call_retrying(self._directory, "open_session", room)
        self._sessions[session["id"]] = handle
        return session

    async def call(self, session_id: str, method: str, *args: Any, deadline: float = 30.0) -> Any:
        """Call the session's actor, waiting out a restart.

        Every SessionActor method is safe to repeat: a repeated join replaces its own
        orphan (same identity), leave/resume/set_role/disconnect are idempotent, and a
        repeated end answers ``session_ended``.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        delay = 0.05
        while True:
            handle = await self._session(session_id)
            try:
                return await cluster.call(handle, method, *args)
            except MediaserverError as e:
                if e.code != "unavailable" or loop.time() + delay > end:
                    raise
            self.forget(session_id)  # ask the Directory again: the actor may be new
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def media_stats(self) -> dict[str, dict]:
        """Counters of every running media worker, by index."""
        out = {}
        for i in range(self.cfg["media_workers"]):
            handle = cluster.find(names.media_worker(i))
            if handle is None:
                continue
            try:
                out[str(i)] = await cluster.call(handle, "stats")
            except MediaserverError:
                continue  # restarting: it shows again on the next scrape
        return out

    async def tick(self) -> None:
        if self._directory is not None:
            await cluster.call(self._directory, "tick")

    def forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)


__all__ = ["ControlPlane", "MediaserverError", "actor_config"]
