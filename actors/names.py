"""Names of the control actors, so every caller finds the same ones."""


def host(index: int) -> str:
    """A session host: the actor owning many sessions and their breakout rooms."""
    return f"host:{index}"


def media_worker(index: int) -> str:
    return f"media:{index}"
