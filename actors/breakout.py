"""BreakoutRoomActor: one per open breakout room, owned by its session's SessionActor."""

from __future__ import annotations

from mediaserver.control.breakout import BreakoutRoom


class BreakoutRoomActor:
    def __init__(self, session_id: str, breakout_id: str, name: str):
        self.room = BreakoutRoom(session_id, breakout_id, name)

    def update(self, name: str, members: list[str]) -> dict:
        return self.room.update(name, members)

    def info(self) -> dict:
        return self.room.info()
