"""The writes of one session operation, collected before they are committed together."""

from __future__ import annotations

from typing import Any

from mediaserver.store import SessionChange


class Tx:
    """The writes of one operation, with seq numbers allocated after the committed ones."""

    def __init__(self, core: Any, now: float):
        self.now = now
        self.seq = core.last_seq
        self.change = SessionChange(core.session_id)
        self.participants: dict[str, dict] = {}  # pid -> row after this operation
        self.session: dict[str, Any] = {}
        self._core = core

    def participant(self, pid: str) -> dict:
        """The participant as this operation sees it (its pending changes applied)."""
        return self.participants.get(pid) or self._core.participants[pid]

    def add_participant(self, row: dict) -> None:
        self.change.new_participants.append(row)
        self.participants[row["id"]] = dict(row)

    def update_participant(self, pid: str, **values: Any) -> None:
        self.participants[pid] = {**self.participant(pid), **values}
        self.change.participant_updates.append((pid, values))

    def event(self, type_: str, participant_id: str | None = None, visibility: str = "broadcast", **data: Any) -> None:
        self.seq += 1
        self.change.events.append(
            {
                "session_id": self._core.session_id,
                "seq": self.seq,
                "participant_id": participant_id,
                "type": type_,
                "visibility": visibility,
                "data": data,
                "at": self.now,
            }
        )

    def meeting(self) -> dict:
        """The session's meeting state as this operation sees it; change it with ``set_meeting``."""
        return self.session.get("meeting", self._core.session.get("meeting") or {})

    def set_meeting(self, **values: Any) -> None:
        self.session["meeting"] = {**self.meeting(), **values}
