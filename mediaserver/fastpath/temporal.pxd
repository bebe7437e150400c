# cython: language_level=3
# Temporal layers (VP8 TID): which frames a route thinned to a lower frame rate gets, and the
# record of what it dropped that keeps its numbers whole; the reference is
# mediaserver.media.temporal.

from libc.stdint cimport uint8_t, uint16_t

from mediaserver.fastpath.codecs cimport Vp8Descriptor, vp8_descriptor

cdef enum:
    MAX_TEMPORAL = 2
    DROP_WINDOW = 512  # also the ring sizes: at most one drop per sequence number in the window

cdef struct Drops:
    # Rings, oldest first: dropped publisher sequence numbers; each dropped picture's ID with
    # the sequence number of its first packet dropped.
    uint16_t seqs[DROP_WINDOW]
    int shead
    int scount
    uint16_t pseqs[DROP_WINDOW]
    uint16_t pids[DROP_WINDOW]
    int phead
    int pcount

cdef struct Vp8Temporal:
    int tid  # -1: no TID in the descriptor
    bint sync  # Y
    bint start
    bint key
    int pid  # -1: none


cdef inline bint newer16(uint16_t a, uint16_t b) noexcept nogil:
    cdef uint16_t d = <uint16_t>(a - b)
    return d != 0 and d < 0x8000


cdef inline bint newer15(int a, int b) noexcept nogil:
    cdef int d = (a - b) & 0x7FFF
    return d != 0 and d < 0x4000


cdef inline void drops_init(Drops* d) noexcept nogil:
    d.shead = 0
    d.scount = 0
    d.phead = 0
    d.pcount = 0


cdef inline bint drops_add(Drops* d, uint16_t seq, int pid) noexcept nogil:
    """Record a dropped packet (the newest so far); True when it starts a dropped picture."""
    cdef bint new_picture = pid >= 0 and (d.pcount == 0 or d.pids[(d.phead + d.pcount - 1) % DROP_WINDOW] != pid)
    d.seqs[(d.shead + d.scount) % DROP_WINDOW] = seq
    d.scount += 1
    if new_picture:
        d.pseqs[(d.phead + d.pcount) % DROP_WINDOW] = seq
        d.pids[(d.phead + d.pcount) % DROP_WINDOW] = <uint16_t>pid
        d.pcount += 1
    while d.scount > 0 and <uint16_t>(seq - d.seqs[d.shead]) >= DROP_WINDOW:
        d.shead = (d.shead + 1) % DROP_WINDOW
        d.scount -= 1
    while d.pcount > 0 and <uint16_t>(seq - d.pseqs[d.phead]) >= DROP_WINDOW:
        d.phead = (d.phead + 1) % DROP_WINDOW
        d.pcount -= 1
    return new_picture


cdef inline bint drops_dropped_picture(Drops* d, int pid) noexcept nogil:
    cdef int i
    for i in range(d.pcount):
        if d.pids[(d.phead + i) % DROP_WINDOW] == pid:
            return True
    return False


cdef inline void drops_after(Drops* d, uint16_t seq, int pid, int* seqs, int* pics) noexcept nogil:
    """Drops newer than a late packet, and dropped pictures newer than its picture."""
    cdef int i
    seqs[0] = 0
    pics[0] = 0
    for i in range(d.scount):
        if newer16(d.seqs[(d.shead + i) % DROP_WINDOW], seq):
            seqs[0] += 1
    if pid >= 0:
        for i in range(d.pcount):
            if newer15(d.pids[(d.phead + i) % DROP_WINDOW], pid):
                pics[0] += 1


cdef inline uint16_t drops_publisher_seq(Drops* d, uint16_t cand) noexcept nogil:
    """Moved back past every drop at or after it, newest first (see the reference)."""
    cdef int i
    cdef uint16_t s
    for i in range(d.scount - 1, -1, -1):
        s = d.seqs[(d.shead + i) % DROP_WINDOW]
        if s == cand or newer16(s, cand):
            cand = <uint16_t>(cand - 1)
    return cand


cdef inline bint vp8_temporal(const uint8_t* p, int n, Vp8Temporal* t) noexcept nogil:
    """The temporal fields of a VP8 payload descriptor (RFC 7741 4.2); False without one."""
    cdef Vp8Descriptor d
    if not vp8_descriptor(p, n, &d):
        return False
    t.pid = -1
    if d.pid_at >= 0:
        t.pid = (((p[d.pid_at] & 0x7F) << 8) | p[d.pid_at + 1]) if d.pid_bits == 15 else p[d.pid_at]
    t.tid = (p[d.tid_at] >> 6) if d.tid_at >= 0 else -1
    t.sync = d.tid_at >= 0 and (p[d.tid_at] & 0x20) != 0
    t.start = d.start
    t.key = d.start and d.size < n and (p[d.size] & 0x01) == 0  # P bit 0 (RFC 7741 4.3)
    return True


cdef inline int step_layer(int tcur, int tcap, Vp8Temporal* t) noexcept nogil:
    """The temporal layer a route forwards from this packet on (see the reference)."""
    if not t.start:
        return tcur
    if t.key:
        return tcap
    if tcur > tcap:
        return tcap
    if tcur < t.tid <= tcap and t.sync:
        return t.tid
    return tcur
