"""SessionActor: one per live session, a shell over ``SessionCore``.

It also owns the session's BreakoutRoomActors: it creates them and retires
them when the session ends.
"""

from __future__ import annotations

import os
from typing import Any

from actors import cluster, names
from actors.breakout import BreakoutRoomActor
from mediaserver.control.breakout import BreakoutRoom
from mediaserver.control.session import SessionCore
from mediaserver.ids import new_id
from mediaserver.store import Store


class SessionActor:
    def __init__(self, session_id: str, cfg: dict):
        self.session_id = session_id
        self.core = SessionCore(
            Store(cfg["db_url"]), session_id, grace=cfg["grace_seconds"], stale=cfg["stale_seconds"]
        )
        self.breakouts: dict[str, Any] = {}  # breakout id -> its actor

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
        session = await self.core.end(reason=reason, by=by)
        self._retire_breakouts()
        return session

    async def tick(self) -> str:
        await self.core.ensure_loaded()
        await self.core.tick()
        if self.core.ended:
            self._retire_breakouts()
        return self.core.session["status"]

    async def wait_events(
        self, participant_id: str, after_seq: int, timeout: float, connection_id: str | None = None
    ) -> dict:
        await self.core.ensure_loaded()
        return await self.core.wait_events(participant_id, after_seq, timeout, connection_id)

    async def open_breakout(self, name: str) -> dict:
        """Start a breakout room's actor, owned by this session."""
        await self.core.ensure_loaded()
        self.core.require_live()
        breakout_id = new_id("brk")
        BreakoutRoom(self.session_id, breakout_id, name)  # validates before an actor exists
        handle = cluster.get_or_create(
            BreakoutRoomActor, names.breakout(self.session_id, breakout_id), self.session_id, breakout_id, name
        )
        info = await cluster.call(handle, "info")
        self.breakouts[breakout_id] = handle
        return info

    def _retire_breakouts(self) -> None:
        for breakout_id in list(self.breakouts):
            cluster.kill(names.breakout(self.session_id, breakout_id), restart=False)
            del self.breakouts[breakout_id]

    def pid(self) -> int:
        return os.getpid()
