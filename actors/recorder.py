"""RecorderActor: one per node that records archives, beside that node's media workers. A
shell over ``RecorderService``; like the media plane, PyAV is imported only in its own process."""

from __future__ import annotations

import os
from typing import Any

from actors import cluster
from mediaserver.control.topology import WorkerSpec


class RecorderActor:
    def __init__(self, cfg: dict, host: str):
        from mediaserver.media.recorder import RecorderService

        self.service = RecorderService(host=host, archive_dir=cfg["archive_dir"])

    async def start_archive(self, archive_id: str, rx: str, tx: str, started_at: float | None = None) -> dict:
        return await self.service.start_archive(archive_id, rx, tx, started_at)

    async def watch(self) -> None:
        await self.service.watch()

    def pid(self) -> int:
        return os.getpid()

    async def add_track(self, archive_id: str, ssrc: int, info: dict) -> None:
        await self.service.add_track(archive_id, ssrc, info)

    async def end_track(self, archive_id: str, ssrc: int) -> None:
        await self.service.end_track(archive_id, ssrc)

    async def status(self, archive_id: str) -> dict:
        return await self.service.status(archive_id)

    async def stop_archive(self, archive_id: str) -> dict:
        return await self.service.stop_archive(archive_id)

    async def write_manifest(self, archive_id: str, manifest: dict) -> list[dict]:
        return await self.service.write_manifest(archive_id, manifest)

    async def compose(self, archive_id: str) -> list[dict]:
        return await self.service.compose(archive_id)


class RemoteRecorder(cluster.ActorClient):
    """The recorder calls, made on the recorder of a media worker's node (started there when
    missing: after its death too, so an archive whose recorder died records on in new files)."""

    def __init__(self, cfg: dict, spec: WorkerSpec):
        self._cfg = cfg
        self.spec = spec

    def _make(self) -> Any:
        host = self.spec.advertised_host if self.spec.bind_host in ("0.0.0.0", "::") else self.spec.bind_host
        return cluster.get_or_create(RecorderActor, f"recorder:{self.spec.node}", self._cfg, host,
                                     restart=False, node_id=self.spec.node_id, pinned=True)

    async def compose(self, archive_id: str) -> list[dict]:
        """The composed file is built by a Ray task, on whichever node has a core free (the
        archive directory is storage every node shares), off the recorder and the live path."""
        from mediaserver.media.compose import compose_files

        return await cluster.run_task(compose_files, os.path.join(self._cfg["archive_dir"], archive_id))
