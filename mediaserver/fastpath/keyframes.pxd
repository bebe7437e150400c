# cython: language_level=3
# Keyframe-request throttling per track; the reference is mediaserver.media.keyframes.

cdef enum:
    PLI_INTERVAL_MS = 500  # at most one keyframe request per track per 500 ms

cdef struct Keyframes:
    double last  # when the last request went to the publisher
    bint held  # a request the throttle held back: sent when its window ends


cdef inline void keyframes_init(Keyframes* k) noexcept nogil:
    k.last = -1e18
    k.held = False


cdef inline bint keyframes_throttled(Keyframes* k, double now) noexcept nogil:
    """Whether a request now must wait; if so it is held, to go when the window ends."""
    if now - k.last < PLI_INTERVAL_MS / 1000.0:
        k.held = True
        return True
    return False


cdef inline void keyframes_sent(Keyframes* k, double now) noexcept nogil:
    k.last = now
    k.held = False


cdef inline bint keyframes_due(Keyframes* k, double now) noexcept nogil:
    """A held request whose window has ended."""
    return k.held and now - k.last >= PLI_INTERVAL_MS / 1000.0


cdef inline bint keyframes_ready(Keyframes* k, double now) noexcept nogil:
    """Whether a request now would go."""
    return now - k.last >= PLI_INTERVAL_MS / 1000.0
