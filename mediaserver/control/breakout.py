"""A breakout room's state, without Ray. The breakout feature (assignment, isolation) builds on this."""

from __future__ import annotations

from mediaserver.errors import MediaserverError

MAX_NAME = 30


class BreakoutRoom:
    def __init__(self, session_id: str, breakout_id: str, name: str):
        if not name or len(name) > MAX_NAME:
            raise MediaserverError("invalid_request", f"a breakout room name has 1 to {MAX_NAME} characters")
        self.session_id = session_id
        self.breakout_id = breakout_id
        self.name = name
        self.members: set[str] = set()

    def info(self) -> dict:
        return {
            "id": self.breakout_id,
            "session_id": self.session_id,
            "name": self.name,
            "members": sorted(self.members),
        }
