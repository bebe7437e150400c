"""MediaWorkerActor: one per core per node, owning one UDP port. A shell over ``WorkerService``.

The media plane (aiortc, OpenSSL, the fast path) is imported only in the worker's own process:
gateways and session hosts create and call workers through this class without loading it.
"""

from __future__ import annotations

import os
from typing import Any

from actors import cluster
from mediaserver import heap
from mediaserver.control.batch import run_batch
from mediaserver.control.topology import WorkerSpec
from mediaserver.errors import MediaserverError


BATCHED = frozenset({
    "start", "relay", "create_transport", "close_transport", "close_participants", "publish", "subscribe_offer",
    "subscribe_answer", "route", "unroute", "set_layer", "reports", "stats",
})  # (watch never returns: alone)


class MediaWorkerActor:
    def __init__(self, cfg: dict, spec: WorkerSpec):
        from mediaserver.media.service import WorkerService

        self.service = WorkerService(
            bind_host=spec.bind_host,
            port=spec.port,
            advertised_host=spec.advertised_host,
            allowed_networks=cfg["media_allowed_networks"],
            fastpath=cfg.get("media_fastpath", True),
            tap_dir=cfg.get("media_tap_dir"),
            gso=cfg.get("media_gso", True),
            send_threads=cfg.get("media_send_threads", 1),
        )
        heap.settle()

    # One method per WorkerService call (Ray needs them on the class). Each makes sure the port is
    # bound first: a restarted worker is called by whoever reaches it first.
    async def start(self) -> dict:
        return await self.service.start()

    async def watch(self) -> None:
        await self.service.start()
        await self.service.watch()

    async def relay(self, peer_host: str, peer_port: int, rx: str, tx: str) -> dict:
        await self.service.start()
        return await self.service.relay(peer_host, peer_port, rx, tx)

    async def create_transport(self, participant_id: str, role: str) -> dict:
        await self.service.start()
        return await self.service.create_transport(participant_id, role)

    async def close_transport(self, transport_id: str) -> None:
        await self.service.start()
        await self.service.close_transport(transport_id)

    async def close_participants(self, participant_ids: list[str]) -> int:
        await self.service.start()
        return await self.service.close_participants(participant_ids)

    async def publish(self, transport_id: str, offer: str) -> dict:
        await self.service.start()
        return await self.service.publish(transport_id, offer)

    async def subscribe_offer(self, transport_id: str, slots: list[dict]) -> str:
        await self.service.start()
        return await self.service.subscribe_offer(transport_id, slots)

    async def subscribe_answer(self, transport_id: str, answer: str) -> None:
        await self.service.start()
        await self.service.subscribe_answer(transport_id, answer)

    async def route(self, *args: Any) -> None:
        await self.service.start()
        await self.service.route(*args)

    async def unroute(self, src: str, src_ssrc: int, dst: str) -> None:
        await self.service.start()
        await self.service.unroute(src, src_ssrc, dst)

    async def set_layer(self, src: str, src_ssrc: int, dst: str, layer: int | None, temporal: int | None = None) -> None:
        await self.service.start()
        await self.service.set_layer(src, src_ssrc, dst, layer, temporal)

    async def reports(self, transport_ids: list[str], quality: bool = False) -> dict:
        await self.service.start()
        return await self.service.reports(transport_ids, quality)

    async def stats(self) -> dict:
        await self.service.start()
        return await self.service.stats()

    def pid(self) -> int:
        return os.getpid()

    async def calls(self, batch: list[tuple]) -> list[tuple]:
        """Several calls at once, each answered with its own outcome (``RemoteWorker`` sends the
        ones made in one turn of its caller's event loop together)."""
        return await run_batch(self._run, batch)

    async def _run(self, method: str, args: tuple) -> Any:
        if method not in BATCHED:
            raise MediaserverError("invalid_request", f"no media worker call {method!r}")
        return await getattr(self, method)(*args)


def media_worker(cfg: dict, spec: WorkerSpec) -> Any:
    """The handle of the media worker ``spec`` names, created on its node if missing. Workers
    are not restarted by Ray and die with their node: their owners see a death within
    milliseconds and call this again, which starts a new one under the same name (about 0.8 s
    here), instead of waiting out Ray's restart."""
    return cluster.get_or_create(MediaWorkerActor, spec.name, cfg, spec, restart=False, node_id=spec.node_id, pinned=True)


class RemoteWorker(cluster.ActorClient):
    """The ``mediaserver.control.media.Worker`` calls, made on the media worker ``spec`` names.
    After the worker died, the next call starts its successor (on the same node)."""

    _batched = True

    def __init__(self, cfg: dict, spec: WorkerSpec):
        self._cfg = cfg
        self.spec = spec

    def _make(self) -> Any:
        return media_worker(self._cfg, self.spec)
