# cython: language_level=3
# What subscribers say of the packets we send them (transport-wide feedback): our numbering of
# what goes to a subscriber and its feedback, paired; the reference is mediaserver.media.feedback.

from libc.stdint cimport int64_t, uint8_t, uint16_t
from libc.stdlib cimport calloc, free

from mediaserver.fastpath.twcc cimport TWCC_MAX_REPORTED, twcc_parse

cdef enum:
    SENT_RING = 1024  # packets remembered until their feedback comes
    MAX_RESULTS = 8192  # results kept until read (the oldest dropped first)

cdef struct Result:
    uint16_t seq
    double sent
    int size
    bint lost
    double arrival  # seconds, the subscriber's clock
    double reported

cdef struct Sent:
    int ext_id
    uint16_t next
    uint16_t seqs[SENT_RING]
    bint used[SENT_RING]
    double times[SENT_RING]
    int sizes[SENT_RING]
    Result* results  # a ring of MAX_RESULTS, allocated with the first
    int rhead
    int rcount


cdef inline Sent* sent_new(int ext_id) noexcept nogil:
    cdef Sent* s = <Sent*>calloc(1, sizeof(Sent))
    if s != NULL:
        s.ext_id = ext_id
        s.next = 1
    return s


cdef inline void sent_free(Sent* s) noexcept nogil:
    if s != NULL:
        free(s.results)
        free(s)


cdef inline uint16_t sent_number(Sent* s) noexcept nogil:
    cdef uint16_t seq = s.next
    s.next = <uint16_t>(s.next + 1)
    return seq


cdef inline void sent_record(Sent* s, uint16_t seq, double now, int size) noexcept nogil:
    s.seqs[seq % SENT_RING] = seq
    s.used[seq % SENT_RING] = True
    s.times[seq % SENT_RING] = now
    s.sizes[seq % SENT_RING] = size


cdef inline bint sent_feedback(Sent* s, const uint8_t* pk, int n, double now) noexcept nogil:
    """Pair a feedback message with what was sent; False when malformed (not read)."""
    cdef uint16_t base, seq
    cdef int count = 0, i, slot
    cdef int64_t arrivals[TWCC_MAX_REPORTED]
    cdef Result* r
    if not twcc_parse(pk, n, &base, &count, arrivals):
        return False
    if s.results == NULL:
        s.results = <Result*>calloc(MAX_RESULTS, sizeof(Result))
        if s.results == NULL:
            return True
    for i in range(count):
        seq = <uint16_t>(base + i)
        slot = seq % SENT_RING
        if not s.used[slot] or s.seqs[slot] != seq:
            continue  # not ours, or too old to remember
        if s.rcount == MAX_RESULTS:  # full: the oldest goes
            s.rhead = (s.rhead + 1) % MAX_RESULTS
            s.rcount -= 1
        r = &s.results[(s.rhead + s.rcount) % MAX_RESULTS]
        s.rcount += 1
        r.seq = seq
        r.sent = s.times[slot]
        r.size = s.sizes[slot]
        r.lost = arrivals[i] < 0
        r.arrival = arrivals[i] / 1e6 if arrivals[i] >= 0 else 0.0
        r.reported = now
    return True
