"""ControlPlane: what the gateway asks of the control plane, in plain async methods.

Sessions live on session hosts (``SessionHostActor``, a few per node, each owning many
sessions); the Directory (the store's placement columns, ``DirectoryCore``) says which.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from actors import cluster, names
from actors.host import SessionHostActor
from actors.media import media_worker
from mediaserver.config import Settings
from mediaserver.control.directory import DirectoryCore
from mediaserver.errors import MediaserverError
from mediaserver.store import Store

log = logging.getLogger(__name__)
RETRY_DELAYS = (0.02, 0.05, 0.1, 0.2, 0.3)  # then every 0.3 s: a restarting host is back in about a second


def actor_config(settings: Settings) -> dict:
    """The settings actors need, as plain data (actors may run on other nodes)."""
    return {
        "db_url": settings.db_url,
        "grace_seconds": settings.grace_seconds,
        "stale_seconds": settings.stale_seconds,
        "tick_seconds": settings.tick_seconds,
        "default_max_live_sessions": settings.default_max_live_sessions,
        "session_hosts": settings.session_hosts,
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
    def __init__(self, settings: Settings, store: Store):
        self.cfg = actor_config(settings)
        self.hosts = [names.host(i) for i in range(self.cfg["session_hosts"])]
        self.directory = DirectoryCore(
            store, default_max_live_sessions=self.cfg["default_max_live_sessions"], hosts=self.hosts,
            media_workers=self.cfg["media_workers"],
        )
        self._handles: dict[str, Any] = {}  # host name -> actor handle
        self._host_of: dict[str, str] = {}  # session -> host name

    def start(self) -> None:
        """Create (or find) the hosts and media workers, so the first join finds them running."""
        for name in self.hosts:
            self._handles[name] = cluster.get_or_create(SessionHostActor, name, name, self.cfg)
        for i in range(self.cfg["media_workers"]):
            media_worker(self.cfg, i)

    async def ready(self) -> list[dict]:
        """Wait until every host has taken on its sessions and every media worker listens."""
        workers = [cluster.find(names.media_worker(i)) for i in range(self.cfg["media_workers"])]
        await asyncio.gather(*(cluster.call_retrying(w, "start") for w in workers if w is not None))
        return list(await asyncio.gather(*(cluster.call_retrying(h, "ready") for h in self._handles.values())))

    async def open_session(self, room: dict) -> dict:
        session = await self.directory.open_session(room)
        if session.get("host"):
            self._host_of[session["id"]] = session["host"]
        return session

    async def _host(self, session_id: str) -> Any:
        name = self._host_of.get(session_id)
        if name is None:
            name = await self.directory.host_of(session_id)
            if name is None:
                raise MediaserverError("session_not_found", f"no session {session_id}")
            self._host_of[session_id] = name
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = cluster.get_or_create(SessionHostActor, name, name, self.cfg)
        return handle

    async def call(self, session_id: str, method: str, *args: Any, deadline: float = 30.0) -> Any:
        """Call a session's operation on its host, waiting out a host restart.

        Every session operation is safe to repeat: a repeated join replaces its own orphan
        (same identity), leave/resume/set_role/disconnect are idempotent, and a repeated end
        answers ``session_ended``.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        attempt = 0
        while True:
            host = await self._host(session_id)
            try:
                return await cluster.call(host, "call", session_id, method, args)
            except MediaserverError as e:
                delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
                if e.code != "unavailable" or loop.time() + delay > end:
                    raise
            self._host_of.pop(session_id, None)  # ask the Directory again: the session may have moved
            await asyncio.sleep(delay)
            attempt += 1

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

    async def host_stats(self) -> list[dict]:
        """What each running session host holds (restarting ones show again on the next look)."""
        async def one(handle: Any) -> dict | None:
            try:
                return await cluster.call(handle, "ready")
            except MediaserverError:
                return None

        found = await asyncio.gather(*(one(h) for h in self._handles.values()))
        return [f for f in found if f is not None]

    def forget(self, session_id: str) -> None:
        self._host_of.pop(session_id, None)


__all__ = ["ControlPlane", "MediaserverError", "actor_config"]
