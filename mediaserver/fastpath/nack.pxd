# cython: language_level=3
# The retransmission cache and what is asked of publishers; the reference is mediaserver.media.nack.

from libc.stdint cimport uint8_t, uint16_t
from libc.stdlib cimport calloc
from libc.string cimport memcpy

cdef enum:
    NACK_MTU = 1500  # the largest packet cached (the forwarder's MTU)
    NACK_CACHE = 512  # packets kept per track to answer NACKs (about 1 s of 4 Mbps video)
    UPSTREAM_RING = 64  # sequence numbers asked of a publisher, remembered per track
    UPSTREAM_MAX = 256  # sequence numbers per NACK sent upstream (it must fit in one datagram)
    UPSTREAM_HOLD_MS = 200  # a lost packet is asked of its publisher at most once per 200 ms

cdef struct Slot:
    int len  # 0: empty
    uint16_t seq
    uint8_t data[NACK_MTU]

cdef struct Asked:
    bint used
    uint16_t seq
    double at


cdef inline void cache_put(Slot** cache, uint16_t seq, const uint8_t* p, int n) noexcept nogil:
    """Keep a packet (its plaintext), allocating the ring with the first one."""
    cdef Slot* slot
    if cache[0] == NULL:
        cache[0] = <Slot*>calloc(NACK_CACHE, sizeof(Slot))
        if cache[0] == NULL:
            return
    slot = &cache[0][seq % NACK_CACHE]
    slot.seq = seq
    slot.len = n
    memcpy(slot.data, p, n)


cdef inline Slot* cache_get(Slot* cache, uint16_t seq) noexcept nogil:
    if cache == NULL or cache[seq % NACK_CACHE].len == 0 or cache[seq % NACK_CACHE].seq != seq:
        return NULL
    return &cache[seq % NACK_CACHE]


cdef inline int to_ask(Asked** ring, uint16_t highest, const uint16_t* seqs, int n, double now, uint16_t* wanted) noexcept nogil:
    """Of the lost ``seqs``, those to ask the publisher for now (into ``wanted``, at most
    UPSTREAM_MAX): each at most once per UPSTREAM_HOLD_MS, and none older than the cache."""
    cdef int i, nw = 0
    cdef uint16_t seq
    cdef Asked* slot
    if n == 0:
        return 0
    if ring[0] == NULL:
        ring[0] = <Asked*>calloc(UPSTREAM_RING, sizeof(Asked))
        if ring[0] == NULL:
            return 0
    for i in range(n):
        if nw == UPSTREAM_MAX:
            break
        seq = seqs[i]
        if <uint16_t>(highest - seq) >= NACK_CACHE:
            continue  # older than what we keep (or not sent yet): too late to be worth asking
        slot = &ring[0][seq % UPSTREAM_RING]
        if slot.used and slot.seq == seq and now - slot.at < UPSTREAM_HOLD_MS / 1000.0:
            continue
        slot.used = True
        slot.seq = seq
        slot.at = now
        wanted[nw] = seq
        nw += 1
    return nw
