"""ClusterView: the nodes of the Ray cluster now, what runs on each, and how loaded its media
workers are. Shared by gateways (placing new sessions, creating actors on nodes that join) and
session hosts (moving media off a node that is gone).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from actors import cluster
from mediaserver.control.placement import RECENT_SECONDS, WorkerLoad
from mediaserver.control.topology import NodeSpec, WorkerSpec, describe
from mediaserver.store import Store

log = logging.getLogger(__name__)
REFRESH_SECONDS = 2.0  # how old a view may be before a caller asks Ray (and the store) again
STALE_SECONDS = 30.0  # ... and before a caller waits for that instead of going on with the old one


def _log_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("cluster view: a background refresh failed: %r", task.exception())


class ClusterView:
    def __init__(self, cfg: dict, store: Store):
        self.cfg = cfg
        self.store = store
        self.nodes: list[NodeSpec] = []
        self.states: dict[str, str] = {}  # node -> "draining", from the store
        self.rates: dict[str, float] = {}  # worker -> forwarded packets/s, when someone measured it
        self._at = -1e9
        self._lock = asyncio.Lock()
        self._background: asyncio.Future | None = None

    async def refresh(self, *, force: bool = False) -> None:
        """Bring the view up to date. Unless ``force``d, a view younger than ``STALE_SECONDS``
        is used as it is, and refreshed in the background if older than ``REFRESH_SECONDS``:
        a join must not wait on Ray's node table (tens of ms in a burst, every join behind the
        first). A caller that found a node gone, or needs one that just joined, forces it."""
        if not force and self.usable_now():
            return
        await self._refresh(time.monotonic(), force=force)

    def usable_now(self) -> bool:
        """Whether the view may be used as it is (``refresh`` would not wait); one older than
        ``REFRESH_SECONDS`` is refreshed in the background meanwhile."""
        asked = time.monotonic()
        if not self.nodes or asked - self._at >= STALE_SECONDS:
            return False
        if asked - self._at >= REFRESH_SECONDS and (self._background is None or self._background.done()):
            self._background = asyncio.ensure_future(self._refresh(asked, force=False))
            self._background.add_done_callback(_log_failure)
        return True

    async def _refresh(self, asked: float, *, force: bool) -> None:
        async with self._lock:
            if self._at >= asked or (not force and asked - self._at < REFRESH_SECONDS):
                return  # (one begun while we waited for the lock is as fresh as one of our own)
            began = time.monotonic()
            found = await asyncio.to_thread(cluster.nodes)
            self.nodes = describe(found, self.cfg)
            self.states = await self.store.node_states()
            self._at = began

    # Lookups (on the last refresh) --------------------------------------------------------

    def node(self, ip: str) -> NodeSpec | None:
        return next((n for n in self.nodes if n.ip == ip), None)

    def alive(self, ip: str) -> bool:
        n = self.node(ip)
        return n is not None and n.alive

    def draining(self, ip: str) -> bool:
        return self.states.get(ip) == "draining"

    def worker(self, name: str) -> WorkerSpec | None:
        for n in self.nodes:
            for w in n.workers:
                if w.name == name:
                    return w
        return None

    def hosts_on(self, ip: str) -> list[str]:
        n = self.node(ip)
        return list(n.hosts) if n else []

    def live_hosts(self) -> list[str]:
        return [h for n in self.nodes if n.alive for h in n.hosts]

    async def worker_loads(self) -> list[WorkerLoad]:
        """Every worker of every node, with its capacity, its sessions and what it forwards."""
        sessions = await self.store.worker_sessions()
        recent = await self.store.worker_sessions(since=time.time() - RECENT_SECONDS)
        return [
            WorkerLoad(
                w.name, n.ip, n.region, n.alive and not self.draining(n.ip), self.cfg["media_worker_capacity"],
                rate=self.rates.get(w.name, 0.0), sessions=sessions.get(w.name, 0), recent=recent.get(w.name, 0),
            )
            for n in self.nodes for w in n.workers
        ]

    def summary(self) -> list[dict[str, Any]]:
        return [
            {"node": n.ip, "node_id": n.node_id, "region": n.region, "alive": n.alive,
             "state": "draining" if self.draining(n.ip) else "active", "cpus": n.cpus,
             "media_address": n.workers[0].advertised_host if n.workers else None,
             "workers": [w.name for w in n.workers], "hosts": list(n.hosts)}
            for n in self.nodes
        ]
