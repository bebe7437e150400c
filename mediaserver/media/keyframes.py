"""Keyframe-request throttling per track: the pure-Python reference of
``mediaserver/fastpath/keyframes.pxd``."""

from __future__ import annotations

PLI_INTERVAL = 0.5  # at most one keyframe request per track per 500 ms


class Keyframes:
    def __init__(self) -> None:
        self.last = float("-inf")  # when the last request went to the publisher
        self.held = False  # a request the throttle held back: sent when its window ends

    def throttled(self, now: float) -> bool:
        """Whether a request now must wait; if so it is held, to go when the window ends."""
        if now - self.last < PLI_INTERVAL:
            self.held = True
            return True
        return False

    def sent(self, now: float) -> None:
        self.last = now
        self.held = False

    def ready(self, now: float) -> bool:
        """Whether a request now would go."""
        return now - self.last >= PLI_INTERVAL

    def due(self, now: float) -> bool:
        """A held request whose window has ended."""
        return self.held and now - self.last >= PLI_INTERVAL
