"""Names of the control actors, so every caller finds the same ones."""

DIRECTORY = "directory"


def session(session_id: str) -> str:
    return f"session:{session_id}"


def breakout(session_id: str, breakout_id: str) -> str:
    return f"breakout:{session_id}:{breakout_id}"


def media_worker(index: int) -> str:
    return f"media:{index}"
