"""MediaWorkerActor: one per core per node, owning one UDP port. A shell over ``WorkerService``."""

from __future__ import annotations

import os

from mediaserver.media.service import WorkerService


class MediaWorkerActor(WorkerService):
    def __init__(self, cfg: dict, index: int):
        port = cfg["media_port"] + index if cfg["media_port"] else 0
        super().__init__(
            bind_host=cfg["media_bind_host"],
            port=port,
            advertised_host=cfg["media_advertised_host"],
            allowed_networks=cfg["media_allowed_networks"],
            fastpath=cfg.get("media_fastpath", True),
        )

    def pid(self) -> int:
        return os.getpid()
