"""The retransmission cache and what is asked of publishers (RFC 4585 6.2.1 Generic NACK): the
pure-Python reference of ``mediaserver/fastpath/nack.pxd``."""

from __future__ import annotations

NACK_CACHE = 512  # packets kept per track to answer NACKs (about 1 s of 4 Mbps video)
UPSTREAM_HOLD = 0.2  # a packet lost before it reached us is asked of its publisher at most once per 200 ms
UPSTREAM_RING = 64  # sequence numbers remembered per track for that
UPSTREAM_MAX = 256  # sequence numbers per NACK sent upstream (it must fit in one datagram)


class Cache:
    """The last NACK_CACHE packets of a track (plaintext), slot ``seq % NACK_CACHE``."""

    def __init__(self) -> None:
        self.ring: list[tuple[int, bytes] | None] = [None] * NACK_CACHE

    def put(self, seq: int, plain: bytes) -> None:
        self.ring[seq % NACK_CACHE] = (seq, plain)

    def get(self, seq: int) -> bytes | None:
        slot = self.ring[seq % NACK_CACHE]
        return slot[1] if slot is not None and slot[0] == seq else None


class UpstreamAsks:
    """What has been asked of a track's publisher lately, so each loss is asked once per hold."""

    def __init__(self) -> None:
        self.ring: list[tuple[int, float] | None] = [None] * UPSTREAM_RING

    def to_ask(self, highest: int, seqs: list[int], now: float) -> list[int]:
        """Of the lost ``seqs``, those to ask for now: none older than the cache, at most UPSTREAM_MAX."""
        wanted = []
        for seq in seqs:
            if len(wanted) == UPSTREAM_MAX:
                break
            if (highest - seq) & 0xFFFF >= NACK_CACHE:
                continue  # older than what we keep (or not sent yet): too late to be worth asking
            slot = self.ring[seq % UPSTREAM_RING]
            if slot is not None and slot[0] == seq and now - slot[1] < UPSTREAM_HOLD:
                continue
            self.ring[seq % UPSTREAM_RING] = (seq, now)
            wanted.append(seq)
        return wanted
