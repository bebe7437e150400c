"""Temporal layers (VP8 TID): a subscriber's frame rate halved or quartered by the forwarder,
its stream kept whole (sequence numbers and picture IDs without gaps, NACKs and late packets
mapped), in both implementations and compared packet for packet."""

from __future__ import annotations

import struct

import pytest

from mediaserver.media import rtcp
from mediaserver.media.forwarder import Route
from mediaserver.media.srtp import PROFILES
from mediaserver.media.temporal import DROP_WINDOW, Drops, step_layer, vp8_temporal
from test_forwarder import (
    IMPLEMENTATIONS, MID_ID, PUB, PUB_SSRC, RID_ID, RRID_ID, S1, S2, TRACK, Peer, build, layer_rtp, rtp, rtp_of,
    seqs_of, transcript,
)

TIDS = (0, 2, 1, 2)  # the L1T3 pattern: frame i is in temporal layer TIDS[i % 4]
SYNC = (False, True, True, False)  # frames that refer to the base layer only (Y)


def vp8t(pid: int, tl0: int, tid: int, sync: bool, key: bool, start: bool, size: int = 40) -> bytes:
    """A VP8 payload whose descriptor carries a 15-bit picture ID, TL0PICIDX and TID/Y."""
    head = bytes([0x80 | (0x10 if start else 0), 0xE0, 0x80 | (pid >> 8) & 0x7F, pid & 0xFF, tl0 & 0xFF,
                  (tid << 6) | (0x20 if sync else 0)])
    return head + bytes([0x00 if key else 0x01]) + bytes([pid & 0xFF]) * size


