"""SessionHostActor: a few per node, each owning many sessions. A shell over ``SessionHost``."""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any, Awaitable

from actors import cluster
from actors.media import RemoteWorker
from actors.recorder import RemoteRecorder
from actors.view import ClusterView
from mediaserver import heap
from mediaserver.control.batch import run_batch, run_polls, start_batch
from mediaserver.control.channel import ChannelServer, channel_key
from mediaserver.control.host import SessionHost
from mediaserver.control.placement import Placement
from mediaserver.control.topology import node_of
from mediaserver.errors import MediaserverError
from mediaserver.media.legs import leg_keys
from mediaserver.store import Store


class ClusterPlaces:
    """``MediaPlaces`` on the Ray cluster: workers by name, checked against the nodes Ray knows."""

    def __init__(self, cfg: dict, store: Store):
        self.cfg = cfg
        self.store = store
        self.view = ClusterView(cfg, store)
        self.placement = Placement(region_networks=cfg.get("region_networks"), session_load_estimate=cfg["session_load_estimate"])
        self._clients: dict[str, RemoteWorker] = {}
        self._recorders: dict[str, RemoteRecorder] = {}  # node -> its recorder

    def worker(self, name: str) -> RemoteWorker:
        if name not in self._clients:
            spec = self.view.worker(name)
            if spec is None:
                raise MediaserverError("unavailable", f"no media worker {name} in the cluster")
            self._clients[name] = RemoteWorker(self.cfg, spec)
        return self._clients[name]

    def recorder(self, worker: str) -> RemoteRecorder:
        """The recorder on the node of the media worker named ``worker``."""
        spec = self.view.worker(worker)
        if spec is None:
            raise MediaserverError("unavailable", f"no media worker {worker} in the cluster")
        if spec.node not in self._recorders:
            self._recorders[spec.node] = RemoteRecorder(self.cfg, spec)
        return self._recorders[spec.node]

    async def usable(self, name: str) -> bool:
        await self.view.refresh()
        spec = self.view.worker(name)
        if spec is None or not self.view.alive(spec.node):
            await self.view.refresh(force=True)  # a node that just joined, or one that just died
            spec = self.view.worker(name)
        return spec is not None and self.view.alive(spec.node)

    async def place(self, session_id: str, current: str | None, avoid: str | None, *, write: bool = True) -> str:
        await self.view.refresh(force=True)
        loads = await self.view.worker_loads()
        here = self.view.node(node_of(current)) if current else None
        choice = self.placement.choose(
            loads, region=here.region if here else None, exclude_nodes={node_of(avoid)} if avoid else set(),
        )
        if not write:
            return choice.name  # (its first join writes the session, with this worker)
        row = await self.store.move_media(session_id, to=choice.name, only_if=current)
        if row is None:
            raise MediaserverError("session_not_found", f"no session {session_id}")
        return row["media_worker"] or choice.name  # (someone else may have moved it first: theirs stands)


    async def extra(self, session_id: str, using: list[str]) -> str:
        """Another worker for a session's receivers: its home's region first, the most headroom."""
        await self.view.refresh()
        here = self.view.node(node_of(using[0])) if using else None
        loads = [w for w in await self.view.worker_loads() if w.name not in using]
        return self.placement.choose(loads, region=here.region if here else None).name

    def leg_keys(self, a: str, b: str) -> tuple[str, str]:
        return leg_keys(self.cfg["relay_secret"], a, b)


def _batch(actor: "SessionHostActor", kind: str, batch: list[tuple]) -> Awaitable[list[tuple]]:
    """A batch from a gateway's channel (``ChannelServer``'s handler)."""
    if kind == "calls":
        if actor.host.started and actor.places.view.usable_now():
            return start_batch(actor._run, batch)  # (the calls start now: see ChannelServer)
        return actor.calls(batch)
    if kind == "polls":
        return actor.polls(batch)
    raise MediaserverError("invalid_request", f"no batch kind {kind!r}")


class SessionHostActor:
    def __init__(self, name: str, cfg: dict):
        store = Store(cfg["db_url"])
        self.places = ClusterPlaces(cfg, store)
        self.host = SessionHost(name, store, cfg, self.places)
        host = self.host

        # Ray wraps every method of an actor's class for tracing, and the wrapper asks whether
        # tracing is on at each call: about 5% of a host's CPU in a burst of joins, as every
        # call of a batch went through ``self._run``. These two are plain functions.
        async def run(session_id: str, method: str, args: tuple, new: dict | None) -> Any:
            return await host.call(session_id, method, *args, new=new)

        self._run = run
        self.channel_server = ChannelServer(functools.partial(_batch, self), channel_key(cfg["relay_secret"]))
        self._address: tuple[str, int] | None = None
        self._opening: asyncio.Lock | None = None
        heap.settle()

    async def channel(self) -> tuple[str, int]:
        """Where gateways send this host's batches of calls and polls (a connection of their
        own, ``mediaserver.control.channel``: a Ray call costs ten times as much)."""
        await self._start()
        self._opening = self._opening or asyncio.Lock()
        async with self._opening:
            if self._address is None:
                self._address = await self.channel_server.start(cluster.node_ip())
        return self._address

    async def call(self, session_id: str, method: str, args: tuple, new: dict | None = None) -> Any:
        await self._start()
        return await self._run(session_id, method, args, new)

    async def calls(self, batch: list[tuple]) -> list[tuple]:
        """Several calls at once (``mediaserver.control.batch``): one outcome each."""
        await self._start()
        return await run_batch(self._run, batch)

    async def polls(self, batch: list[tuple]) -> list[tuple]:
        """Several long polls at once, answered once one of them is (``run_polls``)."""
        await self._start()
        return await run_polls(self._run, batch)

    async def move_media(self, session_id: str, avoid: str | None) -> str:
        """Move a session's media off the worker ``avoid`` (its node is draining)."""
        await self._start()
        return await self.host.move_media(session_id, "the media server is being drained", avoid)

    async def ready(self) -> dict:
        await self._start()
        return self.host.summary()

    async def _start(self) -> None:
        await self.places.view.refresh()
        await self.host.start()

    def pid(self) -> int:
        return os.getpid()
