# cython: language_level=3
# What the forwarder reads of a video payload to switch simulcast layers: where a keyframe
# starts, and the VP8 picture IDs it rewrites; the reference is mediaserver.media.codecs.

from libc.stdint cimport uint8_t, uint16_t

cdef enum:
    CODEC_OTHER = 0
    CODEC_VP8 = 1
    CODEC_H264 = 2
    CODEC_VP9 = 3

cdef struct Vp8Descriptor:
    int size  # bytes before the VP8 payload
    int pid_at  # -1: no picture ID
    int pid_bits  # 7 or 15
    int tl0_at  # -1: no TL0PICIDX
    bint start  # S=1 and partition 0
    int tid_at  # the TID/Y/KEYIDX byte when it carries a TID (T); -1: none


cdef inline bint vp8_descriptor(const uint8_t* p, int n, Vp8Descriptor* d) noexcept nogil:
    """RFC 7741 section 4.2; False when the payload is too short for it."""
    cdef int pos = 1
    cdef uint8_t x
    if n < 1:
        return False
    d.pid_at = -1
    d.pid_bits = 0
    d.tl0_at = -1
    d.tid_at = -1
    if p[0] & 0x80:  # X: extended control bits
        if n < 2:
            return False
        x = p[1]
        pos = 2
        if x & 0x80:  # I: a picture ID
            if pos >= n:
                return False
            d.pid_at = pos
            d.pid_bits = 15 if p[pos] & 0x80 else 7
            pos += 2 if d.pid_bits == 15 else 1
        if x & 0x40:  # L: TL0PICIDX
            d.tl0_at = pos
            pos += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX
            if x & 0x20:
                d.tid_at = pos
            pos += 1
    if pos > n:
        return False
    d.size = pos
    d.start = (p[0] & 0x10) != 0 and (p[0] & 0x07) == 0
    return True


cdef inline bint vp8_keyframe_start(const uint8_t* p, int n) noexcept nogil:
    cdef Vp8Descriptor d
    if not vp8_descriptor(p, n, &d):
        return False
    # The VP8 payload header's P bit is 0 on a key frame (RFC 7741 section 4.3).
    return d.start and d.size < n and (p[d.size] & 0x01) == 0


cdef inline bint h264_keyframe_start(const uint8_t* p, int n) noexcept nogil:
    """An SPS, alone or in a STAP-A, else the first fragment or the whole of an IDR slice (RFC 6184)."""
    cdef int nal, pos, size
    if n < 1:
        return False
    nal = p[0] & 0x1F
    if nal == 5 or nal == 7:
        return True
    if nal == 24:  # STAP-A: 16-bit sizes, then NAL units
        pos = 1
        while pos + 2 < n:
            size = (p[pos] << 8) | p[pos + 1]
            if size == 0 or pos + 2 + size > n:
                return False
            if (p[pos + 2] & 0x1F) == 5 or (p[pos + 2] & 0x1F) == 7:
                return True
            pos += 2 + size
        return False
    if nal == 28 and n >= 2:  # FU-A: the start bit of an IDR slice's fragments
        return (p[1] & 0x80) != 0 and ((p[1] & 0x1F) == 5 or (p[1] & 0x1F) == 7)
    return False


cdef inline bint vp9_keyframe_start(const uint8_t* p, int n) noexcept nogil:
    """RFC 9628 section 4.2: B (a frame's first packet) set and P (inter-picture predicted) not."""
    return n >= 1 and (p[0] & 0x08) != 0 and (p[0] & 0x40) == 0


cdef inline bint keyframe_start(int codec, const uint8_t* p, int n) noexcept nogil:
    if codec == CODEC_VP8:
        return vp8_keyframe_start(p, n)
    if codec == CODEC_H264:
        return h264_keyframe_start(p, n)
    if codec == CODEC_VP9:
        return vp9_keyframe_start(p, n)
    return False


cdef inline int vp9_picture_at(const uint8_t* p, int n, int* bits) noexcept nogil:
    """The offset of a VP9 payload's picture ID (RFC 9628 4.2: I set), -1 without one."""
    if n < 2 or not (p[0] & 0x80):
        return -1
    bits[0] = 15 if p[1] & 0x80 else 7
    return 1 if n >= 1 + bits[0] // 8 + 1 else -1


cdef inline bint picture(int codec, const uint8_t* p, int n, int* pid, int* tl0) noexcept nogil:
    """The picture ID and TL0PICIDX (-1 where absent) of a VP8 or VP9 payload; False for others."""
    cdef int at, bits = 0
    if codec == CODEC_VP8:
        return vp8_picture(p, n, pid, tl0)
    if codec == CODEC_VP9:
        at = vp9_picture_at(p, n, &bits)
        pid[0] = -1
        tl0[0] = -1
        if at >= 0:
            pid[0] = (((p[at] & 0x7F) << 8) | p[at + 1]) if bits == 15 else (p[at] & 0x7F)
        return True
    return False


cdef inline void rewrite_picture(int codec, uint8_t* p, int n, uint16_t pid_delta, uint8_t tl0_delta) noexcept nogil:
    """Shift the picture ID (and VP8's TL0PICIDX)."""
    cdef int at, bits = 0
    cdef uint16_t pid
    if codec == CODEC_VP8:
        vp8_rewrite(p, n, pid_delta, tl0_delta)
    elif codec == CODEC_VP9:
        at = vp9_picture_at(p, n, &bits)
        if at < 0:
            return
        if bits == 15:
            pid = <uint16_t>((((p[at] & 0x7F) << 8) | p[at + 1]) + pid_delta) & 0x7FFF
            p[at] = 0x80 | (pid >> 8)
            p[at + 1] = pid & 0xFF
        else:
            p[at] = ((p[at] & 0x7F) + pid_delta) & 0x7F


cdef inline bint vp8_picture(const uint8_t* p, int n, int* pid, int* tl0) noexcept nogil:
    """The picture ID and TL0PICIDX where present (-1 where not); False without a descriptor."""
    cdef Vp8Descriptor d
    if not vp8_descriptor(p, n, &d):
        return False
    pid[0] = -1
    if d.pid_at >= 0:
        pid[0] = (((p[d.pid_at] & 0x7F) << 8) | p[d.pid_at + 1]) if d.pid_bits == 15 else (p[d.pid_at] & 0x7F)
    tl0[0] = p[d.tl0_at] if d.tl0_at >= 0 else -1
    return True


cdef inline void vp8_rewrite(uint8_t* p, int n, uint16_t pid_delta, uint8_t tl0_delta) noexcept nogil:
    """Shift the picture ID (modulo its width) and TL0PICIDX (modulo 256)."""
    cdef Vp8Descriptor d
    cdef uint16_t pid
    if not vp8_descriptor(p, n, &d):
        return
    if d.pid_at >= 0:
        if d.pid_bits == 15:
            pid = <uint16_t>((((p[d.pid_at] & 0x7F) << 8) | p[d.pid_at + 1]) + pid_delta) & 0x7FFF
            p[d.pid_at] = 0x80 | (pid >> 8)
            p[d.pid_at + 1] = pid & 0xFF
        else:
            p[d.pid_at] = ((p[d.pid_at] & 0x7F) + pid_delta) & 0x7F
    if d.tl0_at >= 0:
        p[d.tl0_at] = <uint8_t>(p[d.tl0_at] + tl0_delta)
