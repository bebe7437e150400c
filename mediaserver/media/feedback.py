"""What subscribers say of the packets we send them (transport-wide congestion control,
draft-holmer-rmcat-transport-wide-cc-extensions-01): the pure-Python reference of
``mediaserver/fastpath/feedback.pxd``.

To a subscriber that takes the extension, every RTP packet goes with a transport-wide sequence
number of ours (its only header extension: the subscriber negotiated no other, so whatever the
publisher's packets carried means nothing to it), and we remember when each left and how big
it was. The subscriber's feedback says when each arrived, or that it did not; the forwarder
pairs the two into results the subscriber's bandwidth estimate reads
(``mediaserver.media.bwe``)."""

from __future__ import annotations

from typing import NamedTuple

from mediaserver.media import twcc

SENT_RING = 1024  # packets remembered until their feedback comes (a second of video and audio)
MAX_RESULTS = 8192  # results kept until they are read (older ones are dropped first)


class Result(NamedTuple):
    seq: int  # our transport-wide sequence number
    sent: float  # when it left (the forwarder's clock, seconds)
    size: int  # bytes on the wire (SRTP included)
    arrival: float | None  # when it arrived (the subscriber's clock, seconds), None: lost
    reported: float  # when its feedback reached us (the forwarder's clock)


class SentPackets:
    """One subscriber's numbering of what we send it, and its feedback, paired."""

    def __init__(self, ext_id: int) -> None:
        self.ext_id = ext_id
        self.next = 1
        self.sent: list[tuple[int, float, int] | None] = [None] * SENT_RING
        self.results: list[Result] = []

    def number(self) -> int:
        """The next packet's transport-wide sequence number."""
        seq, self.next = self.next, (self.next + 1) & 0xFFFF
        return seq

    def record(self, seq: int, now: float, size: int) -> None:
        self.sent[seq % SENT_RING] = (seq, now, size)

    def feedback(self, packet: bytes, now: float) -> bool:
        """Pair a feedback message with what was sent; False when it is malformed (not read)."""
        try:
            base, _ref, arrivals = twcc.parse(packet)
        except (ValueError, IndexError):
            return False
        for i, arrival in enumerate(arrivals):
            seq = (base + i) & 0xFFFF
            rec = self.sent[seq % SENT_RING]
            if rec is None or rec[0] != seq:
                continue  # not ours, or too old to remember
            self.results.append(Result(seq, rec[1], rec[2], None if arrival is None else arrival / 1e6, now))
        if len(self.results) > MAX_RESULTS:
            del self.results[: len(self.results) - MAX_RESULTS]
        return True

    def take(self) -> list[Result]:
        out, self.results = self.results, []
        return out
