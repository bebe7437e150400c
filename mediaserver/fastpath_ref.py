"""Pure-Python reference for ``mediaserver._fastpath``: same behaviour, readable, slow.

Tests feed the same packets through both and compare the results.
"""

from __future__ import annotations

import struct

KIND_DROP, KIND_STUN, KIND_DTLS, KIND_RTP, KIND_RTCP = range(5)
KIND_NAMES = ("drop", "stun", "dtls", "rtp", "rtcp")


def classify(packet: bytes | bytearray | memoryview) -> int:
    """RFC 7983 section 7 demultiplexing by the first byte."""
    n = len(packet)
    if n < 1:
        return KIND_DROP
    b = packet[0]
    if b <= 3:
        return KIND_STUN if n >= 20 else KIND_DROP  # a STUN header is 20 bytes (RFC 5389)
    if 20 <= b <= 63:
        return KIND_DTLS if n >= 13 else KIND_DROP  # a DTLS record header is 13 bytes (RFC 6347)
    if 128 <= b <= 191:
        if n < 8:
            return KIND_DROP
        # RFC 5761 section 4: with rtcp-mux, payload types 64-95 are RTCP packet types 192-223.
        if 64 <= (packet[1] & 0x7F) <= 95:
            return KIND_RTCP
        return KIND_RTP if n >= 12 else KIND_DROP
    return KIND_DROP


def rewrite_rtp(packet: bytearray, ssrc: int, seq_delta: int, ts_delta: int) -> None:
    if len(packet) < 12:
        raise ValueError("an RTP header has at least 12 bytes")
    seq, ts = struct.unpack_from("!HI", packet, 2)
    struct.pack_into("!HII", packet, 2, (seq + seq_delta) & 0xFFFF, (ts + ts_delta) & 0xFFFFFFFF, ssrc)
