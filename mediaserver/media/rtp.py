"""RTP parsing and rewriting (RFC 3550, RFC 7983, RFC 8285): the pure-Python reference of
``mediaserver/fastpath/rtp.pxd``. Tests feed the same packets through both and compare them."""

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


def newer(seq: int, than: int) -> bool:
    """Modulo 2^16 (RFC 3550 appendix A.1)."""
    return 0 < (seq - than) & 0xFFFF < 0x8000


def payload_offset(packet: bytes) -> int | None:
    """Where the payload starts (after CSRCs and header extensions, RFC 3550 5.3.1)."""
    pos = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if pos + 4 > len(packet):
            return None
        pos += 4 + 4 * struct.unpack_from("!H", packet, pos + 2)[0]
    return pos if pos <= len(packet) else None


def payload_length(packet: bytes) -> int | None:
    """Payload bytes without the padding (RFC 3550 5.1: the last byte counts it)."""
    start = payload_offset(packet)
    if start is None:
        return None
    pad = 0
    if packet[0] & 0x20:
        if len(packet) == start:
            return None
        pad = packet[-1]
    return len(packet) - start - pad if len(packet) - start - pad >= 0 else None


def with_only_extension(packet: bytes | bytearray, ext_id: int, seq: int) -> bytearray:
    """The packet with its header extensions replaced by one two-byte value, ``ext_id`` in the
    one-byte form (RFC 8285 section 4.2; ID 1-14): a transport-wide sequence number of ours."""
    head = 12 + 4 * (packet[0] & 0x0F)
    off = payload_offset(packet)
    out = bytearray(packet[:head])
    out[0] |= 0x10
    out += struct.pack("!HHBHB", 0xBEDE, 1, (ext_id << 4) | 1, seq, 0)
    return out + packet[off:]


def find_extension(packet: bytes, ext_id: int) -> bytes | None:
    """The value of header extension ``ext_id`` (RFC 8285, one- and two-byte forms)."""
    pos = 12 + 4 * (packet[0] & 0x0F)
    if not packet[0] & 0x10 or ext_id <= 0 or pos + 4 > len(packet):
        return None
    profile, words = struct.unpack_from("!HH", packet, pos)
    end = pos + 4 + 4 * words
    if end > len(packet):
        return None
    pos += 4
    if profile == 0xBEDE:  # one-byte headers: ID 1-14, length 1-16
        while pos < end:
            if packet[pos] == 0:  # padding
                pos += 1
                continue
            eid, elen = packet[pos] >> 4, (packet[pos] & 0x0F) + 1
            if eid == 15 or pos + 1 + elen > end:  # 15: stop, the rest is not to be read
                return None
            if eid == ext_id:
                return bytes(packet[pos + 1:pos + 1 + elen])
            pos += 1 + elen
    elif profile & 0xFFF0 == 0x1000:  # two-byte headers
        while pos + 1 < end:
            if packet[pos] == 0:
                pos += 1
                continue
            eid, elen = packet[pos], packet[pos + 1]
            if pos + 2 + elen > end:
                return None
            if eid == ext_id:
                return bytes(packet[pos + 2:pos + 2 + elen])
            pos += 2 + elen
    return None
