# cython: language_level=3
# Transport-wide congestion control feedback to publishers
# (draft-holmer-rmcat-transport-wide-cc-extensions-01); the reference is mediaserver.media.twcc.
# The publisher numbers every packet of its transport in a header extension; we tell it when
# each arrived, and its own estimator (Chrome's send-side GCC) sets its bitrate from that.

from libc.stdint cimport int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport malloc

from mediaserver.fastpath.rtcp cimport RTPFB, SERVER_SSRC
from mediaserver.fastpath.rtp cimport put16, put32, u16, u32

cdef enum:
    TWCC_RING = 2048  # arrivals remembered between two feedback messages
    TWCC_MAX_STATUS = 400  # packets reported per message (it stays under the MTU)
    TWCC_INTERVAL_MS = 50  # how often a publisher hears from us
    TWCC_MAX_MESSAGES = 4  # messages sent at once when much is pending

cdef struct Twcc:
    int ext_id  # the extension's ID for this transport; 0: not negotiated
    bint started
    int64_t base  # unwrapped: the first sequence number not yet reported
    int64_t end  # unwrapped: one past the highest received
    int64_t last  # unwrapped: the latest received (unwrapping is relative to it)
    int64_t* arrival  # microseconds, -1: not received; TWCC_RING slots, allocated with the first packet
    uint8_t count  # feedback packet count, modulo 256
    double last_sent


cdef inline void twcc_clear(Twcc* tw, int64_t start, int64_t stop) noexcept nogil:
    cdef int64_t i
    if stop - start > TWCC_RING:
        start = stop - TWCC_RING
    for i in range(start, stop):
        tw.arrival[i % TWCC_RING] = -1


cdef inline void twcc_record(Twcc* tw, uint16_t seq, double now) noexcept nogil:
    """One packet's arrival; a packet older than what was reported already is not reported."""
    cdef int64_t ext, i
    if tw.arrival == NULL:
        tw.arrival = <int64_t*>malloc(TWCC_RING * sizeof(int64_t))
        if tw.arrival == NULL:
            return
        for i in range(TWCC_RING):
            tw.arrival[i] = -1
    if not tw.started:
        tw.started = True
        tw.base = tw.end = tw.last = seq
    ext = tw.last + <int16_t>(<uint16_t>(seq - <uint16_t>(tw.last & 0xFFFF)))
    if ext > tw.last:
        tw.last = ext
    if ext < tw.base:
        return
    if ext >= tw.base + TWCC_RING:  # a jump: what is too old to keep is never reported
        twcc_clear(tw, tw.base, ext - TWCC_RING + 1 if ext - TWCC_RING + 1 < tw.end else tw.end)
        tw.base = ext - TWCC_RING + 1
    if tw.arrival[ext % TWCC_RING] < 0:  # a duplicate keeps its first arrival
        tw.arrival[ext % TWCC_RING] = <int64_t>(now * 1e6)
    if ext + 1 > tw.end:
        tw.end = ext + 1


cdef inline bint twcc_due(Twcc* tw, double now) noexcept nogil:
    return tw.started and tw.end > tw.base and now - tw.last_sent >= TWCC_INTERVAL_MS / 1000.0


