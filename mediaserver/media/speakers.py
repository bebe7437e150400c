"""Who is speaking, from the audio levels publishers put on their packets (RFC 6464), so that a
subscriber whose link cannot carry every video keeps the active speaker's before the others'
(issue 12, part 3), and the session can tell its participants who speaks.

The forwarder counts, per audio stream, its packets and the loud ones (``LOUD_LEVEL`` or
louder); every ``INTERVAL`` this turns the new counts into a smoothed share of loud packets. A
stream starts speaking when that share reaches ``START`` and stops under ``STOP`` (a pause
between words is not the end of speech). The active speaker among a set of streams is the one
that started speaking last and still speaks: someone who takes the word takes the focus, and
keeps it until they stop.

Plain code over plain data, fed by the media worker; it knows nothing of sessions or rooms (a
subscriber's active speaker is among the streams it receives, so breakout rooms keep theirs).
"""

from __future__ import annotations

from typing import Hashable, Iterable

START = 0.4  # smoothed share of loud packets at which a stream is speaking
STOP = 0.15  # ... under which it has stopped
SMOOTHING = 0.5  # weight of the newest interval


class Speakers:
    def __init__(self) -> None:
        self.activity: dict[Hashable, float] = {}  # stream -> smoothed share of loud packets
        self.since: dict[Hashable, float] = {}  # stream -> when it started speaking (those speaking now)
        self._counts: dict[Hashable, tuple[int, int]] = {}

    def observe(self, levels: dict[Hashable, list[int]], now: float) -> list[tuple[Hashable, bool]]:
        """Take the forwarder's counts ({stream: [packets, loud, loudness]}, totals so far);
        return the streams that started (True) or stopped (False) speaking."""
        changes: list[tuple[Hashable, bool]] = []
        for key, counts in levels.items():
            before = self._counts.get(key, (0, 0))
            self._counts[key] = (counts[0], counts[1])
            packets, loud = counts[0] - before[0], counts[1] - before[1]
            share = loud / packets if packets > 0 else 0.0  # (no packets: silence, a muted microphone)
            a = self.activity.get(key, 0.0) * (1 - SMOOTHING) + share * SMOOTHING
            self.activity[key] = a
            if key not in self.since and a >= START:
                self.since[key] = now
                changes.append((key, True))
            elif key in self.since and a < STOP:
                del self.since[key]
                changes.append((key, False))
        for key in [k for k in self.activity if k not in levels]:  # gone: its publisher left
            del self.activity[key]
            self._counts.pop(key, None)
            if self.since.pop(key, None) is not None:
                changes.append((key, False))
        return changes

    def active(self, streams: Iterable[Hashable]) -> Hashable | None:
        """Of these streams, the one that started speaking last and still speaks (None: none speaks)."""
        speaking = [(self.since[k], k) for k in streams if k in self.since]
        return max(speaking, key=lambda s: s[0])[1] if speaking else None
