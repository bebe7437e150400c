"""The Cython fast path and its pure-Python reference agree packet for packet."""

from __future__ import annotations

import random
import struct

import pytest

from mediaserver import _fastpath as fast
from mediaserver.media import rtp as ref


def packets(n: int, seed: int = 7) -> list[bytes]:
    rnd = random.Random(seed)
    out = [b"", b"\x00", b"\x80" * 7, b"\x80\x60" + b"\0" * 9]
    for _ in range(n):
        size = rnd.choice([1, 2, 7, 8, 11, 12, 13, 19, 20, 100, 1200, 1500])
        first = rnd.choice([0, 1, 3, 4, 19, 20, 22, 63, 64, 127, 128, 144, 191, 192, 255, rnd.randrange(256)])
        second = rnd.choice([0, 96, 111, 200, 201, 205, 206, 223, 224, rnd.randrange(256)])
        body = bytes(rnd.randrange(256) for _ in range(max(size - 2, 0)))
        out.append(bytes([first, second])[:size] + body)
    return out


def test_classify_agrees():
    for p in packets(3000):
        assert fast.classify(p) == ref.classify(p), p[:4].hex()


@pytest.mark.parametrize(
    "packet,kind",
    [
        (b"\x00\x01" + b"\0" * 18, ref.KIND_STUN),  # binding request header
        (b"\x16\xfe\xfd" + b"\0" * 10, ref.KIND_DTLS),  # handshake record
        (b"\x80\x6f" + b"\0" * 10, ref.KIND_RTP),  # PT 111 (Opus)
        (b"\x80\xc8" + b"\0" * 6, ref.KIND_RTCP),  # SR
        (b"\x81\xc9" + b"\0" * 6, ref.KIND_RTCP),  # RR
        (b"\x40" * 20, ref.KIND_DROP),  # 64-127: TURN channels, not ours
        (b"\x00\x01" + b"\0" * 10, ref.KIND_DROP),  # truncated STUN
    ],
)
def test_classify_known_packets(packet, kind):
    assert fast.classify(packet) == kind == ref.classify(packet)


def test_rewrite_agrees_including_wraparound():
    rnd = random.Random(3)
    for _ in range(2000):
        pkt = bytearray(struct.pack("!BBHII", 0x80, 96, rnd.randrange(65536), rnd.randrange(2**32), rnd.randrange(2**32)) + b"payload")
        ssrc, dseq, dts = rnd.randrange(2**32), rnd.randrange(65536), rnd.randrange(2**32)
        a, b = bytearray(pkt), bytearray(pkt)
        fast.rewrite_rtp(a, ssrc, dseq, dts)
        ref.rewrite_rtp(b, ssrc, dseq, dts)
        assert a == b
        seq, ts, got_ssrc = struct.unpack_from("!HII", a, 2)
        assert got_ssrc == ssrc and a[12:] == b"payload"
    edge = bytearray(struct.pack("!BBHII", 0x80, 96, 65535, 2**32 - 1, 1))
    fast.rewrite_rtp(edge, 5, 1, 1)
    assert struct.unpack_from("!HII", edge, 2) == (0, 0, 5)


def test_rewrite_refuses_short_headers():
    for impl in (fast, ref):
        with pytest.raises(ValueError):
            impl.rewrite_rtp(bytearray(11), 1, 1, 1)