cdef inline int twcc_feedback(Twcc* tw, uint8_t* msg, uint32_t media_ssrc, double now) noexcept nogil:
    """The next feedback message for what is pending (into ``msg``, room for 1500 bytes);
    returns its length, 0 when nothing is pending."""
    cdef int n, i, j, run, pos, chunks, nd, pad
    cdef int64_t a, ticks, prev, d, first = -1
    cdef uint8_t sym[TWCC_MAX_STATUS]
    cdef int deltas[TWCC_MAX_STATUS]
    cdef uint16_t chunk
    cdef bint small
    n = <int>(tw.end - tw.base) if tw.end - tw.base < TWCC_MAX_STATUS else TWCC_MAX_STATUS
    if n <= 0:
        return 0
    for i in range(n):
        if tw.arrival[(tw.base + i) % TWCC_RING] >= 0:
            first = tw.arrival[(tw.base + i) % TWCC_RING]
            break
    if first < 0:  # all lost: not worth a message of its own (the sender counts them lost)
        tw.base += n
        return 0
    # Deltas in 250 us ticks: the first from the reference time (64 ms units), then each from
    # the previous packet received; one byte when 0-255, else two, signed (section 3.1.5).
    prev = (first // 64000) * 256
    nd = 0
    for i in range(n):
        a = tw.arrival[(tw.base + i) % TWCC_RING]
        if a < 0:
            sym[i] = 0
            continue
        ticks = a // 250
        d = ticks - prev
        if d < -32768 or d > 32767:  # too far for one message: the rest goes in the next
            n = i
            break
        sym[i] = 1 if 0 <= d <= 255 else 2
        deltas[nd] = <int>d
        nd += 1
        prev = ticks
    msg[0] = 0x80 | 15
    msg[1] = RTPFB
    put32(msg + 4, SERVER_SSRC)
    put32(msg + 8, media_ssrc)
    put16(msg + 12, <uint16_t>(tw.base & 0xFFFF))
    put16(msg + 14, <uint16_t>n)
    put32(msg + 16, ((<uint32_t>((first // 64000) & 0xFFFFFF)) << 8) | tw.count)
    pos = 20
    i = 0
    while i < n:  # packet status chunks (section 3.1.3, 3.1.4)
        run = 1
        while i + run < n and sym[i + run] == sym[i] and run < 8191:
            run += 1
        if run >= 14:
            chunk = (<uint16_t>sym[i] << 13) | <uint16_t>run
            i += run
        else:
            small = True
            for j in range(i, i + 14 if i + 14 < n else n):
                if sym[j] == 2:
                    small = False
            chunk = 0
            if small:  # 14 one-bit symbols
                for j in range(14):
                    if i + j < n and sym[i + j]:
                        chunk |= <uint16_t>(1 << (13 - j))
                chunk |= 0x8000
                i += 14
            else:  # 7 two-bit symbols
                for j in range(7):
                    if i + j < n:
                        chunk |= <uint16_t>(sym[i + j] << (12 - 2 * j))
                chunk |= 0xC000
                i += 7
        put16(msg + pos, chunk)
        pos += 2
    j = 0
    for i in range(n):
        if sym[i] == 1:
            msg[pos] = <uint8_t>deltas[j]
            pos += 1
            j += 1
        elif sym[i] == 2:
            put16(msg + pos, <uint16_t>(<int16_t>deltas[j]))
            pos += 2
            j += 1
    pad = (4 - pos % 4) % 4
    if pad:  # RFC 3550 padding: zeros, the last byte counting them
        for i in range(pad - 1):
            msg[pos + i] = 0
        msg[pos + pad - 1] = pad
        msg[0] |= 0x20
        pos += pad
    put16(msg + 2, <uint16_t>(pos // 4 - 1))
    twcc_clear(tw, tw.base, tw.base + n)
    tw.base += n
    tw.count = <uint8_t>(tw.count + 1)
    tw.last_sent = now
    return pos


cdef enum:
    TWCC_MAX_REPORTED = 4096  # statuses read of one feedback message (more: not read)


cdef inline bint twcc_parse(const uint8_t* pk, int n, uint16_t* base, int* count, int64_t* arrivals) noexcept nogil:
    """A feedback message (a subscriber's, about what we sent it): its base sequence number,
    status count and each packet's arrival in microseconds (-1: lost) into ``arrivals``
    (TWCC_MAX_REPORTED slots). False when malformed: nothing of it is to be read (the
    reference's ``parse`` raises then)."""
    cdef int pos = 20, k = 0, j, m, total
    cdef uint16_t c
    cdef int32_t ref
    cdef int64_t t
    cdef int d
    cdef uint8_t sym[TWCC_MAX_REPORTED]
    if n < 1:
        return False
    if pk[0] & 0x20:  # RFC 3550 padding
        if pk[n - 1] == 0 or pk[n - 1] > n - 20:
            return False
        n -= pk[n - 1]
    if n < 20:
        return False
    base[0] = u16(pk + 12)
    total = u16(pk + 14)
    if total > TWCC_MAX_REPORTED:
        return False
    while k < total:
        if pos + 2 > n:
            return False
        c = u16(pk + pos)
        pos += 2
        if not (c & 0x8000):  # run length
            m = c & 0x1FFF
            for j in range(m if m < total - k else total - k):
                sym[k] = (c >> 13) & 3
                k += 1
        elif not (c & 0x4000):  # one bit each
            for j in range(14):
                if k < total:
                    sym[k] = (c >> (13 - j)) & 1
                    k += 1
        else:  # two bits each
            for j in range(7):
                if k < total:
                    sym[k] = (c >> (12 - 2 * j)) & 3
                    k += 1
    ref = <int32_t>(u32(pk + 16) >> 8)
    if ref & 0x800000:
        ref -= 1 << 24
    t = <int64_t>ref * 64000
    for k in range(total):
        if sym[k] == 0:
            arrivals[k] = -1
            continue
        if sym[k] == 3:
            return False
        if sym[k] == 1:
            if pos + 1 > n:
                return False
            d = pk[pos]
            pos += 1
        else:
            if pos + 2 > n:
                return False
            d = <int16_t>u16(pk + pos)
            pos += 2
        t += <int64_t>d * 250
        arrivals[k] = t
    count[0] = total
    return True
