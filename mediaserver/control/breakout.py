"""An open breakout room as its own actor holds it: its name and its members, without Ray.

The session owns the rules (``mediaserver.control.meeting``) and tells each open
room's actor who is in it; the actor is the room's presence in the cluster.
"""

from __future__ import annotations

from mediaserver.control.meeting import MAX_BREAKOUT_NAME
from mediaserver.errors import MediaserverError


class BreakoutRoom:
    def __init__(self, session_id: str, breakout_id: str, name: str):
        self.session_id = session_id
        self.breakout_id = breakout_id
        self.name = self._valid(name)
        self.members: set[str] = set()

    @staticmethod
    def _valid(name: str) -> str:
        if not name or len(name) > MAX_BREAKOUT_NAME:
            raise MediaserverError("breakout_name_too_long", f"a breakout room name has 1 to {MAX_BREAKOUT_NAME} characters")
        return name

    def update(self, name: str, members: list[str]) -> dict:
        self.name = self._valid(name)
        self.members = set(members)
        return self.info()

    def info(self) -> dict:
        return {
            "id": self.breakout_id,
            "session_id": self.session_id,
            "name": self.name,
            "members": sorted(self.members),
        }
