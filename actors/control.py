"""ControlPlane: what the gateway asks of the control plane, in plain async methods.

Sessions live on session hosts (``SessionHostActor``, a few per node, each owning many
sessions); the Directory (the store's placement columns, ``DirectoryCore``) says which, and
which media worker (``MediaWorkerActor``, a few per node) carries their media. Every gateway
keeps the cluster in shape: each node Ray knows gets its hosts and media workers when it joins.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from actors import cluster
from actors.host import SessionHostActor
from actors.media import media_worker
from actors.view import ClusterView
from mediaserver.config import Settings
from mediaserver.control.batch import MAX_BATCH, MAX_POLLS, Batcher
from mediaserver.control.directory import DirectoryCore
from mediaserver.control.channel import ChannelClient, channel_key
from mediaserver.control.host import brand_new
from mediaserver.control.placement import Placement
from mediaserver.control.topology import node_of
from mediaserver.errors import MediaserverError
from mediaserver.store import Store

log = logging.getLogger(__name__)
LONG_POLLS = {"wait_events"}  # batched apart: a batch of calls is answered when its slowest is
MAINTAIN_SECONDS = 2.0  # how often a gateway looks for new nodes and measures the media workers' load


def actor_config(settings: Settings, relay_secret: str | None = None) -> dict:
    """The settings actors need, as plain data (actors may run on other nodes)."""
    return {
        "relay_secret": relay_secret,  # the deployment's: media legs between workers derive their keys from it
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
        "media_tap_dir": str(settings.media_tap_dir) if settings.media_tap_dir else None,
        "media_gso": settings.media_gso,
        "media_send_threads": settings.media_send_threads,
        "media_worker_capacity": settings.media_worker_capacity,
        "session_load_estimate": settings.session_load_estimate,
        "session_receivers_per_worker": settings.session_receivers_per_worker,
        "relayed_max_participants": settings.relayed_max_participants,
        "auto_back_to_direct": settings.auto_back_to_direct,
        "region": settings.region,
        "region_networks": dict(settings.region_networks),
        "quality_seconds": settings.quality_seconds,
        "archive_dir": str(settings.archive_path),
        "archive_max_seconds": settings.archive_max_seconds,
    }


class ControlPlane:
    def __init__(self, settings: Settings, store: Store, relay_secret: str | None = None):
        self.cfg = actor_config(settings, relay_secret)
        self.store = store
        self.view = ClusterView(self.cfg, store)
        self.placement = Placement(region_networks=self.cfg["region_networks"], session_load_estimate=self.cfg["session_load_estimate"])
        self.directory = DirectoryCore(
            store, default_max_live_sessions=self.cfg["default_max_live_sessions"], hosts=self.view.live_hosts,
            workers=self.view.worker_loads, placement=self.placement,
        )
        self._handles: dict[str, Any] = {}  # host name -> actor handle
        self._host_of: dict[str, str] = {}  # session -> host name
        self._batchers: dict[tuple[str, str], Batcher] = {}  # (host, "calls" or "polls") -> its batcher
        self._channels: dict[str, ChannelClient] = {}  # host -> the connection its batches go over
        self._asking: dict[str, asyncio.Future] = {}  # host -> its channel's address, being asked for
        self._channel_key = channel_key(self.cfg["relay_secret"] or "")
        self._counted: dict[str, tuple[float, float]] = {}  # worker -> (rtp_out, when) at the last look
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Bring every node's hosts and media workers up, and keep doing so for nodes that join."""
        await self.view.refresh(force=True)
        self._ensure_actors()
        self._task = asyncio.ensure_future(self._maintain_forever())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # (nothing of it runs on after Ray stops)
        for client in self._channels.values():
            client.close()

    def _ensure_actors(self) -> None:
        for node in self.view.nodes:
            if not node.alive:
                continue
            for name in node.hosts:
                if name not in self._handles:
                    # Pinned: a host that crashes comes back on its node; one whose node is gone
                    # hands its sessions to the hosts of the others (see _rehome_orphans).
                    self._handles[name] = cluster.get_or_create(SessionHostActor, name, name, self.cfg, node_id=node.node_id, pinned=True)
            for spec in node.workers:
                media_worker(self.cfg, spec)

    async def ready(self) -> list[dict]:
        """Wait until every host has taken on its sessions and every media worker listens."""
        alive = [n for n in self.view.nodes if n.alive]
        await asyncio.gather(*(cluster.call_retrying(media_worker(self.cfg, w), "start") for n in alive for w in n.workers))
        return list(await asyncio.gather(*(cluster.call_retrying(self._handles[h], "ready") for n in alive for h in n.hosts)))

    async def _maintain_forever(self) -> None:
        while True:
            await asyncio.sleep(MAINTAIN_SECONDS)
            try:
                await self.view.refresh(force=True)
                self._ensure_actors()
                await self._rehome_orphans()
                await self.media_stats()  # measures each worker's rate on the way
            except Exception:
                log.exception("looking after the cluster failed; trying again")

    async def _rehome_orphans(self) -> None:
        """Sessions owned by the hosts of a node that is gone move to hosts that are not (the
        new host rebuilds them from the store; their media moves too if it was there)."""
        for node in self.view.nodes:
            if node.alive:
                continue
            for name in node.hosts:
                for row in await self.store.host_sessions(name):
                    self._host_of.pop(row["id"], None)
                    await self.directory.host_of(row["id"])
                # Pinned to a node that is gone, it would wait for it forever under its name: let
                # it go, so the node's hosts start afresh if it comes back.
                if name in self._handles:
                    del self._handles[name]
                    if name in self._channels:
                        self._channels.pop(name).close()
                    cluster.kill(name, restart=False)

    # Sessions --------------------------------------------------------------------------

    async def open_session(
        self, room: dict, client_address: str | None = None, *, existing: dict | None, slot: dict | None = None,
    ) -> tuple[dict, dict | None]:
        """The session a join of ``room`` goes to, and what its host starts from (``SessionHost.call``'s
        ``new``), given the room's unended session as the caller has just read it (``existing``).

        Nothing is written here. An existing session (live, or ending soon: the host's join brings
        it back to live and checks the team's limit in that write, ``SessionCore._update_emptiness``)
        is joined as it is. Without one, a new session is placed (``DirectoryCore.plan``) and handed
        over unwritten with the room and ``slot``: the first join's call writes it on its host, or
        answers ``session_opened_elsewhere`` if another join opened the room's session first."""
        await self.view.refresh()
        if existing is None:
            region = self.directory.region_for(room, client_address)
            session = await self.directory.plan(room, region)
            if not session.get("host"):
                raise MediaserverError("unavailable", "no session host is running yet; try again in a moment")
            new = brand_new(session, room, slot, unwritten=True)
            new["region"] = region  # (placed again there should its host's node go before the join gets to it)
        else:
            session, new = existing, None
        if session.get("host") in self.view.live_hosts():
            self._host_of[session["id"]] = session["host"]
        return session, new

    async def _host(self, session_id: str) -> str:
        name = self._host_of.get(session_id)
        if name is None:
            name = await self.directory.host_of(session_id)
            if name is None:
                raise MediaserverError("session_not_found", f"no session {session_id}")
            self._host_of[session_id] = name
        return name

    def _batcher(self, name: str, kind: str) -> Batcher:
        """Calls (``calls``) or long polls (``polls``) to host ``name``, a turn's at a time."""
        if (name, kind) not in self._batchers:
            self._batchers[name, kind] = Batcher(
                lambda batch: self._send(name, kind, batch), max_batch=MAX_POLLS if kind == "polls" else MAX_BATCH,
                submit=lambda batch, done: self._submit(name, kind, batch, done),
            )
        return self._batchers[name, kind]

    def _submit(self, name: str, kind: str, batch: list, done: Any) -> bool:
        """Send at once over the host's channel if it is open (else ``_send`` opens it)."""
        client = self._channels.get(name)
        if client is None or not client.connected:
            return False
        client.submit(kind, batch, done)
        return True

    async def _send(self, name: str, kind: str, batch: list) -> list:
        """A batch to host ``name`` over its channel (``mediaserver.control.channel``), whose
        address the host gives through Ray: again after a restart, since the old one is closed."""
        client = self._channels.get(name)
        if client is None or client.closed:
            # One Ray call for the address however many batches are waiting on it (after a host
            # restart, every session's poll and call at once).
            asking = self._asking.get(name)
            if asking is None:
                asking = self._asking[name] = asyncio.ensure_future(cluster.call(self._host_handle(name), "channel"))
                asking.add_done_callback(lambda f, name=name: (self._asking.pop(name, None), f.cancelled() or f.exception()))
            address = await asyncio.shield(asking)
            client = self._channels.get(name)
            if client is None or client.closed:
                client = self._channels[name] = ChannelClient(tuple(address), self._channel_key)
        return await client.request(kind, batch)

    def _host_handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            node = self.view.node(node_of(name))
            if node is None or not node.alive:
                raise MediaserverError("unavailable", f"the node of {name} is gone")
            handle = self._handles[name] = cluster.get_or_create(
                SessionHostActor, name, name, self.cfg, node_id=node.node_id, pinned=True,
            )
        return handle

    async def call(
        self, session_id: str, method: str, *args: Any, deadline: float = 30.0, new: dict | None = None,
    ) -> Any:
        """Call a session's operation on its host, waiting out a host restart.

        Every session operation is safe to repeat: a repeated join replaces its own orphan
        (same identity), leave/resume/set_role/disconnect are idempotent, and a repeated end
        answers ``session_ended``. ``new`` (see ``open_session``) goes with every attempt: the
        session is unwritten until its first join commits, and a host that loads it from ``new``
        once it was (the attempt before reached a host that then died) is refused by the store
        (``session_opened_elsewhere``), so the join goes to the session as the store has it.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline
        attempt = 0
        # A session not written yet is nowhere in the store to be looked up: its host is the one
        # it was placed on (a host restarts on its node; should the node go, the join fails).
        planned = new["session"].get("host") if new and new.get("unwritten") else None
        while True:
            try:
                host = planned or await self._host(session_id)
                kind = "polls" if method in LONG_POLLS else "calls"
                return await self._batcher(host, kind).call(session_id, method, args, new)
            except MediaserverError as e:
                delay = cluster.retry_delay(attempt)
                if e.code != "unavailable" or loop.time() + delay > end:
                    raise
            self._host_of.pop(session_id, None)  # ask the Directory again: the session may have moved,
            await self.view.refresh(force=attempt > 0)  # or its host's node may be gone (it moves then)
            if planned and planned not in self.view.live_hosts():
                planned = await self._place_again(session_id, new)
            await asyncio.sleep(delay)
            attempt += 1

    async def _place_again(self, session_id: str, new: dict) -> str:
        """A new session whose planned host's node went before its first join got there: placed
        again under the same id, so the join goes on elsewhere instead of waiting for a host that
        will not come back. Had that host written it before it went, the new host's write is
        refused (``session_opened_elsewhere``) and the join goes to the session as it was written."""
        self.directory.forget_loads()
        placement = await self.directory.place(session_id, new.get("region"))
        if not placement.get("host"):
            raise MediaserverError("unavailable", "no session host is running now; try again in a moment")
        new["session"].update(placement)
        log.info("session %s placed again on %s: its planned host's node is gone", session_id, placement["host"])
        return placement["host"]

    def batch_figures(self) -> dict[str, dict[str, int]]:
        """Calls this gateway sent to session hosts and the messages they went in, by kind."""
        out = {kind: {"calls": 0, "messages": 0} for kind in ("calls", "polls")}
        for (_, kind), b in self._batchers.items():
            out[kind]["calls"] += b.calls
            out[kind]["messages"] += b.batches
        return out

    def forget(self, session_id: str) -> None:
        self._host_of.pop(session_id, None)

    # Nodes -------------------------------------------------------------------------------

    async def drain(self, node: str, *, move: bool = True) -> list[dict]:
        """No new sessions on ``node``; unless ``move`` is false, its live sessions move off it,
        one at a time (their participants start media over on a worker elsewhere)."""
        await self.view.refresh(force=True)
        if self.view.node(node) is None:
            raise MediaserverError("not_found", f"no node {node} in the cluster")
        await self.store.set_node_state(node, "draining")
        await self.view.refresh(force=True)
        moved = []
        if move:
            workers = [w.name for w in self.view.node(node).workers]
            for s in await self.store.sessions_on_workers(workers):
                to = await self.call_host(s["id"], "move_media", s["id"], s["media_worker"])
                moved.append({"session_id": s["id"], "from": s["media_worker"], "to": to})
        return moved

    async def undrain(self, node: str) -> None:
        await self.store.set_node_state(node, "active")
        await self.view.refresh(force=True)

    async def call_host(self, session_id: str, method: str, *args: Any) -> Any:
        """A host-level operation on the host of ``session_id``."""
        return await cluster.call_retrying(self._host_handle(await self._host(session_id)), method, *args)

    # Figures -----------------------------------------------------------------------------

    async def media_stats(self) -> dict[str, dict]:
        """Counters of every running media worker, by name, with what it forwards per second."""
        out = {}
        now = time.monotonic()
        for n in self.view.nodes:
            for w in n.workers:
                handle = cluster.find(w.name) if n.alive else None
                if handle is None:
                    continue
                try:
                    stats = await cluster.call(handle, "stats")
                except MediaserverError:
                    continue  # restarting: it shows again on the next look
                sent = float(stats.get("rtp_out", 0))
                before = self._counted.get(w.name)
                if before is not None and now > before[1] and sent >= before[0]:
                    self.view.rates[w.name] = (sent - before[0]) / (now - before[1])
                self._counted[w.name] = (sent, now)
                out[w.name] = {**stats, "node": n.ip, "region": n.region, "rate": round(self.view.rates.get(w.name, 0.0), 1)}
        return out

    async def host_stats(self) -> list[dict]:
        """What each running session host holds (restarting ones show again on the next look)."""
        async def one(name: str) -> dict | None:
            try:
                return await cluster.call(self._host_handle(name), "ready")
            except MediaserverError:
                return None

        found = await asyncio.gather(*(one(h) for h in self.view.live_hosts()))
        return [f for f in found if f is not None]

    async def node_summary(self) -> list[dict]:
        await self.view.refresh()
        counts = await self.store.worker_sessions()
        return [
            {**n, "sessions": sum(counts.get(w, 0) for w in n["workers"]),
             "rate": round(sum(self.view.rates.get(w, 0.0) for w in n["workers"]), 1)}
            for n in self.view.summary()
        ]


__all__ = ["ControlPlane", "MediaserverError", "actor_config"]
