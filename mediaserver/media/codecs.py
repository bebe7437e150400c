"""What the forwarder reads of a video payload to switch simulcast layers: where a keyframe
starts (a decoder can start there) and the VP8 picture IDs it rewrites so that a subscriber's
stream stays one stream across switches. The pure-Python reference of
``mediaserver/fastpath/codecs.pxd``."""

from __future__ import annotations

from dataclasses import dataclass

CODEC_OTHER, CODEC_VP8, CODEC_H264, CODEC_VP9 = 0, 1, 2, 3
CODEC_IDS = {"VP8": CODEC_VP8, "H264": CODEC_H264, "VP9": CODEC_VP9}


@dataclass
class Vp8Descriptor:
    """RFC 7741 section 4.2."""

    size: int  # bytes of descriptor before the VP8 payload
    pid_at: int  # offset of the picture ID, -1: none
    pid_bits: int  # 7 or 15
    tl0_at: int  # offset of TL0PICIDX, -1: none
    start: bool  # S=1 and partition 0: a frame's first packet
    tid_at: int = -1  # offset of the TID/Y/KEYIDX byte when it carries a TID (T), -1: none


def vp8_descriptor(payload: bytes) -> Vp8Descriptor | None:
    n = len(payload)
    if n < 1:
        return None
    pos, pid_at, pid_bits, tl0_at, tid_at = 1, -1, 0, -1, -1
    if payload[0] & 0x80:  # X: extended control bits
        if n < 2:
            return None
        x = payload[1]
        pos = 2
        if x & 0x80:  # I: a picture ID
            if pos >= n:
                return None
            pid_at = pos
            pid_bits = 15 if payload[pos] & 0x80 else 7
            pos += 2 if pid_bits == 15 else 1
        if x & 0x40:  # L: TL0PICIDX
            tl0_at = pos
            pos += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX
            tid_at = pos if x & 0x20 else -1
            pos += 1
    if pos > n:
        return None
    return Vp8Descriptor(pos, pid_at, pid_bits, tl0_at, bool(payload[0] & 0x10) and payload[0] & 0x07 == 0, tid_at)


def vp8_keyframe_start(payload: bytes) -> bool:
    d = vp8_descriptor(payload)
    # The VP8 payload header's P bit is 0 on a key frame (RFC 7741 section 4.3).
    return d is not None and d.start and d.size < len(payload) and payload[d.size] & 0x01 == 0


def h264_keyframe_start(payload: bytes) -> bool:
    """A packet that starts a keyframe (RFC 6184): an SPS, alone or in a STAP-A, else the
    first fragment or the whole of an IDR slice."""
    if len(payload) < 1:
        return False
    nal = payload[0] & 0x1F
    if nal in (5, 7):
        return True
    if nal == 24:  # STAP-A: 16-bit sizes, then NAL units
        pos = 1
        while pos + 2 < len(payload):
            size = (payload[pos] << 8) | payload[pos + 1]
            if size == 0 or pos + 2 + size > len(payload):
                return False
            if payload[pos + 2] & 0x1F in (5, 7):
                return True
            pos += 2 + size
        return False
    if nal == 28 and len(payload) >= 2:  # FU-A: the start bit of an IDR slice's fragments
        return bool(payload[1] & 0x80) and payload[1] & 0x1F in (5, 7)
    return False


def vp9_keyframe_start(payload: bytes) -> bool:
    """RFC 9628 section 4.2: B (a frame's first packet) set and P (inter-picture predicted) not."""
    return len(payload) >= 1 and payload[0] & 0x08 != 0 and payload[0] & 0x40 == 0


def keyframe_start(codec: int, payload: bytes) -> bool:
    if codec == CODEC_VP8:
        return vp8_keyframe_start(payload)
    if codec == CODEC_H264:
        return h264_keyframe_start(payload)
    if codec == CODEC_VP9:
        return vp9_keyframe_start(payload)
    return False


def vp9_picture_at(payload: bytes) -> tuple[int, int]:
    """(offset, bits) of a VP9 payload's picture ID (RFC 9628 4.2: I set), (-1, 0) without one."""
    if len(payload) < 2 or not payload[0] & 0x80:
        return -1, 0
    bits = 15 if payload[1] & 0x80 else 7
    return (1, bits) if len(payload) >= 1 + bits // 8 + 1 else (-1, 0)


def picture(codec: int, payload: bytes) -> tuple[int, int] | None:
    """(picture ID, TL0PICIDX), -1 where absent, of a VP8 or VP9 payload; None for others."""
    if codec == CODEC_VP8:
        return vp8_picture(payload)
    if codec == CODEC_VP9:
        at, bits = vp9_picture_at(payload)
        if at < 0:
            return -1, -1
        return (((payload[at] & 0x7F) << 8 | payload[at + 1]) if bits == 15 else payload[at] & 0x7F), -1
    return None


def rewrite_picture(codec: int, packet: bytearray, offset: int, pid_delta: int, tl0_delta: int) -> None:
    """Shift the picture ID (and VP8's TL0PICIDX) of the payload at ``offset``."""
    if codec == CODEC_VP8:
        vp8_rewrite(packet, offset, pid_delta, tl0_delta)
    elif codec == CODEC_VP9:
        at, bits = vp9_picture_at(packet[offset:])
        if at < 0:
            return
        at += offset
        if bits == 15:
            pid = (((packet[at] & 0x7F) << 8 | packet[at + 1]) + pid_delta) & 0x7FFF
            packet[at], packet[at + 1] = 0x80 | pid >> 8, pid & 0xFF
        else:
            packet[at] = ((packet[at] & 0x7F) + pid_delta) & 0x7F


def vp8_picture(payload: bytes) -> tuple[int, int] | None:
    """(picture ID, TL0PICIDX) where present (-1 where not), None without a descriptor."""
    d = vp8_descriptor(payload)
    if d is None:
        return None
    pid = -1
    if d.pid_at >= 0:
        pid = ((payload[d.pid_at] & 0x7F) << 8 | payload[d.pid_at + 1]) if d.pid_bits == 15 else payload[d.pid_at] & 0x7F
    return pid, payload[d.tl0_at] if d.tl0_at >= 0 else -1


def vp8_rewrite(packet: bytearray, offset: int, pid_delta: int, tl0_delta: int) -> None:
    """Shift the picture ID (modulo its width) and TL0PICIDX (modulo 256) of the payload at ``offset``."""
    d = vp8_descriptor(packet[offset:])
    if d is None:
        return
    if d.pid_at >= 0:
        at = offset + d.pid_at
        if d.pid_bits == 15:
            pid = (((packet[at] & 0x7F) << 8 | packet[at + 1]) + pid_delta) & 0x7FFF
            packet[at], packet[at + 1] = 0x80 | pid >> 8, pid & 0xFF
        else:
            packet[at] = ((packet[at] & 0x7F) + pid_delta) & 0x7F
    if d.tl0_at >= 0:
        packet[offset + d.tl0_at] = (packet[offset + d.tl0_at] + tl0_delta) & 0xFF
