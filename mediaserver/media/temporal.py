"""Temporal layers (VP8 TID, RFC 7741 section 4.2): a subscriber's frame rate halved or
quartered by not forwarding the frames of the upper temporal layers, its stream kept whole.
The pure-Python reference of ``mediaserver/fastpath/temporal.pxd``.

A route that drops packets must still look like one stream to its subscriber: its sequence
numbers and VP8 picture IDs go on without gaps. A packet that arrives in order is shifted by
every drop so far (the route's ``seq_delta`` and ``pid_delta`` take one off at each drop); one
that arrives late (reordered, or a publisher's repair) is shifted by the drops *before* it
only, so the record keeps the recent drops (``DROP_WINDOW`` sequence numbers back) and a late
packet is moved back by those after it. The same record turns the sequence number a
subscriber's NACK names back into the publisher's (``publisher_seq``). The idea is mediasoup's
``SeqManager``; the code is ours.

Going down a layer happens at the next frame's start; going up waits for a frame that may be
decoded from the base layer alone (the layer-sync bit, Y) or a keyframe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mediaserver.media.codecs import vp8_descriptor

MAX_TEMPORAL = 2  # TIDs 0-2 (browsers send up to three temporal layers); a cap of 2 keeps all
DROP_WINDOW = 512  # drops are remembered this many sequence numbers back (the NACK cache's reach)


def newer16(a: int, b: int) -> bool:
    return 0 < (a - b) & 0xFFFF < 0x8000


def newer15(a: int, b: int) -> bool:
    return 0 < (a - b) & 0x7FFF < 0x4000


@dataclass
class Drops:
    """What a route did not forward lately: its publisher sequence numbers, and the picture ID
    of each frame dropped with the sequence number of its first packet dropped."""

    seqs: list[int] = field(default_factory=list)  # oldest first
    pids: list[tuple[int, int]] = field(default_factory=list)  # (sequence number, picture ID), oldest first

    def add(self, seq: int, pid: int) -> bool:
        """Record a dropped packet (the newest so far); True when it starts a dropped picture."""
        self.seqs.append(seq)
        new_picture = pid >= 0 and (not self.pids or self.pids[-1][1] != pid)
        if new_picture:
            self.pids.append((seq, pid))
        while self.seqs and (seq - self.seqs[0]) & 0xFFFF >= DROP_WINDOW:
            self.seqs.pop(0)
        while self.pids and (seq - self.pids[0][0]) & 0xFFFF >= DROP_WINDOW:
            self.pids.pop(0)
        return new_picture

    def dropped_picture(self, pid: int) -> bool:
        return any(p == pid for _, p in self.pids)

    def after(self, seq: int, pid: int) -> tuple[int, int]:
        """Drops newer than a late packet (and dropped pictures newer than its picture): what
        the route's shifts took off since, to be given back to it."""
        return (sum(1 for d in self.seqs if newer16(d, seq)),
                sum(1 for _, p in self.pids if pid >= 0 and newer15(p, pid)))

    def publisher_seq(self, cand: int) -> int:
        """The publisher's sequence number of what the subscriber knows as ``cand`` + the
        route's ``seq_delta`` (``cand``: that number minus the delta): moved back past every
        drop at or after it, newest first."""
        for d in reversed(self.seqs):
            if d == cand or newer16(d, cand):
                cand = (cand - 1) & 0xFFFF
        return cand


@dataclass
class Vp8Temporal:
    tid: int  # -1: the descriptor has no TID
    sync: bool  # Y: decodable from the base layer alone
    start: bool  # a frame's first packet
    key: bool  # ... of a keyframe
    pid: int  # -1: no picture ID


def vp8_temporal(payload: bytes) -> Vp8Temporal | None:
    """The temporal fields of a VP8 payload descriptor (RFC 7741 4.2), None without one."""
    d = vp8_descriptor(payload)
    if d is None:
        return None
    pid = -1
    if d.pid_at >= 0:
        pid = (payload[d.pid_at] & 0x7F) << 8 | payload[d.pid_at + 1] if d.pid_bits == 15 else payload[d.pid_at]
    tid, sync = (payload[d.tid_at] >> 6, bool(payload[d.tid_at] & 0x20)) if d.tid_at >= 0 else (-1, False)
    key = d.start and d.size < len(payload) and payload[d.size] & 0x01 == 0  # P bit 0 (RFC 7741 4.3)
    return Vp8Temporal(tid, sync, d.start, key, pid)


def step_layer(tcur: int, tcap: int, t: Vp8Temporal) -> int:
    """The temporal layer a route forwards from this packet on: changed only at a frame's
    start, down at once, up at a layer-sync frame (or a keyframe) of a layer it may have."""
    if not t.start:
        return tcur
    if t.key:
        return tcap
    if tcur > tcap:
        return tcap
    if tcur < t.tid <= tcap and t.sync:
        return t.tid
    return tcur
