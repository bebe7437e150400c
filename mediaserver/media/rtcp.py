"""The RTCP the forwarder reads and writes (RFC 3550 section 6, RFC 4585, RFC 5104)."""

from __future__ import annotations

import struct
from typing import Iterator

SR, RR = 200, 201
RTPFB, PSFB = 205, 206
FMT_NACK = 1  # RFC 4585 section 6.2.1 (a transport-layer feedback message)
FMT_PLI, FMT_FIR = 1, 4  # RFC 4585 section 6.3.1, RFC 5104 section 4.3.1
FMT_AFB = 15  # application-layer feedback; REMB (draft-alvestrand-rmcat-remb) is one
SERVER_SSRC = 0x6D656469  # "medi": the sender SSRC of the feedback we originate


def packets(compound: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(packet type, count/FMT, packet bytes) for each packet of a compound RTCP packet."""
    pos = 0
    while pos + 4 <= len(compound):
        first, pt, length = struct.unpack_from("!BBH", compound, pos)
        end = pos + 4 * (length + 1)
        if first >> 6 != 2 or end > len(compound):
            return  # not version 2, or truncated: stop at what we can trust
        yield pt, first & 0x1F, compound[pos:end]
        pos = end


def keyframe_request_ssrc(pt: int, fmt: int, packet: bytes) -> int | None:
    """The media SSRC a PLI or FIR asks a keyframe of, else None."""
    if pt != PSFB or len(packet) < 12:
        return None
    if fmt == FMT_PLI:
        return struct.unpack_from("!I", packet, 8)[0]
    if fmt == FMT_FIR and len(packet) >= 20:
        return struct.unpack_from("!I", packet, 12)[0]  # the first FCI entry's SSRC
    return None


def pli(media_ssrc: int, sender_ssrc: int = SERVER_SSRC) -> bytes:
    return struct.pack("!BBHII", 0x80 | FMT_PLI, PSFB, 2, sender_ssrc, media_ssrc)


def nack_request(pt: int, fmt: int, packet: bytes) -> tuple[int, list[int]] | None:
    """(media SSRC, lost sequence numbers) of a Generic NACK (RFC 4585 section 6.2.1), else None."""
    if pt != RTPFB or fmt != FMT_NACK or len(packet) < 16:
        return None
    media_ssrc = struct.unpack_from("!I", packet, 8)[0]
    lost = []
    for pos in range(12, len(packet) - 3, 4):
        pid, blp = struct.unpack_from("!HH", packet, pos)
        lost.append(pid)
        lost += [(pid + i + 1) & 0xFFFF for i in range(16) if blp & (1 << i)]
    return media_ssrc, lost


def nack(media_ssrc: int, lost: list[int], sender_ssrc: int = SERVER_SSRC) -> bytes:
    """A Generic NACK for ``lost`` (packed into PID/BLP pairs)."""
    fci = b""
    remaining = sorted(set(lost))
    while remaining:
        pid = remaining.pop(0)
        blp = 0
        for seq in list(remaining):
            diff = (seq - pid) & 0xFFFF
            if 1 <= diff <= 16:
                blp |= 1 << (diff - 1)
                remaining.remove(seq)
        fci += struct.pack("!HH", pid, blp)
    length = 2 + len(fci) // 4
    return struct.pack("!BBHII", 0x80 | FMT_NACK, RTPFB, length, sender_ssrc, media_ssrc) + fci


def translate_sr(packet: bytes, ssrc: int, ts_delta: int) -> bytes:
    """A sender report (RFC 3550 section 6.4.1) as one subscriber's stream: its SSRC, its RTP
    timestamps, and no report blocks (those describe what the publisher receives)."""
    ntp_hi, ntp_lo, rtp_ts, packets_sent, octets_sent = struct.unpack_from("!IIIII", packet, 8)
    return struct.pack(
        "!BBHIIIIII", 0x80, SR, 6, ssrc, ntp_hi, ntp_lo, (rtp_ts + ts_delta) & 0xFFFFFFFF, packets_sent, octets_sent
    )


def report_blocks(pt: int, count: int, packet: bytes) -> list[dict]:
    """The reception report blocks of an SR or RR (RFC 3550 section 6.4)."""
    if pt not in (SR, RR):
        return []
    start = 28 if pt == SR else 8
    blocks = []
    for i in range(count):
        pos = start + 24 * i
        if pos + 24 > len(packet):
            break
        ssrc, lost_word, highest, jitter, lsr, dlsr = struct.unpack_from("!IIIIII", packet, pos)
        cumulative = lost_word & 0xFFFFFF
        if cumulative & 0x800000:  # a signed 24-bit count
            cumulative -= 1 << 24
        blocks.append({
            "ssrc": ssrc, "fraction_lost": (lost_word >> 24) / 256, "lost": cumulative,
            "highest_seq": highest, "jitter": jitter, "lsr": lsr, "dlsr": dlsr,
        })
    return blocks


def remb_request(pt: int, fmt: int, packet: bytes) -> tuple[int, list[int]] | None:
    """(bitrate in bit/s, SSRCs it applies to) of a REMB message, else None."""
    if pt != PSFB or fmt != FMT_AFB or len(packet) < 20 or packet[12:16] != b"REMB":
        return None
    count = packet[16]
    exp, mantissa = packet[17] >> 2, ((packet[17] & 3) << 16) | (packet[18] << 8) | packet[19]
    ssrcs = [struct.unpack_from("!I", packet, 20 + 4 * i)[0] for i in range(count) if 24 + 4 * i <= len(packet)]
    return mantissa << exp, ssrcs


def remb(bitrate: int, ssrcs: list[int], sender_ssrc: int = SERVER_SSRC) -> bytes:
    exp = 0
    while bitrate >> exp > 0x3FFFF:  # an 18-bit mantissa
        exp += 1
    mantissa = bitrate >> exp
    body = b"REMB" + bytes([len(ssrcs), (exp << 2) | (mantissa >> 16), (mantissa >> 8) & 0xFF, mantissa & 0xFF])
    body += b"".join(struct.pack("!I", s) for s in ssrcs)
    return struct.pack("!BBHII", 0x80 | FMT_AFB, PSFB, 2 + len(body) // 4, sender_ssrc, 0) + body
