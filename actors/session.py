"""SessionActor: one per live session, a shell over ``SessionCore``."""

from __future__ import annotations

import os

from mediaserver.control.session import SessionCore
from mediaserver.store import Store


class SessionActor:
    def __init__(self, session_id: str, cfg: dict):
        self.core = SessionCore(
            Store(cfg["db_url"]), session_id, grace=cfg["grace_seconds"], stale=cfg["stale_seconds"]
        )

    async def ready(self) -> dict:
        await self.core.ensure_loaded()
        return self.core.snapshot()

    async def join(self, identity: str, name: str, role: str) -> dict:
        await self.core.ensure_loaded()
        participant = await self.core.join(identity=identity, name=name, role=role)
        return {"participant": participant, **self.core.snapshot()}

    async def resume(self, participant_id: str) -> dict:
        await self.core.ensure_loaded()
        participant = await self.core.resume(participant_id)
        return {"participant": participant, **self.core.snapshot()}

    async def disconnect(self, participant_id: str, connection_id: str | None = None) -> None:
        await self.core.ensure_loaded()
        await self.core.disconnect(participant_id, connection_id)

    async def leave(self, participant_id: str, reason: str = "left") -> None:
        await self.core.ensure_loaded()
        await self.core.leave(participant_id, reason)

    async def set_role(self, by: str | None, participant_id: str, role: str) -> dict:
        await self.core.ensure_loaded()
        return await self.core.set_role(by, participant_id, role)

    async def end(self, reason: str, by: str | None = None) -> dict:
        await self.core.ensure_loaded()
        return await self.core.end(reason=reason, by=by)

    async def tick(self) -> str:
        await self.core.ensure_loaded()
        await self.core.tick()
        return self.core.session["status"]

    async def wait_events(
        self, participant_id: str, after_seq: int, timeout: float, connection_id: str | None = None
    ) -> dict:
        await self.core.ensure_loaded()
        return await self.core.wait_events(participant_id, after_seq, timeout, connection_id)

    def pid(self) -> int:
        return os.getpid()
