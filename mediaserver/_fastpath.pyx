# cython: language_level=3
"""The routed media fast path (C level, GIL released).

This first part holds the per-packet primitives the forwarding loop is built
from: demultiplexing by first byte (RFC 7983) and rewriting an RTP header for a
subscriber (RFC 3550 section 5.1). ``mediaserver.fastpath_ref`` is the
pure-Python reference; tests check the two agree packet for packet.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t

# Packet kinds, same values as fastpath_ref.
DEF KIND_DROP = 0
DEF KIND_STUN = 1
DEF KIND_DTLS = 2
DEF KIND_RTP = 3
DEF KIND_RTCP = 4

KIND_NAMES = ("drop", "stun", "dtls", "rtp", "rtcp")


cdef inline int classify_c(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef uint8_t b, pt
    if n < 1:
        return KIND_DROP
    b = p[0]
    # RFC 7983 section 7: 0-3 STUN, 20-63 DTLS, 128-191 RTP/RTCP; anything else is dropped.
    if b <= 3:
        return KIND_STUN if n >= 20 else KIND_DROP
    if 20 <= b <= 63:
        return KIND_DTLS if n >= 13 else KIND_DROP
    if 128 <= b <= 191:
        if n < 8:
            return KIND_DROP
        pt = p[1] & 0x7F
        # RFC 5761 section 4: RTCP packet types 192-223 occupy RTP payload types 64-95 under rtcp-mux.
        if 64 <= pt <= 95:
            return KIND_RTCP
        return KIND_RTP if n >= 12 else KIND_DROP
    return KIND_DROP


def classify(const uint8_t[:] packet):
    """The kind of one datagram: 0 drop, 1 STUN, 2 DTLS, 3 RTP, 4 RTCP."""
    cdef Py_ssize_t n = packet.shape[0]
    cdef int kind
    if n == 0:
        return KIND_DROP
    with nogil:
        kind = classify_c(&packet[0], n)
    return kind


cdef inline void rewrite_rtp_c(uint8_t* p, uint32_t ssrc, uint16_t seq_delta, uint32_t ts_delta) noexcept nogil:
    cdef uint16_t seq = ((<uint16_t>p[2]) << 8) | p[3]
    cdef uint32_t ts = ((<uint32_t>p[4]) << 24) | ((<uint32_t>p[5]) << 16) | ((<uint32_t>p[6]) << 8) | p[7]
    seq = <uint16_t>(seq + seq_delta)  # modulo 2^16, as RTP sequence numbers wrap
    ts = <uint32_t>(ts + ts_delta)  # modulo 2^32
    p[2] = seq >> 8
    p[3] = seq & 0xFF
    p[4] = ts >> 24
    p[5] = (ts >> 16) & 0xFF
    p[6] = (ts >> 8) & 0xFF
    p[7] = ts & 0xFF
    p[8] = ssrc >> 24
    p[9] = (ssrc >> 16) & 0xFF
    p[10] = (ssrc >> 8) & 0xFF
    p[11] = ssrc & 0xFF


def rewrite_rtp(uint8_t[:] packet, uint32_t ssrc, uint16_t seq_delta, uint32_t ts_delta):
    """Rewrite an RTP header in place for one subscriber: new SSRC, shifted sequence number and timestamp."""
    if packet.shape[0] < 12:
        raise ValueError("an RTP header has at least 12 bytes")
    with nogil:
        rewrite_rtp_c(&packet[0], ssrc, seq_delta, ts_delta)