def frame_payload(i: int, part: int, key_every: int = 100, pid0: int = 10) -> bytes:
    return vp8t((pid0 + i) & 0x7FFF, i // 4, TIDS[i % 4], SYNC[i % 4], i % key_every == 0, part == 0)


def frames(pub, span: range, t0: float = 1.0, seq0: int = 100, key_every: int = 100, skip=(), late=()) -> list:
    """Frames of two packets every 33 ms in the L1T3 pattern; ``skip``: (frame, part) held
    back, to be sent where ``late`` says ((frame, part, after frame))."""
    steps = []
    for i in span:
        for part in range(2):
            if (i, part) in skip:
                continue
            data = rtp((seq0 + 2 * i + part) & 0xFFFF, payload=frame_payload(i, part, key_every), marker=part == 1, ts=3000 * i)
            steps.append(("pub", pub.out.protect(data), t0 + 0.033 * i))
        for f, p, after in late:
            if after == i:
                data = rtp((seq0 + 2 * f + p) & 0xFFFF, payload=frame_payload(f, p, key_every), marker=p == 1, ts=3000 * f)
                steps.append(("pub", pub.out.protect(data), t0 + 0.033 * i + 0.001))
    return steps


def pid_of(packet: bytes) -> int:
    off = 12
    return (packet[off + 2] & 0x7F) << 8 | packet[off + 3]


def tid_of(packet: bytes) -> int:
    return packet[12 + 5] >> 6


def single_build(impl, profile=PROFILES[0]):
    fw, peers = build(impl, profile)
    fw.set_codec("pub", PUB_SSRC, "VP8")
    fw.set_route("pub", PUB_SSRC, "s1", Route(ssrc=0x2001, payload_type=96, video=True))
    fw.set_route("pub", PUB_SSRC, "s2", Route(ssrc=0x2002, payload_type=100, seq_delta=1000, video=True))
    return fw, peers


def test_the_descriptor_and_the_layer_steps():
    t = vp8_temporal(vp8t(300, 7, 2, True, False, True))
    assert (t.tid, t.sync, t.start, t.key, t.pid) == (2, True, True, False, 300)
    assert vp8_temporal(vp8t(5, 0, 0, False, True, True)).key
    assert vp8_temporal(bytes([0x90, 0x80, 0x05, 0x01])).tid == -1  # a 7-bit picture ID, no TID
    assert vp8_temporal(bytes([0x90, 0xE0, 0x80])) is None  # cut short
    start = vp8_temporal(vp8t(1, 0, 1, True, False, True))
    middle = vp8_temporal(vp8t(1, 0, 1, True, False, False))
    assert step_layer(0, 2, start) == 1 and step_layer(0, 2, middle) == 0  # up at a sync frame's start only
    assert step_layer(0, 2, vp8_temporal(vp8t(1, 0, 2, False, False, True))) == 0  # not a sync frame: wait
    assert step_layer(2, 0, middle) == 2 and step_layer(2, 0, start) == 0  # down at the next frame
    assert step_layer(0, 1, vp8_temporal(vp8t(1, 0, 0, False, True, True))) == 1  # a keyframe: straight to the cap


def test_the_drop_record_maps_numbers_both_ways_across_a_wrap():
    d = Drops()
    for seq, pid in ((65534, 70), (65535, 70), (2, 72)):  # two frames dropped, numbers wrapping
        d.add(seq, pid)
    assert [p for _, p in d.pids] == [70, 72]
    assert d.after(65533, 69) == (3, 2) and d.after(1, 71) == (1, 1) and d.after(3, 73) == (0, 0)
    # The route's delta took 3 off: out = in - 3 for packets after the drops.
    for seq in (65533, 0, 1, 3, 4):
        out = (seq - 3 + d.after(seq, -1)[0]) & 0xFFFF
        assert d.publisher_seq((out + 3) & 0xFFFF) == seq
    # Drops older than the window are forgotten.
    d.add((2 + DROP_WINDOW) & 0xFFFF, 90)
    assert d.seqs == [(2 + DROP_WINDOW) & 0xFFFF] and [p for _, p in d.pids] == [90]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_subscriber_gets_a_half_or_a_quarter_of_the_frames_as_one_stream(impl):
    fw, peers = single_build(impl)
    out = transcript(fw, peers, frames(peers["pub"], range(0, 4)))
    s1 = rtp_of(out, "s1")
    assert len(s1) == 8 and seqs_of(s1) == list(range(100, 108))
    # A quarter of the frames (TID 0 only) from the next frame on; s2 keeps them all. Frame 4's
    # second packet comes late, after the frames dropped behind it.
    fw.set_cap("pub", PUB_SSRC, "s1", 0, 1.2, tcap=0)
    out = transcript(fw, peers, frames(peers["pub"], range(4, 12), skip={(4, 1)}, late=[(4, 1, 8)]),
                     lose=frozenset({("s1", 111)}))
    s1, s2 = rtp_of(out, "s1"), rtp_of(out, "s2")
    assert len(s2) == 16 and fw.stats["temporal_dropped"] == 12
    assert [tid_of(p) for p in s1] == [0] * 3
    assert seqs_of(s1) == [108, 110, 109]  # no gap (frames 4 and 8), the late packet in its own place
    assert [pid_of(p) for p in s1] == [14, 15, 14]  # picture IDs without gaps, the late one's too
    assert [p[12 + 4] for p in s1] == [1, 2, 1]  # TL0PICIDX as sent
    # s1 lost frame 8's second packet: its NACK is answered with that packet under its number.
    nack = peers["s1"].out.protect_rtcp(rtcp.nack(0x2001, [111]))
    [(sent, to)] = fw.handle_rtcp(nack, S1, 1.5)
    again = peers["s1"].inn.unprotect(sent)
    assert to == S1 and seqs_of([again]) == [111] and pid_of(again) == 15 and again[1] & 0x80  # (its marker)
    assert fw.stats["nack_served"] == 1
    # Half the frames: from the next frame that may be decoded from the base layer (frame 14).
    fw.set_cap("pub", PUB_SSRC, "s1", 0, 1.6, tcap=1)
    out = transcript(fw, peers, frames(peers["pub"], range(12, 20)))
    s1 = rtp_of(out, "s1")
    assert [tid_of(p) for p in s1][::2] == [0, 1, 0, 1] and seqs_of(s1) == list(range(112, 120))
    assert [pid_of(p) for p in s1][::2] == [16, 17, 18, 19]
    # Every frame again, from the next sync frame of TID 2 (frame 21).
    fw.set_cap("pub", PUB_SSRC, "s1", 0, 1.8, tcap=2)
    out = transcript(fw, peers, frames(peers["pub"], range(20, 24)))
    s1 = rtp_of(out, "s1")
    assert [tid_of(p) for p in s1][::2] == [0, 2, 1, 2] and seqs_of(s1) == list(range(120, 128))
    assert [pid_of(p) for p in s1][::2] == [20, 21, 22, 23]
    # Routed again as it is (a renegotiation): it goes on without a jump.
    fw.set_route("pub", PUB_SSRC, "s1", Route(ssrc=0x2001, payload_type=96, video=True))
    out = transcript(fw, peers, frames(peers["pub"], range(24, 25)))
    assert seqs_of(rtp_of(out, "s1")) == [128, 129]
    # What each temporal layer brings in, for the adaptation.
    counts = fw.temporal_bytes()[("pub", PUB_SSRC)]
    assert counts[2] > counts[1] > 0 and counts[0] > counts[1]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_streams_without_temporal_layers_are_not_thinned(impl):
    fw, peers = single_build(impl)
    fw.set_cap("pub", PUB_SSRC, "s1", 0, 1.0, tcap=0)
    plain = bytes([0x90, 0xC0, 0x80, 0x05, 0x01, 0x00]) + b"\x11" * 30  # picture ID and TL0PICIDX, no TID
    out = transcript(fw, peers, [("pub", peers["pub"].out.protect(rtp(5, payload=plain)), 1.1)])
    assert sorted(w for w, _, _ in out) == ["s1", "s2"] and fw.stats.get("temporal_dropped", 0) == 0


def recorded_temporal_session(peers: dict) -> tuple[list, frozenset]:
    """A VP8 camera in the L1T3 pattern, sent as one stream and as simulcast: subscribers
    thinned and given their frames back, losses, a reordered and a late packet, a repair from
    the publisher, NACKs, a pause and a resume, a renegotiation, numbers wrapping."""
    pub, s1, s2 = peers["pub"], peers["s1"], peers["s2"]
    steps: list = [
        lambda fw: fw.set_codec("pub", PUB_SSRC, "VP8"),
        lambda fw: fw.set_route("pub", PUB_SSRC, "s1", Route(ssrc=0x2001, payload_type=96, video=True)),
        lambda fw: fw.set_route("pub", PUB_SSRC, "s2", Route(ssrc=0x2002, payload_type=100, seq_delta=7, video=True)),
        lambda fw: fw.set_rtx("pub", 0x1112, PUB_SSRC),
        lambda fw: fw.set_sdes("pub", MID_ID, RID_ID, RRID_ID),
        lambda fw: fw.add_simulcast("pub", TRACK, "1", ["q", "h", "f"], "VP8"),
        lambda fw: fw.set_route("pub", TRACK, "s1", Route(ssrc=0x3001, payload_type=96, video=True, layer=2)),
        lambda fw: fw.set_route("pub", TRACK, "s2", Route(ssrc=0x3002, payload_type=98, video=True, layer=1)),
    ]
    t = 1.0
    base = {"q": (100, 1000, 10), "h": (2000, 50000, 3000), "f": (65470, 900000, 32700)}  # f's numbers and IDs wrap
    for i in range(48):
        t += 0.033
        if i == 3:
            steps.append(lambda fw: fw.set_cap("pub", PUB_SSRC, "s1", 0, 1.1, tcap=0))
            steps.append(lambda fw: fw.set_cap("pub", TRACK, "s1", 2, 1.1, tcap=1))
        if i == 10:
            steps.append(lambda fw: fw.set_cap("pub", PUB_SSRC, "s2", 0, 1.35, tcap=1))
            steps.append(lambda fw: fw.set_cap("pub", TRACK, "s2", 1, 1.35, tcap=0))
        if i == 16:
            steps.append(lambda fw: fw.set_layer("pub", TRACK, "s1", 1, 1.55))  # a switch while thinned
        if i == 20:
            steps.append(lambda fw: fw.set_cap("pub", PUB_SSRC, "s1", 0, 1.68, tcap=2))
        if i == 24:
            steps.append(lambda fw: fw.set_route("pub", PUB_SSRC, "s2", Route(ssrc=0x2002, payload_type=100, video=True)))
        if i == 27:
            steps.append(lambda fw: fw.set_cap("pub", PUB_SSRC, "s2", -1, 1.9, tcap=1))
        if i == 33:
            steps.append(lambda fw: fw.set_cap("pub", PUB_SSRC, "s2", 0, 2.1, tcap=0))
        if i == 38:
            steps.append(lambda fw: fw.set_cap("pub", TRACK, "s2", 2, 2.3, tcap=2))
        for part in ((1, 0) if i == 13 else (0, 1)):  # frame 13 reordered
            if (i, part) in {(6, 1), (29, 0)}:
                continue  # lost on the way to us
            seq = (65500 + 2 * i + part) & 0xFFFF
            steps.append(("pub", pub.out.protect(rtp(seq, payload=frame_payload(i, part, key_every=12), marker=part == 1,
                                                   ts=3000 * i)), t))
        for rid in ("q", "h", "f"):
            seq0, ts0, pid0 = base[rid]
            for part in range(2):
                payload = vp8t((pid0 + i) & 0x7FFF, i // 4, TIDS[i % 4], SYNC[i % 4], i % 10 == 0, part == 0)
                steps.append(("pub", pub.out.protect(layer_rtp(rid, seq0 + 2 * i + part, ts0 + 3000 * i, payload,
                                                                 sdes=i < 2, marker=part == 1)), t))
        if i == 9:  # the publisher's repair of frame 6's lost packet, late, after drops behind it
            lost = (65500 + 13) & 0xFFFF
            repair = rtp(4000, ssrc=0x1112, payload=struct.pack("!H", lost) + frame_payload(6, 1, key_every=12), ts=3000 * 6)
            steps.append(("pub", pub.out.protect(repair), t))
        if i in (12, 22, 36):
            steps.append(("s1", s1.out.protect_rtcp(rtcp.nack(0x2001, [(65500 + i - 3) & 0xFFFF, (65500 + i) & 0xFFFF])), t))
            steps.append(("s2", s2.out.protect_rtcp(rtcp.nack(0x2002, [(65507 + 2 * i - 6) & 0xFFFF])), t))
            steps.append(("s1", s1.out.protect_rtcp(rtcp.nack(0x3001, [(65470 + i) & 0xFFFF, (2000 + i) & 0xFFFF])), t))
    lose = frozenset({("s1", (65500 + 9) & 0xFFFF), ("s2", (65507 + 30) & 0xFFFF)})
    return steps, lose


def run_raw(impl: str, profile, peers: dict, steps: list) -> tuple[list, dict]:
    """Every datagram one implementation sends for a recorded sequence, as sent (SRTP is
    deterministic for the same keys, numbers and plaintext, so equal datagrams mean equal
    packets; the NACKs here may name packets a subscriber has, which a receiver would refuse as
    replays), with its counters."""
    fw, _ = build(impl, profile, peers)
    out = []
    for step in steps:
        if callable(step):
            out += [("ctl", p, to) for p, to in step(fw) or []]
            continue
        sender, data, now = step
        addr = {"pub": PUB, "s1": S1, "s2": S2}[sender]
        sent = fw.handle_rtcp(data, addr, now) if 192 <= data[1] <= 223 else fw.handle_rtp(data, addr, now)
        out += [(sender, p, to) for p, to in sent]
    return out, dict(fw.stats)


@pytest.mark.parametrize("profile", PROFILES, ids=[p.openssl_name.decode() for p in PROFILES])
def test_fast_path_matches_the_reference_with_temporal_layers(profile):
    peers = {eid: Peer(profile) for eid in ("pub", "s1", "s2")}
    steps, _ = recorded_temporal_session(peers)
    ref, fast = (run_raw(impl, profile, peers, steps) for impl in IMPLEMENTATIONS)
    assert len(ref[0]) > 200 and fast == ref
    for key in ("temporal_dropped", "nack_served", "rtx_repaired", "layer_switches", "video_resumed"):
        assert ref[1].get(key, 0) > 0, key
    # What the thinned subscriber got of the camera sent as one stream: one stream whose only
    # gap is the packet that never reached us (frame 29's first; the header is in the clear).
    got = {(struct.unpack_from("!H", p, 2)[0] - 65500) & 0xFFFF for w, p, to in ref[0]
           if to == S1 and p[8:12] == struct.pack("!I", 0x2001)}
    assert set(range(max(got) + 1)) - got == {58 - 26} and 48 < len(got) < 96  # (thinned: 13 frames of 29 dropped)
