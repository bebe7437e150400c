# cython: language_level=3
# The RTCP the forwarder reads and writes (RFC 3550 section 6, RFC 4585, RFC 5104); the
# reference is mediaserver.media.rtcp.

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from mediaserver.fastpath.rtp cimport put16, put32, u16, u32

cdef enum:
    SR = 200
    RR = 201
    RTPFB = 205
    PSFB = 206
    NACK_SEQS = 6400  # the most one NACK datagram can name (372 FCI entries of 17)

cdef enum:
    SERVER_SSRC = 0x6D656469  # "medi": the sender SSRC of the feedback we originate

cdef struct Quality:
    uint8_t fraction
    int32_t lost
    uint32_t highest
    uint32_t jitter
    uint32_t lsr
    uint32_t dlsr


cdef inline void report_block(const uint8_t* b, Quality* q) noexcept nogil:
    """A reception report block (RFC 3550 section 6.4.1), 24 bytes from its SSRC."""
    cdef uint32_t word = u32(b + 4)
    q.fraction = word >> 24
    q.lost = <int32_t>(word & 0xFFFFFF)
    if q.lost & 0x800000:  # a signed 24-bit count
        q.lost -= 1 << 24
    q.highest = u32(b + 8)
    q.jitter = u32(b + 12)
    q.lsr = u32(b + 16)
    q.dlsr = u32(b + 20)


cdef inline bint is_remb(int pt, int fmt, const uint8_t* pk, int plen) noexcept nogil:
    return pt == PSFB and fmt == 15 and plen >= 20 and pk[12] == b'R' and pk[13] == b'E' and pk[14] == b'M' and pk[15] == b'B'


cdef inline uint64_t remb_bitrate(const uint8_t* pk) noexcept nogil:
    cdef int exp = pk[17] >> 2
    cdef uint64_t mantissa = ((<uint64_t>(pk[17] & 3)) << 16) | (<uint64_t>pk[18] << 8) | pk[19]
    return mantissa << exp if exp < 46 else <uint64_t>0xFFFFFFFFFFFFFFFF


cdef inline int remb(uint8_t* msg, uint64_t bitrate, uint32_t ssrc) noexcept nogil:
    """A REMB message for one SSRC; returns its length (24)."""
    cdef int exp = 0
    cdef uint64_t mantissa
    while (bitrate >> exp) > 0x3FFFF:  # an 18-bit mantissa
        exp += 1
    mantissa = bitrate >> exp
    msg[0] = 0x80 | 15
    msg[1] = PSFB
    put16(msg + 2, 5)
    put32(msg + 4, SERVER_SSRC)
    put32(msg + 8, 0)
    msg[12] = b'R'
    msg[13] = b'E'
    msg[14] = b'M'
    msg[15] = b'B'
    msg[16] = 1
    msg[17] = (exp << 2) | (mantissa >> 16)
    msg[18] = (mantissa >> 8) & 0xFF
    msg[19] = mantissa & 0xFF
    put32(msg + 20, ssrc)
    return 24


cdef inline int pli(uint8_t* msg, uint32_t media_ssrc) noexcept nogil:
    """A Picture Loss Indication (RFC 4585 6.3.1); returns its length (12)."""
    msg[0] = 0x81
    msg[1] = PSFB
    put16(msg + 2, 2)
    put32(msg + 4, SERVER_SSRC)
    put32(msg + 8, media_ssrc)
    return 12


cdef inline void translate_sr(uint8_t* sr, const uint8_t* pk, uint32_t ssrc, uint32_t ts_delta) noexcept nogil:
    """A sender report (RFC 3550 6.4.1) as one subscriber's stream: its SSRC, its RTP
    timestamps, no report blocks (28 bytes)."""
    memcpy(sr, pk, 28)
    sr[0] = 0x80
    sr[1] = SR
    put16(sr + 2, 6)
    put32(sr + 4, ssrc)
    put32(sr + 16, <uint32_t>(u32(pk + 16) + ts_delta))


cdef inline int nack(uint8_t* msg, uint32_t media_ssrc, uint16_t* wanted, int nw) noexcept nogil:
    """A Generic NACK (RFC 4585 6.2.1) for ``wanted`` (sorted in place, repeats removed, packed
    into PID/BLP pairs as mediaserver.media.rtcp.nack does); returns its length. ``msg`` has
    room for 12 + 4 * nw bytes."""
    cdef int i, j, pairs = 0
    cdef uint16_t tmp, blp, diff
    cdef bint done[256]
    for i in range(1, nw):
        tmp = wanted[i]
        j = i - 1
        while j >= 0 and wanted[j] > tmp:
            wanted[j + 1] = wanted[j]
            j -= 1
        wanted[j + 1] = tmp
    j = 0
    for i in range(nw):
        if i == 0 or wanted[i] != wanted[j - 1]:
            wanted[j] = wanted[i]
            j += 1
    nw = j
    memset(done, 0, sizeof(done))
    for i in range(nw):
        if done[i]:
            continue
        blp = 0
        for j in range(i + 1, nw):
            diff = <uint16_t>(wanted[j] - wanted[i])
            if diff > 16:
                break
            if not done[j] and diff >= 1:
                blp |= <uint16_t>(1 << (diff - 1))
                done[j] = True
        put16(msg + 12 + 4 * pairs, wanted[i])
        put16(msg + 14 + 4 * pairs, blp)
        pairs += 1
    msg[0] = 0x80 | 1
    msg[1] = RTPFB
    put16(msg + 2, <uint16_t>(2 + pairs))
    put32(msg + 4, SERVER_SSRC)
    put32(msg + 8, media_ssrc)
    return 12 + 4 * pairs
