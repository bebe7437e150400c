"""SessionHostActor: a few per node, each owning many sessions. A shell over ``SessionHost``."""

from __future__ import annotations

import os
from typing import Any

from actors.media import RemoteWorker
from mediaserver.control.host import SessionHost
from mediaserver.store import Store


class SessionHostActor:
    def __init__(self, name: str, cfg: dict):
        self._cfg = cfg
        self._workers: dict[int, RemoteWorker] = {}
        self.host = SessionHost(name, Store(cfg["db_url"]), cfg, self._worker)

    def _worker(self, index: int) -> RemoteWorker:
        if index not in self._workers:
            self._workers[index] = RemoteWorker(self._cfg, index)
        return self._workers[index]

    async def call(self, session_id: str, method: str, args: tuple) -> Any:
        await self.host.start()
        return await self.host.call(session_id, method, *args)

    async def ready(self) -> dict:
        await self.host.start()
        return self.host.summary()

    def pid(self) -> int:
        return os.getpid()
