# cython: language_level=3
# RTP parsing and rewriting; the reference is mediaserver.media.rtp.

from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memmove

# Packet kinds, the same values as mediaserver.media.rtp.
cdef enum:
    KIND_DROP = 0
    KIND_STUN = 1
    KIND_DTLS = 2
    KIND_RTP = 3
    KIND_RTCP = 4


cdef inline uint16_t u16(const uint8_t* p) noexcept nogil:
    return ((<uint16_t>p[0]) << 8) | p[1]


cdef inline uint32_t u32(const uint8_t* p) noexcept nogil:
    return ((<uint32_t>p[0]) << 24) | ((<uint32_t>p[1]) << 16) | ((<uint32_t>p[2]) << 8) | p[3]


cdef inline void put16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = v >> 8
    p[1] = v & 0xFF


cdef inline void put32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = v >> 24
    p[1] = (v >> 16) & 0xFF
    p[2] = (v >> 8) & 0xFF
    p[3] = v & 0xFF


cdef inline int classify(const uint8_t* p, Py_ssize_t n) noexcept nogil:
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


cdef inline void rewrite(uint8_t* p, uint32_t ssrc, uint16_t seq_delta, uint32_t ts_delta) noexcept nogil:
    # RFC 3550 section 5.1; sequence numbers wrap modulo 2^16 and timestamps modulo 2^32.
    put16(p + 2, <uint16_t>(u16(p + 2) + seq_delta))
    put32(p + 4, <uint32_t>(u32(p + 4) + ts_delta))
    put32(p + 8, ssrc)


cdef inline bint newer(uint16_t seq, uint16_t than) noexcept nogil:
    # Modulo 2^16 (RFC 3550 appendix A.1).
    return 0 < <uint16_t>(seq - than) < 0x8000


cdef inline int payload_offset(const uint8_t* p, int n) noexcept nogil:
    """Where the payload starts (after CSRCs and header extensions, RFC 3550 5.3.1), or -1."""
    cdef int pos = 12 + 4 * (p[0] & 0x0F)
    if p[0] & 0x10:
        if pos + 4 > n:
            return -1
        pos += 4 + 4 * u16(p + pos + 2)
    return pos if pos <= n else -1


cdef inline int payload_length(const uint8_t* p, int n) noexcept nogil:
    """Payload bytes without the padding (RFC 3550 5.1: the last byte counts it), or -1."""
    cdef int start = payload_offset(p, n), pad = 0
    if start < 0:
        return -1
    if p[0] & 0x20:
        if n == start:
            return -1
        pad = p[n - 1]
    return n - start - pad if n - start - pad >= 0 else -1


cdef inline int only_extension(uint8_t* p, int n, int ext_id, uint16_t seq) noexcept nogil:
    """Replace the packet's header extensions with one two-byte value, ``ext_id`` in the one-byte
    form (RFC 8285 4.2): a transport-wide sequence number of ours. In place (room for 8 more
    bytes); returns the new length, -1 when the packet is malformed."""
    cdef int head = 12 + 4 * (p[0] & 0x0F), off = payload_offset(p, n)
    if off < 0:
        return -1
    memmove(p + head + 8, p + off, n - off)
    p[0] |= 0x10
    put16(p + head, 0xBEDE)
    put16(p + head + 2, 1)
    p[head + 4] = <uint8_t>((ext_id << 4) | 1)
    put16(p + head + 5, seq)
    p[head + 7] = 0
    return head + 8 + n - off


cdef inline int find_extension(const uint8_t* p, int n, int ext_id, int* length) noexcept nogil:
    """The offset of header extension ``ext_id``'s value (RFC 8285, one- and two-byte forms), or -1."""
    cdef int pos = 12 + 4 * (p[0] & 0x0F), end, elen, eid
    cdef uint16_t profile
    if not (p[0] & 0x10) or ext_id <= 0 or pos + 4 > n:
        return -1
    profile = u16(p + pos)
    end = pos + 4 + 4 * u16(p + pos + 2)
    if end > n:
        return -1
    pos += 4
    if profile == 0xBEDE:  # one-byte headers: ID 1-14, length 1-16
        while pos < end:
            eid = p[pos] >> 4
            if p[pos] == 0:  # padding
                pos += 1
                continue
            if eid == 15:  # stop: the rest is not to be read
                return -1
            elen = (p[pos] & 0x0F) + 1
            if pos + 1 + elen > end:
                return -1
            if eid == ext_id:
                length[0] = elen
                return pos + 1
            pos += 1 + elen
    elif (profile & 0xFFF0) == 0x1000:  # two-byte headers
        while pos + 1 < end:
            if p[pos] == 0:
                pos += 1
                continue
            eid = p[pos]
            elen = p[pos + 1]
            if pos + 2 + elen > end:
                return -1
            if eid == ext_id:
                length[0] = elen
                return pos + 2
            pos += 2 + elen
    return -1
