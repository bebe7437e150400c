"""The forwarder packet by packet, with synthetic SRTP endpoints, for both implementations:
the pure-Python reference (``Forwarder``) and the Cython fast path (``FastPath``).

``transcript`` runs a recorded input sequence (reordering, loss, replays, NACK, PLI)
and returns every packet that came out, decrypted, per destination; the last test
feeds one long recorded sequence through both and compares them packet for packet.
"""

from __future__ import annotations

import os
import struct

import pytest
from pylibsrtp import Policy, Session

from mediaserver._fastpath import FastPath
from mediaserver.media import codecs, rtcp, twcc
from mediaserver.media import rtp as rtp_ref
from mediaserver.media.forwarder import NACK_CACHE, Forwarder, Route
from mediaserver.media.srtp import PROFILES, SrtpKeys

PUB, S1, S2 = ("127.0.0.1", 5000), ("127.0.0.1", 5001), ("127.0.0.1", 5002)
PUB_SSRC = 0x1111


class Peer:
    """The client side of an endpoint: protects what it sends, unprotects what it gets."""

    def __init__(self, profile):
        k = profile.key_len + profile.salt_len
        self.server_keys = SrtpKeys(profile, rx=os.urandom(k), tx=os.urandom(k))
        self.out = Session(Policy(key=self.server_keys.rx, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp_id))
        self.inn = Session(Policy(key=self.server_keys.tx, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile.libsrtp_id))


def rtp(seq: int, ssrc: int = PUB_SSRC, pt: int = 96, marker: bool = False, payload: bytes | None = None,
        twcc: int | None = None, padding: int = 0, ts: int | None = None) -> bytes:
    """An RTP packet; ``twcc``: a transport-wide sequence number in one-byte extension 3
    (RFC 8285), as Chrome sends it; ``padding``: that many bytes of RTP padding."""
    payload = payload if payload is not None else struct.pack("!H", seq) * 50
    first = 0x80 | (0x10 if twcc is not None else 0) | (0x20 if padding else 0)
    ext = b"" if twcc is None else struct.pack("!HHBHB", 0xBEDE, 1, (TWCC_ID << 4) | 1, twcc, 0)
    pad = b"\0" * (padding - 1) + bytes([padding]) if padding else b""
    ts = seq * 3000 if ts is None else ts
    return struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq, ts, ssrc) + ext + payload + pad


TWCC_ID = 3
RTX_SSRC = 0x1112


IMPLEMENTATIONS = {"reference": Forwarder, "fastpath": FastPath}


def build(impl, profile, peers=None):
    """A forwarder with a publisher and two subscribers whose client sides are ``peers``."""
    fw = IMPLEMENTATIONS[impl]()
    peers = peers or {eid: Peer(profile) for eid in ("pub", "s1", "s2")}
    for eid, addr in (("pub", PUB), ("s1", S1), ("s2", S2)):
        fw.add_endpoint(eid)
        fw.set_address(eid, addr)
        fw.set_keys(eid, peers[eid].server_keys)
    fw.set_route("pub", PUB_SSRC, "s1", Route(ssrc=0x2001, payload_type=96))
    fw.set_route("pub", PUB_SSRC, "s2", Route(ssrc=0x2002, payload_type=100, seq_delta=1000, ts_delta=90000))
    return fw, peers


@pytest.fixture(
    params=[(i, p) for i in IMPLEMENTATIONS for p in PROFILES],
    ids=[f"{i}-{p.openssl_name.decode()}" for i in IMPLEMENTATIONS for p in PROFILES],
)
def setup(request):
    return build(*request.param)


def transcript(
    fw: Forwarder, peers: dict, inputs: list[tuple[str, bytes, float]], lose: frozenset = frozenset()
) -> list[tuple[str, str, bytes]]:
    """Feed (sender, already protected datagram, time); return (receiver, 'rtp'|'rtcp', plaintext) out.

    ``lose`` holds (receiver, sequence number) pairs lost on the way out (the header is in the clear)."""
    addr_of = {"pub": PUB, "s1": S1, "s2": S2}
    who = {v: k for k, v in addr_of.items()}
    out = []
    for sender, data, now in inputs:
        is_rtcp = 192 <= data[1] <= 223
        sent = fw.handle_rtcp(data, addr_of[sender], now) if is_rtcp else fw.handle_rtp(data, addr_of[sender], now)
        for pkt, to in sent:
            kind = "rtcp" if 192 <= pkt[1] <= 223 else "rtp"
            if kind == "rtp" and (who[to], struct.unpack_from("!H", pkt, 2)[0]) in lose:
                continue
            peer = peers[who[to]]
            plain = peer.inn.unprotect_rtcp(pkt) if kind == "rtcp" else peer.inn.unprotect(pkt)
            out.append((who[to], kind, plain))
    return out


def test_forwarding_rewrites_per_subscriber_with_loss_and_reordering(setup):
    fw, peers = setup
    order = [1, 2, 3, 4, 5, 6, 8, 10, 9, 11, 12]  # 7 lost, 9 and 10 swapped
    sent = {s: peers["pub"].out.protect(rtp(s, marker=s == 12)) for s in order}
    out = transcript(fw, peers, [("pub", sent[s], 0.0) for s in order])
    for sub, ssrc, pt, dseq, dts in (("s1", 0x2001, 96, 0, 0), ("s2", 0x2002, 100, 1000, 90000)):
        got = [p for who, _, p in out if who == sub]
        assert [struct.unpack_from("!H", p, 2)[0] for p in got] == [s + dseq for s in order]
        for s, p in zip(order, got):
            assert struct.unpack_from("!I", p, 4)[0] == s * 3000 + dts
            assert struct.unpack_from("!I", p, 8)[0] == ssrc
            assert p[1] & 0x7F == pt and bool(p[1] & 0x80) == (s == 12)
            assert p[12:] == struct.pack("!H", s) * 50
    assert fw.stats["rtp_out"] == 2 * len(order)


def test_drops_and_their_reasons(setup):
    fw, peers = setup
    good = peers["pub"].out.protect(rtp(1))
    transcript(fw, peers, [("pub", good, 0.0)])
    assert fw.handle_rtp(good, PUB) == [] and fw.stats["drop_srtp"] == 1  # replay (RFC 3711 3.3.2)
    tampered = bytearray(peers["pub"].out.protect(rtp(2)))
    tampered[20] ^= 1
    assert fw.handle_rtp(bytes(tampered), PUB) == [] and fw.stats["drop_srtp"] == 2
    assert fw.handle_rtp(peers["pub"].out.protect(rtp(3, ssrc=0x9999)), PUB) == []
    assert fw.stats["drop_unknown_ssrc"] == 1
    assert fw.handle_rtp(peers["pub"].out.protect(rtp(4)), ("127.0.0.1", 6000)) == []  # unknown address
    fw.add_endpoint("nokeys")
    fw.set_address("nokeys", ("127.0.0.1", 6001))
    assert fw.handle_rtp(rtp(5), ("127.0.0.1", 6001)) == []  # ICE done, DTLS not: never forwarded
    assert fw.stats["drop_not_ready"] == 2
    assert fw.handle_rtp(b"\x80\x60" + b"\0" * 1600, PUB) == [] and fw.stats["drop_too_big"] == 1


def test_nack_is_answered_from_the_cache(setup):
    fw, peers = setup
    pub = peers["pub"]
    transcript(fw, peers, [("pub", pub.out.protect(rtp(s)), 0.0) for s in (1, 2, 3, 5)], lose=frozenset({("s2", 1002)}))
    # s2 sees sequence numbers shifted by 1000; it lost 1002 (we have it) and 1004 (never came).
    nack = peers["s2"].out.protect_rtcp(rtcp.nack(0x2002, [1002, 1004]))
    out = transcript(fw, peers, [("s2", nack, 1.0)])
    assert [(who, struct.unpack_from("!H", p, 2)[0]) for who, _, p in out if who == "s2"] == [("s2", 1002)]
    assert out[0][2][12:] == struct.pack("!H", 2) * 50
    assert fw.stats["nack_served"] == 1 and fw.stats["nack_missed"] == 1
    # 4 never reached us: the publisher is asked for it (by its own sequence number), once.
    upstream = [p for who, _, p in out if who == "pub"]
    assert [rtcp.nack_request(p[1], p[0] & 0x1F, p) for p in upstream] == [(PUB_SSRC, [4])]
    again = peers["s1"].out.protect_rtcp(rtcp.nack(0x2001, [4]))
    assert [who for who, _, _ in transcript(fw, peers, [("s1", again, 1.1)])] == []  # asked 100 ms ago
    later = peers["s1"].out.protect_rtcp(rtcp.nack(0x2001, [4]))
    assert [who for who, _, _ in transcript(fw, peers, [("s1", later, 1.3)])] == ["pub"]  # 300 ms: ask again
    assert fw.stats["nack_upstream"] == 2
    # The cache keeps the last NACK_CACHE packets of a track only.
    transcript(fw, peers, [("pub", pub.out.protect(rtp(s)), 0.0) for s in range(6, 6 + NACK_CACHE)])
    old = peers["s1"].out.protect_rtcp(rtcp.nack(0x2001, [2]))
    assert transcript(fw, peers, [("s1", old, 2.0)]) == []


def test_pli_and_fir_reach_the_publisher_throttled(setup):
    fw, peers = setup
    transcript(fw, peers, [("pub", peers["pub"].out.protect(rtp(1)), 0.0)])

    def pli(sub, ssrc):
        return peers[sub].out.protect_rtcp(rtcp.pli(ssrc, sender_ssrc=0x77))

    fir = struct.pack("!BBHIIIBBH", 0x80 | rtcp.FMT_FIR, rtcp.PSFB, 4, 0x77, 0, 0x2002, 1, 0, 0)
    out = transcript(fw, peers, [
        ("s1", pli("s1", 0x2001), 10.0),
        ("s2", pli("s2", 0x2002), 10.2),  # same track, inside 500 ms: throttled
        ("s2", peers["s2"].out.protect_rtcp(fir), 10.6),  # FIR after 500 ms: forwarded as a PLI
        ("s1", pli("s1", 0x3333), 11.5),  # an SSRC s1 does not receive: ignored
    ])
    assert [(who, kind) for who, kind, _ in out] == [("pub", "rtcp"), ("pub", "rtcp")]
    for _, _, p in out:
        assert struct.unpack_from("!BBHII", p) == (0x81, 206, 2, rtcp.SERVER_SSRC, PUB_SSRC)
    assert fw.stats["pli_sent"] == 2 and fw.stats["pli_throttled"] == 1


def test_a_held_keyframe_request_goes_when_its_window_ends(setup):
    """Two subscribers ready 100 ms apart: the second's request is held, not dropped, and goes
    to the publisher with its first packet once 500 ms have passed since the first request."""
    fw, peers = setup

    def pli(sub, ssrc):
        return peers[sub].out.protect_rtcp(rtcp.pli(ssrc, sender_ssrc=0x77))

    def pub(seq, now):
        return ("pub", peers["pub"].out.protect(rtp(seq)), now)

    out = transcript(fw, peers, [
        ("s1", pli("s1", 0x2001), 10.0),
        ("s2", pli("s2", 0x2002), 10.1),  # throttled: held
        pub(1, 10.2), pub(2, 10.45),  # inside the window: forwarded, nothing more
        pub(3, 10.55),  # the window has ended: the held request goes now, once
        pub(4, 10.6), pub(5, 11.2),
    ])
    to_pub = [i for i, (who, kind, _) in enumerate(out) if who == "pub"]
    assert len(to_pub) == 2 and fw.stats["pli_deferred"] == 1 and fw.stats["pli_sent"] == 2
    # The deferred one comes right after packet 3's copies: 2 PLIs, 5 packets to each of 2 subscribers.
    assert to_pub[1] == 1 + 2 * 3
    assert fw.stats["pli_throttled"] == 1


def test_removing_endpoints_and_routes(setup):
    fw, peers = setup
    fw.remove_route("pub", PUB_SSRC, "s1")
    out = transcript(fw, peers, [("pub", peers["pub"].out.protect(rtp(1)), 0.0)])
    assert [who for who, _, _ in out] == ["s2"]
    fw.remove_endpoint("s2")
    assert transcript(fw, peers, [("pub", peers["pub"].out.protect(rtp(2)), 0.0)]) == []
    # Its address and its feedback are forgotten too.
    assert fw.handle_rtp(peers["s2"].out.protect(rtp(1, ssrc=0x7777)), S2) == []
    assert fw.stats["drop_not_ready"] == 1


def test_nack_round_trip():
    lost = [10, 11, 13, 26, 27, 200]
    packet = rtcp.nack(42, lost)
    [(pt, fmt, body)] = list(rtcp.packets(packet))
    assert rtcp.nack_request(pt, fmt, body) == (42, lost)


def test_sender_reports_are_translated_per_subscriber(setup):
    fw, peers = setup
    sr = struct.pack("!BBHIIIIII", 0x80, rtcp.SR, 6, PUB_SSRC, 0xAAAA, 0xBBBB, 4000, 77, 9999)
    out = transcript(fw, peers, [("pub", peers["pub"].out.protect_rtcp(sr), 1.0)])
    got = {who: struct.unpack("!BBHIIIIII", p) for who, _, p in out}
    assert got == {
        "s1": (0x80, rtcp.SR, 6, 0x2001, 0xAAAA, 0xBBBB, 4000, 77, 9999),
        "s2": (0x80, rtcp.SR, 6, 0x2002, 0xAAAA, 0xBBBB, 4000 + 90000, 77, 9999),
    }


def test_receiver_reports_give_per_subscriber_quality(setup):
    fw, peers = setup
    block = struct.pack("!IIIIII", 0x2001, (64 << 24) | 12, 1500, 33, 0, 0)
    rr = struct.pack("!BBHI", 0x81, rtcp.RR, 7, 0x77) + block
    assert transcript(fw, peers, [("s1", peers["s1"].out.protect_rtcp(rr), 1.0)]) == []  # consumed, not forwarded
    q = fw.quality[("s1", 0x2001)]
    assert (q["fraction_lost"], q["lost"], q["jitter"], q["highest_seq"]) == (0.25, 12, 33, 1500)
    # A report about an SSRC s1 does not receive is ignored.
    other = struct.pack("!BBHI", 0x81, rtcp.RR, 7, 0x77) + struct.pack("!IIIIII", 0x5555, 0, 0, 0, 0, 0)
    transcript(fw, peers, [("s1", peers["s1"].out.protect_rtcp(other), 1.1)])
    assert ("s1", 0x5555) not in fw.quality


def test_remb_passes_the_lowest_estimate_to_the_publisher(setup):
    fw, peers = setup

    def remb(sub, ssrc, bitrate):
        return peers[sub].out.protect_rtcp(rtcp.remb(bitrate, [ssrc], sender_ssrc=0x77))

    out = transcript(fw, peers, [
        ("s1", remb("s1", 0x2001, 1_500_000), 1.0),
        ("s2", remb("s2", 0x2002, 600_000), 1.2),  # inside 500 ms: remembered, not sent
        ("s1", remb("s1", 0x2001, 2_000_000), 1.6),  # sent: the lowest is still s2's
        ("s1", remb("s1", 0x9999, 100), 2.5),  # an SSRC s1 does not receive: ignored
    ])
    sent = [rtcp.remb_request(p[1], p[0] & 0x1F, p) for who, _, p in out if who == "pub"]
    assert sent == [(1_500_000, [PUB_SSRC]), (600_000, [PUB_SSRC])]
    # Once s2 stops receiving the track, its low estimate no longer holds the publisher back.
    fw.remove_route("pub", PUB_SSRC, "s2")
    out = transcript(fw, peers, [("s1", remb("s1", 0x2001, 2_000_000), 3.0)])
    assert [rtcp.remb_request(p[1], p[0] & 0x1F, p) for _, _, p in out] == [(2_000_000, [PUB_SSRC])]


def test_of_a_video_a_far_weaker_link_is_not_followed(setup):
    fw, peers = setup
    fw.set_route("pub", PUB_SSRC, "s1", Route(ssrc=0x2001, payload_type=96, video=True))
    fw.set_route("pub", PUB_SSRC, "s2", Route(ssrc=0x2002, payload_type=100, seq_delta=1000, ts_delta=90000, video=True))

    def remb(sub, ssrc, bitrate):
        return peers[sub].out.protect_rtcp(rtcp.remb(bitrate, [ssrc], sender_ssrc=0x77))

    out = transcript(fw, peers, [
        ("s1", remb("s1", 0x2001, 1_500_000), 1.0),
        ("s2", remb("s2", 0x2002, 600_000), 1.2),
        ("s1", remb("s1", 0x2001, 1_700_000), 1.6),  # s2's is over a third of s1's: followed
        # s2's link now carries under a third of s1's: not followed (s2 falls back to audio).
        ("s1", remb("s1", 0x2001, 1_900_000), 2.6),
        ("s2", remb("s2", 0x2002, 700_000), 3.2),  # a third again
    ])
    sent = [rtcp.remb_request(p[1], p[0] & 0x1F, p)[0] for who, _, p in out if who == "pub"]
    assert sent == [1_500_000, 600_000, 1_900_000, 700_000]


def test_remb_round_trip():
    for bitrate in (0, 1, 300_000, 2_500_000, 10**9):
        packet = rtcp.remb(bitrate, [1, 2])
        got, ssrcs = rtcp.remb_request(packet[1], packet[0] & 0x1F, packet)
        assert ssrcs == [1, 2] and got <= bitrate and got >= bitrate * (1 - 2**-17)


def test_a_subscriber_that_becomes_ready_gets_keyframes_requested(setup):
    fw, peers = setup
    fw.set_route("pub", 0x4444, "s1", Route(ssrc=0x2004, payload_type=96, video=True))  # a video track
    fw.set_route("pub", 0x5555, "s1", Route(ssrc=0x2005, payload_type=111))  # audio: no keyframes
    out = fw.keyframes_for("s1", 5.0)
    [(pkt, to)] = out
    assert to == PUB
    assert struct.unpack_from("!BBHII", peers["pub"].inn.unprotect_rtcp(pkt)) == (0x81, 206, 2, rtcp.SERVER_SSRC, 0x4444)
    assert fw.keyframes_for("s1", 5.1) == []  # throttled like any PLI
    fw.add_endpoint("s3")
    assert fw.keyframes_for("s3", 9.0) == []  # not ready: nothing to ask for yet


def recorded_session(peers: dict) -> tuple[list, frozenset]:
    """A recorded sequence of datagrams with the troubles a real one has, and the packets
    lost on the way to the subscribers."""
    pub, s1, s2 = peers["pub"], peers["s1"], peers["s2"]
    inputs = []
    order = list(range(1, 40)) + [41, 40] + list(range(43, 60))  # 42 lost, 40/41 reordered
    for i, seq in enumerate(order):
        data = pub.out.protect(rtp(seq, marker=seq % 10 == 0))
        inputs.append(("pub", data, i * 0.02))
        if seq == 20:
            inputs.append(("pub", data, i * 0.02))  # a replay
    t = len(order) * 0.02
    tampered = bytearray(pub.out.protect(rtp(60)))
    tampered[-1] ^= 0xFF
    sr = struct.pack("!BBHIIIIII", 0x80, rtcp.SR, 6, PUB_SSRC, 0xAAAA, 0xBBBB, 4000, 77, 9999)
    rr = struct.pack("!BBHI", 0x81, rtcp.RR, 7, 0x77) + struct.pack("!IIIIII", 0x2002, (32 << 24) | 3, 1059, 12, 0, 0)
    inputs += [
        ("pub", bytes(tampered), t),
        ("pub", b"\x80\x60" + b"\0" * 1600, t),  # over the MTU
        ("pub", pub.out.protect(rtp(61, ssrc=0xDEAD)), t),  # unknown SSRC
        ("pub", pub.out.protect_rtcp(sr), t + 0.01),
        # s1 lost 1005 (shifted +1000 for s2) ... each subscriber asks for what it lost.
        ("s1", s1.out.protect_rtcp(rtcp.nack(0x2001, [5, 6, 42])), t + 0.02),  # 42 never came
        ("s2", s2.out.protect_rtcp(rtcp.nack(0x2002, [1005, 1030, 1031, 1033])), t + 0.03),
        ("s2", s2.out.protect_rtcp(rr + rtcp.pli(0x2002, sender_ssrc=0x77)), t + 0.04),  # compound RR + PLI
        ("s1", s1.out.protect_rtcp(rtcp.pli(0x2001, sender_ssrc=0x77)), t + 0.1),  # throttled
        ("s1", s1.out.protect_rtcp(rtcp.pli(0x2001, sender_ssrc=0x77)), t + 0.6),
        ("s2", s2.out.protect_rtcp(rtcp.pli(0x2002, sender_ssrc=0x77)), t + 0.65),  # held: sent with the RTP at t + 1.5
        ("s1", s1.out.protect_rtcp(rtcp.remb(900_000, [0x2001], sender_ssrc=0x77)), t + 0.7),
        ("s2", s2.out.protect_rtcp(rtcp.remb(400_000, [0x2002], sender_ssrc=0x77)), t + 0.8),
        ("s2", s2.out.protect_rtcp(rtcp.remb(300_000, [0x2002], sender_ssrc=0x77)), t + 1.3),
        ("s1", b"\x81\xc9\x00\x07garbage-garbage-garbage", t + 1.4),  # not SRTCP
    ]
    # s1 stops receiving, then comes back as another stream (new SSRC and offsets).
    inputs.append(lambda fw: fw.remove_route("pub", PUB_SSRC, "s1"))
    inputs += [("pub", pub.out.protect(rtp(seq)), t + 1.5) for seq in range(62, 66)]
    inputs.append(lambda fw: fw.set_route("pub", PUB_SSRC, "s1", Route(ssrc=0x3001, payload_type=97, seq_delta=-60, ts_delta=5)))
    inputs += [("pub", pub.out.protect(rtp(seq)), t + 1.6) for seq in range(66, 70)]
    inputs.append(("s1", s1.out.protect_rtcp(rtcp.nack(0x3001, [3, 4])), t + 1.7))  # 63 and 64, before it returned
    lose = frozenset({("s1", 5), ("s1", 6), ("s2", 1005), ("s2", 1030), ("s2", 1031), ("s2", 1033)})
    return inputs, lose


def run_recorded(impl: str, profile, peers: dict, steps: list, lose: frozenset) -> tuple[list, dict, dict]:
    """What one implementation puts out for a recorded sequence, with its counters and quality."""
    # The same server keys, fresh client-side receivers: each run decrypts what it gets from scratch.
    mine = {}
    for eid, peer in peers.items():
        twin = Peer.__new__(Peer)
        twin.server_keys = peer.server_keys
        twin.inn = Session(Policy(key=peer.server_keys.tx, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile.libsrtp_id))
        mine[eid] = twin
    fw, _ = build(impl, profile, mine)
    out = []
    for step in steps:
        if callable(step):
            step(fw)
        else:
            out += transcript(fw, mine, [step], lose)
    return out, dict(fw.stats), fw.quality


@pytest.mark.parametrize("profile", PROFILES, ids=[p.openssl_name.decode() for p in PROFILES])
def test_fast_path_matches_the_reference_packet_for_packet(profile):
    peers = {eid: Peer(profile) for eid in ("pub", "s1", "s2")}
    steps, lose = recorded_session(peers)
    (ref_out, ref_stats, ref_quality), (fast_out, fast_stats, fast_quality) = (
        run_recorded(impl, profile, peers, steps, lose) for impl in IMPLEMENTATIONS
    )
    assert len(ref_out) > 100 and fast_out == ref_out
    assert fast_stats == ref_stats and fast_quality == ref_quality
    # The sequence exercised what it is meant to.
    for key in ("drop_srtp", "drop_too_big", "drop_unknown_ssrc", "drop_srtcp", "nack_served", "nack_missed", "nack_upstream",
                "pli_sent", "pli_throttled", "pli_deferred", "remb_sent", "sr_forwarded"):
        assert ref_stats.get(key, 0) > 0, key
    assert ref_quality[("s2", 0x2002)]["fraction_lost"] == 0.125


# Transport-wide congestion control feedback and RTX from publishers -------------------------

def feedback_to_pub(out) -> list[bytes]:
    return [p for who, kind, p in out if who == "pub" and kind == "rtcp" and p[1] == rtcp.RTPFB and p[0] & 0x1F == twcc.FMT_TWCC]


def reported(messages: list[bytes]) -> dict[int, int | None]:
    """Transport-wide sequence number -> arrival (us) or None (reported lost), over messages."""
    got: dict[int, int | None] = {}
    for m in messages:
        base, _ref, arrivals = twcc.parse(m)
        for i, a in enumerate(arrivals):
            seq = (base + i) & 0xFFFF
            assert seq not in got, f"{seq} reported twice"
            got[seq] = a
    return got


def test_twcc_feedback_tells_the_publisher_when_each_packet_arrived(setup):
    fw, peers = setup
    fw.set_twcc("pub", TWCC_ID)
    pub = peers["pub"].out
    # Transport-wide numbers wrap, two are lost, two arrive swapped, one comes 300 ms late
    # (a large delta), and media sequence numbers are independent of them.
    plan = [(65530 + i, 10.0 + 0.004 * i) for i in range(6)]  # 65530..65535
    plan += [(0, 10.03), (1, 10.031), (3, 10.032), (2, 10.0325), (6, 10.04), (7, 10.34), (8, 10.3405)]  # 4, 5 lost
    plan += [(9 + i, 10.35 + 0.001 * i) for i in range(40)]  # a run: run-length and vector chunks
    plan.append((49, 10.5))
    inputs = [("pub", pub.protect(rtp(100 + i, twcc=tw)), now) for i, (tw, now) in enumerate(plan)]
    out = transcript(fw, peers, inputs)
    messages = feedback_to_pub(out)
    # One per 50 ms at most, sent when a packet comes: at 10.0, 10.34 and 10.5.
    assert len(messages) == fw.stats["twcc_sent"] == 3
    got = reported(messages)
    # Every packet is reported once, at its arrival to the 250 us tick; only 4 and 5 as lost.
    arrival = {tw: int(now * 1e6) for tw, now in plan}
    assert {s for s, a in got.items() if a is None} == {4, 5}
    for s, a in got.items():
        if a is not None:
            assert arrival[s] - 250 < a <= arrival[s], s
    # Feedback counts go up one by one; media still reaches both subscribers.
    assert [m[19] for m in messages] == list(range(len(messages)))
    assert sum(1 for who, kind, _ in out if kind == "rtp") == 2 * len(plan)
    # Not negotiated: no feedback.
    fw.set_twcc("pub", 0)
    assert feedback_to_pub(transcript(fw, peers, [("pub", pub.protect(rtp(500, twcc=60)), 20.0)])) == []


def test_twcc_feedback_with_many_packets_pending_stays_under_the_mtu(setup):
    fw, peers = setup
    fw.set_twcc("pub", TWCC_ID)
    pub = peers["pub"].out
    transcript(fw, peers, [("pub", pub.protect(rtp(1, twcc=1)), 5.0)])
    # 1,000 packets in 40 ms (every third lost), then one after the interval: several messages at once.
    inputs = [("pub", pub.protect(rtp(2 + i, ssrc=0x9999, twcc=2 + i)), 5.001 + i * 0.00004) for i in range(1000) if i % 3]
    inputs.append(("pub", pub.protect(rtp(5000, ssrc=0x9999, twcc=1002)), 5.06))
    out = transcript(fw, peers, inputs)
    messages = feedback_to_pub(out)
    assert len(messages) == 3 and all(len(m) <= 1200 for m in messages)
    got = reported(messages)
    assert sorted(got) == list(range(2, 1003))
    assert all((got[s] is None) == ((s - 2) % 3 == 0 and s != 1002) for s in got)
    assert fw.stats["drop_unknown_ssrc"] == len(inputs)  # unknown SSRCs (probes) are still reported


def test_rtx_repairs_a_loss_and_probes_are_not_media(setup):
    fw, peers = setup
    fw.set_rtx("pub", RTX_SSRC, PUB_SSRC)
    pub = peers["pub"].out
    out = transcript(fw, peers, [("pub", pub.protect(rtp(s)), 1.0) for s in (1, 2, 3, 5)])
    # The repair of 4 (RFC 4588: its own SSRC, payload type and sequence; the original
    # sequence number first), a repair of 2 which we have, and a padding-only probe.
    repair = rtp(900, ssrc=RTX_SSRC, pt=97, payload=struct.pack("!H", 4) + struct.pack("!H", 4) * 50, ts=4 * 3000)
    again = rtp(901, ssrc=RTX_SSRC, pt=97, payload=struct.pack("!H", 2) + struct.pack("!H", 2) * 50, ts=2 * 3000)
    probe = rtp(902, ssrc=RTX_SSRC, pt=97, payload=b"", padding=200)
    out = transcript(fw, peers, [("pub", pub.protect(p), 1.1) for p in (repair, again, probe)], lose=frozenset({("s1", 4)}))
    got = [(who, struct.unpack_from("!HI", p, 2), p[8:12], p[1] & 0x7F, p[12:]) for who, kind, p in out]
    assert got == [("s2", (1004, 4 * 3000 + 90000), struct.pack("!I", 0x2002), 100, struct.pack("!H", 4) * 50)]
    assert fw.stats["rtx_repaired"] == 1 and fw.stats["rtx_redundant"] == 1 and fw.stats["padding_in"] == 1
    assert not [k for k in fw.stats if k.startswith("drop_")]
    # The repaired packet is cached like any other: a subscriber's NACK for it is answered.
    nack = peers["s1"].out.protect_rtcp(rtcp.nack(0x2001, [4]))
    assert [(who, struct.unpack_from("!H", p, 2)[0]) for who, _, p in transcript(fw, peers, [("s1", nack, 1.2)])] == [("s1", 4)]
    # Once its endpoint is gone, an RTX SSRC means nothing.
    fw.remove_endpoint("pub")
    fw.add_endpoint("pub")
    fw.set_address("pub", PUB)
    fw.set_keys("pub", peers["pub"].server_keys)
    assert fw.handle_rtp(pub.protect(rtp(903, ssrc=RTX_SSRC, payload=struct.pack("!H", 6) * 51)), PUB, 1.3) == []
    assert fw.stats["drop_unknown_ssrc"] == 1


def test_header_extensions_are_found_in_both_forms():
    one = rtp(1, twcc=0xBEEF)
    assert rtp_ref.find_extension(one, TWCC_ID) == b"\xbe\xef" and rtp_ref.find_extension(one, 4) is None
    # Two-byte form (RFC 8285 4.3), padding between elements, and a CSRC before it.
    two = struct.pack("!BBHII", 0x91, 96, 1, 0, 1) + struct.pack("!I", 77) + struct.pack("!HH", 0x1000, 3)
    two += bytes([0, 5, 1, 0xAA, 3, 2, 0x12, 0x34, 0]) + b"\0" * 3 + b"payload"
    assert rtp_ref.find_extension(two, 3) == b"\x12\x34" and rtp_ref.find_extension(two, 5) == b"\xaa"
    assert rtp_ref.payload_offset(two) == 12 + 4 + 4 + 12 and rtp_ref.payload_length(two) == len(b"payload")
    truncated = one[:14]
    assert rtp_ref.find_extension(truncated, TWCC_ID) is None and rtp_ref.payload_offset(truncated) is None


def recorded_twcc_session(peers: dict) -> list:
    """TWCC-numbered media with loss, reordering and a pause; RTX repairs, duplicates and probes;
    feedback on and off."""
    pub, s1 = peers["pub"], peers["s1"]
    steps = [lambda fw: fw.set_twcc("pub", TWCC_ID), lambda fw: fw.set_rtx("pub", RTX_SSRC, PUB_SSRC),
             lambda fw: fw.set_rtx_out("s1", 0x2001, 0x2101, 97)]  # s1 takes its repairs as RTX
    tw, t, rtx_seq = 65000, 0.0, 1000

    def rtx(payload: bytes, padding: int = 0, ts: int = 0) -> bytes:
        nonlocal tw, rtx_seq
        tw, rtx_seq = (tw + 1) & 0xFFFF, rtx_seq + 1
        return pub.out.protect(rtp(rtx_seq, ssrc=RTX_SSRC, pt=97, payload=payload, padding=padding, twcc=tw, ts=ts))

    for seq in range(1, 120):
        tw = (tw + 1) & 0xFFFF
        t += 0.0037 if seq != 60 else 0.4  # a pause: a large delta
        if seq in (20, 21, 77):  # lost on the way to us (the RTX repairs some)
            continue
        steps.append(("pub", pub.out.protect(rtp(seq, marker=seq % 10 == 0, twcc=tw)), t))
        if seq == 30:
            steps.append(("pub", pub.out.protect(rtp(29, ssrc=0x9999, twcc=(tw - 3) & 0xFFFF)), t))  # late and unknown
        if seq in (40, 90):
            fixed, have = (20, 35) if seq == 40 else (77, 85)
            steps.append(("pub", rtx(b"", padding=224), t))  # a probe
            steps.append(("pub", rtx(struct.pack("!H", fixed) * 51, ts=fixed * 3000), t + 0.001))  # a repair
            steps.append(("pub", rtx(struct.pack("!H", have) * 51, ts=have * 3000), t + 0.002))  # one we have
    steps.append(("s1", s1.out.protect_rtcp(rtcp.nack(0x2001, [21, 110])), t + 0.01))  # 21 never came; s1 lost 110
    steps.append(lambda fw: fw.set_twcc("pub", 0))
    steps += [("pub", pub.out.protect(rtp(200 + i, twcc=i)), t + 0.1 + i * 0.06) for i in range(3)]
    return steps


@pytest.mark.parametrize("profile", PROFILES, ids=[p.openssl_name.decode() for p in PROFILES])
def test_fast_path_matches_the_reference_with_twcc_and_rtx(profile):
    peers = {eid: Peer(profile) for eid in ("pub", "s1", "s2")}
    steps = recorded_twcc_session(peers)
    ref, fast = (run_recorded(impl, profile, peers, steps, frozenset({("s1", 110)})) for impl in IMPLEMENTATIONS)
    assert len(ref[0]) > 200 and fast == ref
    for key in ("twcc_sent", "rtx_repaired", "rtx_redundant", "padding_in", "nack_served", "nack_missed", "drop_unknown_ssrc", "rtx_sent"):
        assert ref[1].get(key, 0) > 0, key
    assert reported(feedback_to_pub(ref[0]))  # the messages parse


# Simulcast: layers learnt from their packets, one per subscriber, switched on keyframes -------

MID_ID, RID_ID, RRID_ID = 4, 10, 11
TRACK = 0xABC  # what routes know the simulcast track by
LAYER_SSRCS = {"q": 0x11, "h": 0x12, "f": 0x13}


def vp8(pid: int, tl0: int, key: bool, start: bool, size: int = 60) -> bytes:
    """A VP8 payload (RFC 7741): descriptor with a 15-bit picture ID and TL0PICIDX, then the
    payload header's first byte (P bit 0 on a key frame) and filler."""
    head = bytes([0x80 | (0x10 if start else 0), 0xC0, 0x80 | (pid >> 8), pid & 0xFF, tl0 & 0xFF])
    return head + bytes([0x00 if key else 0x01]) + bytes([pid & 0xFF]) * size


def layer_rtp(rid: str, seq: int, ts: int, payload: bytes, sdes: bool = True, marker: bool = False, rrid: bool = False) -> bytes:
    """A packet of one simulcast encoding, with its mid and rid (or repaired rid) extensions as
    Chrome sends them on a stream's first packets (RFC 8852)."""
    ssrc = LAYER_SSRCS[rid] + (0x100 if rrid else 0)
    ext = b""
    if sdes:
        elements = bytes([(MID_ID << 4) | 0]) + b"1" + bytes([((RRID_ID if rrid else RID_ID) << 4) | 0]) + rid.encode()
        ext = struct.pack("!HH", 0xBEDE, 1) + elements
    first = 0x80 | (0x10 if sdes else 0)
    return struct.pack("!BBHII", first, (0x80 if marker else 0) | 96, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + ext + payload


def simulcast_build(impl, profile, peers=None, codec="VP8"):
    fw, peers = build(impl, profile, peers)
    fw.set_sdes("pub", MID_ID, RID_ID, RRID_ID)
    fw.add_simulcast("pub", TRACK, "1", ["q", "h", "f"], codec)
    fw.set_route("pub", TRACK, "s1", Route(ssrc=0x3001, payload_type=96, video=True, layer=0))
    fw.set_route("pub", TRACK, "s2", Route(ssrc=0x3002, payload_type=98, seq_delta=500, ts_delta=7, video=True, layer=2))
    return fw, peers


def simulcast_frames(pub, frames: range, t0: float, key_every: dict) -> list:
    """Each layer sends one frame of two packets every 33 ms; its own sequence numbers,
    timestamps and picture IDs; keyframes every ``key_every[rid]`` frames."""
    steps = []
    base = {"q": (100, 1000, 10), "h": (2000, 50000, 3000), "f": (40000, 900000, 20000)}
    for i in frames:
        for rid in ("q", "h", "f"):
            seq0, ts0, pid0 = base[rid]
            key = i % key_every[rid] == 0
            for part in range(2):
                data = layer_rtp(rid, seq0 + 2 * i + part, ts0 + 3000 * i, vp8(pid0 + i, i // 4, key, part == 0),
                                 sdes=i < 3, marker=part == 1)
                steps.append(("pub", pub.out.protect(data), t0 + 0.033 * i))
    return steps


def rtp_of(out, who):
    return [p for w, kind, p in out if w == who and kind == "rtp"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_simulcast_each_subscriber_gets_one_layer_and_switches_on_a_keyframe(impl):
    fw, peers = simulcast_build(impl, PROFILES[0])
    keys = {"q": 5, "h": 5, "f": 7}
    out = transcript(fw, peers, simulcast_frames(peers["pub"], range(0, 10), 1.0, keys))
    assert fw.stats["layers_found"] == 3
    s1, s2 = rtp_of(out, "s1"), rtp_of(out, "s2")
    # Each gets its layer only, from that layer's first keyframe (frame 0 here).
    assert {struct.unpack_from("!I", p, 8)[0] for p in s1} == {0x3001} and len(s1) == 20
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in s1]
    assert seqs == list(range(100, 120))  # q's own numbers: it was the first it got
    # s2 asked for f, which had not been seen yet: q's first frame (the only layer sent so far),
    # then h's, then f's from its first keyframe, as one stream.
    assert [struct.unpack_from("!H", p, 2)[0] for p in s2] == [600 + i for i in range(24)]
    assert [p[-1] for p in s2][::2] == [10, 3000 & 0xFF] + [(20000 + i) & 0xFF for i in range(10)]
    # s1 asks for the full layer: a keyframe is asked of it, and s1 stays on q until it comes.
    asked = fw.set_layer("pub", TRACK, "s1", 2, 1.4)
    assert [struct.unpack_from("!I", peers["pub"].inn.unprotect_rtcp(p), 8)[0] for p, _ in asked] == [LAYER_SSRCS["f"]]
    out = transcript(fw, peers, simulcast_frames(peers["pub"], range(10, 16), 1.0, keys))
    s1 = rtp_of(out, "s1")
    offsets = [rtp_ref.payload_offset(p) for p in s1]
    # q's frames 10-14 (each layer's frame 14 comes at once, q's first), then f's from its
    # keyframe, frame 14, on.
    assert len(s1) == 2 * 5 + 2 * 2 and fw.stats["layer_switches"] == 5  # s1: q, f; s2: q, h, f
    assert [p[-1] for p in s1][::2] == [(10 + i) & 0xFF for i in range(10, 15)] + [(20000 + i) & 0xFF for i in (14, 15)]
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in s1]
    assert seqs == list(range(120, 134))  # one stream: no gap, no repeat across the switch
    stamps = [struct.unpack_from("!I", p, 4)[0] for p in s1]
    assert stamps == sorted(stamps) and stamps[10] > stamps[9]
    pids = [((p[o + 2] & 0x7F) << 8) | p[o + 3] for p, o in zip(s1, offsets)]
    tl0s = [p[o + 4] for p, o in zip(s1, offsets)]
    assert pids[::2] == list(range(20, 27)) and tl0s[::2] == [2, 2, 3, 3, 3, 4, 4]  # picture IDs go on
    # Routed again as it is (a renegotiation does that): the stream goes on, no jump.
    fw.set_route("pub", TRACK, "s1", Route(ssrc=0x3001, payload_type=96, video=True, layer=2))
    out = transcript(fw, peers, simulcast_frames(peers["pub"], range(16, 17), 1.0, keys))
    assert [struct.unpack_from("!H", p, 2)[0] for p in rtp_of(out, "s1")] == [seqs[-1] + 1, seqs[-1] + 2]
    # A NACK for a packet of the old layer is not answered from the new layer's cache.
    nack = peers["s1"].out.protect_rtcp(rtcp.nack(0x3001, [seqs[3], seqs[11]]))  # q's, then f's
    sent = fw.handle_rtcp(nack, S1, 2.0)
    assert [struct.unpack_from("!H", p, 2)[0] for p, to in sent] == [seqs[11]] and sent[0][1] == S1
    assert fw.stats["nack_missed"] == 1 and fw.stats["nack_served"] == 1 and fw.stats["nack_upstream"] == 0
    # The REMB of a subscriber of a simulcast track is not passed on: layers serve it instead.
    remb = peers["s1"].out.protect_rtcp(rtcp.remb(100_000, [0x3001], sender_ssrc=0x77))
    assert transcript(fw, peers, [("s1", remb, 2.1)]) == [] and fw.stats["remb_sent"] == 0
    # A PLI from s2 asks f for a keyframe; a sender report of f goes to both (now both on f).
    pli = peers["s2"].out.protect_rtcp(rtcp.pli(0x3002, sender_ssrc=0x77))
    [(who, kind, p)] = transcript(fw, peers, [("s2", pli, 3.0)])
    assert who == "pub" and struct.unpack_from("!I", p, 8)[0] == LAYER_SSRCS["f"]
    sr = struct.pack("!BBHIIIIII", 0x80, rtcp.SR, 6, LAYER_SSRCS["f"], 1, 2, 900000, 5, 6)
    got = transcript(fw, peers, [("pub", peers["pub"].out.protect_rtcp(sr), 3.1)])
    assert sorted(who for who, _, _ in got) == ["s1", "s2"]


def h264(nals: list[bytes], stap: bool = False, fu: tuple[int, bool] | None = None) -> bytes:
    """An H264 payload (RFC 6184): one NAL unit, a STAP-A of several, or an FU-A fragment
    (type, start) of a slice."""
    if fu is not None:
        nal_type, start = fu
        return bytes([0x60 | 28, (0x80 if start else 0) | nal_type]) + b"\x11" * 40
    if stap:
        return bytes([0x78]) + b"".join(struct.pack("!H", len(n)) + n for n in nals)
    return nals[0]


SPS, PPS, IDR, SLICE = b"\x67" + b"\x42" * 8, b"\x68" + b"\xce" * 3, b"\x65" + b"\x88" * 30, b"\x41" + b"\x9a" * 30


def test_where_keyframes_start():
    assert codecs.h264_keyframe_start(h264([SPS])) and codecs.h264_keyframe_start(h264([SPS, PPS], stap=True))
    assert codecs.h264_keyframe_start(h264([PPS, IDR], stap=True)) and codecs.h264_keyframe_start(h264([], fu=(5, True)))
    assert not codecs.h264_keyframe_start(h264([], fu=(5, False))) and not codecs.h264_keyframe_start(h264([SLICE]))
    assert not codecs.h264_keyframe_start(h264([PPS], stap=True)) and not codecs.h264_keyframe_start(b"\x78\x00\x40\x67")
    assert codecs.vp8_keyframe_start(vp8(1, 1, key=True, start=True))
    assert not codecs.vp8_keyframe_start(vp8(1, 1, key=True, start=False)) and not codecs.vp8_keyframe_start(vp8(1, 1, key=False, start=True))
    assert not codecs.vp8_keyframe_start(b"\x90\xc0\x80")  # cut inside its descriptor
    assert codecs.vp9_keyframe_start(b"\x88\x80\x01") and not codecs.vp9_keyframe_start(b"\xc8\x80\x01")
    assert not codecs.vp9_keyframe_start(b"\x84\x80\x01")  # a keyframe's later packet
    vp9 = bytearray(b"\0" * 12 + b"\x88\xff\xfe")  # 15-bit picture ID 0x7ffe
    codecs.rewrite_picture(codecs.CODEC_VP9, vp9, 12, 3, 0)
    assert codecs.picture(codecs.CODEC_VP9, bytes(vp9[12:])) == (1, -1)
    short = bytes([0x90, 0x80, 0x05, 0x00])  # 7-bit picture ID 5
    assert codecs.vp8_picture(short) == (5, -1)
    packet = bytearray(b"\0" * 12 + short)
    codecs.vp8_rewrite(packet, 12, 0x7FFE, 9)
    assert codecs.vp8_picture(bytes(packet[12:])) == (3, -1)  # modulo 128


def recorded_simulcast_session(peers: dict, codec: str) -> tuple[list, frozenset]:
    """Three layers with loss and reordering, keyframes at different times, subscribers moved
    up and down, RTX repairs learnt from their repaired rid, feedback, a route that goes and
    comes back."""
    pub, s1, s2 = peers["pub"], peers["s1"], peers["s2"]
    steps: list = []
    base = {"q": (100, 1000, 10), "h": (2000, 50000, 3000), "f": (65500, 900000, 32760)}  # f's numbers wrap
    every = {"q": 4, "h": 5, "f": 6}
    t = 1.0

    def payload(rid, i, part):
        key = i % every[rid] == 0
        if codec == "VP8":
            return vp8(base[rid][2] + i, i // 3, key, part == 0)
        if codec == "VP9":  # RFC 9628: I, P (not on a keyframe), B (a frame's first packet), E; 15-bit picture ID
            pid = (base[rid][2] + i) & 0x7FFF
            return bytes([0x80 | (0 if key else 0x40) | (0x08 if part == 0 else 0x04), 0x80 | pid >> 8, pid & 0xFF]) + b"\x55" * 50
        if key:
            return h264([SPS, PPS], stap=True) if part == 0 else h264([], fu=(5, True))
        return h264([], fu=(1, part == 0))

    for i in range(40):
        t += 0.033
        if i == 8:
            steps.append(lambda fw: fw.set_layer("pub", TRACK, "s1", 1, 1.3))
        if i == 15:
            steps.append(lambda fw: fw.set_layer("pub", TRACK, "s2", 0, 1.5))
        if i == 17:  # routed again as it is (a renegotiation): it goes on where it was
            steps.append(lambda fw: fw.set_route("pub", TRACK, "s1", Route(ssrc=0x3001, payload_type=96, video=True, layer=1)))
        if i == 12:  # s2's link carries h at most (it asked for f)
            steps.append(lambda fw: fw.set_cap("pub", TRACK, "s2", 1, 1.4))
        if i == 22:
            steps.append(lambda fw: fw.set_layer("pub", TRACK, "s1", 2, 1.75))
        if i == 28:  # s1's video paused (audio fallback), then back, from f's next keyframe (i = 36)
            steps.append(lambda fw: fw.set_cap("pub", TRACK, "s1", -1, 1.95))
        if i == 34:
            steps.append(lambda fw: fw.set_cap("pub", TRACK, "s1", 2, 2.15))
        if i == 26:
            steps.append(lambda fw: fw.remove_route("pub", TRACK, "s2"))
        if i == 30:
            steps.append(lambda fw: fw.set_route("pub", TRACK, "s2", Route(ssrc=0x4002, payload_type=96, video=True, layer=1)))
        for rid in ("q", "h", "f"):
            seq0, ts0, _ = base[rid]
            order = (1, 0) if (i, rid) == (12, "h") else (0, 1)  # reordered
            for part in order:
                if (i, rid, part) in {(5, "q", 1), (18, "f", 0), (33, "h", 1)}:
                    continue  # lost on the way to us
                data = layer_rtp(rid, seq0 + 2 * i + part, ts0 + 3000 * i, payload(rid, i, part), sdes=i < 2, marker=part == 1)
                steps.append(("pub", pub.out.protect(data), t))
        if i == 20:  # the repair of f's lost packet, on f's RTX stream (learnt from its repaired rid)
            lost = (base["f"][0] + 2 * 18) & 0xFFFF
            repair = layer_rtp("f", 7000, base["f"][1] + 3000 * 18, struct.pack("!H", lost) + payload("f", 18, 0), rrid=True)
            steps.append(("pub", pub.out.protect(repair), t))
        if i in (10, 25, 35):
            steps.append(("s1", s1.out.protect_rtcp(rtcp.pli(0x3001, sender_ssrc=0x77)), t))
            steps.append(("s2", s2.out.protect_rtcp(rtcp.remb(300_000, [0x3002], sender_ssrc=0x77)), t))
            for rid in ("q", "f"):
                sr = struct.pack("!BBHIIIIII", 0x80, rtcp.SR, 6, LAYER_SSRCS[rid], 1, i, base[rid][1] + 3000 * i, i, i)
                steps.append(("pub", pub.out.protect_rtcp(sr), t))
    steps.append(("s1", s1.out.protect_rtcp(rtcp.nack(0x3001, [150, 151, 160, 170])), t + 0.01))
    steps.append(("pub", pub.out.protect(rtp(9, ssrc=TRACK)), t + 0.02))  # the track's own SSRC names no stream
    return steps, frozenset({("s1", 150), ("s1", 151), ("s1", 160), ("s1", 170)})


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_capped_or_paused_subscriber_gets_less_and_resumes_from_a_keyframe(impl):
    fw, peers = simulcast_build(impl, PROFILES[0])
    keys = {"q": 5, "h": 5, "f": 5}
    transcript(fw, peers, simulcast_frames(peers["pub"], range(0, 5), 1.0, keys))
    # s2 asked for f; its link carries h at most: h from h's next keyframe.
    asked = fw.set_cap("pub", TRACK, "s2", 1, 1.2)
    assert [struct.unpack_from("!I", peers["pub"].inn.unprotect_rtcp(p), 8)[0] for p, _ in asked] == [LAYER_SSRCS["h"]]
    out = transcript(fw, peers, simulcast_frames(peers["pub"], range(5, 8), 1.0, keys))
    assert [p[-1] for p in rtp_of(out, "s2")][::2] == [3005 & 0xFF, 3006 & 0xFF, 3007 & 0xFF]
    last = struct.unpack_from("!H", rtp_of(out, "s2")[-1], 2)[0]
    # Paused (audio fallback): nothing for s2, s1 goes on; no keyframe is asked for it.
    assert fw.set_cap("pub", TRACK, "s2", -1, 1.3) == []
    out = transcript(fw, peers, simulcast_frames(peers["pub"], range(8, 12), 1.0, keys))
    assert rtp_of(out, "s2") == [] and len(rtp_of(out, "s1")) == 8
    # Back on f (under what it asked for): asked at once, sent from f's keyframe (frame 15),
    # its numbers going on from the last packet it got before the pause.
    asked = fw.set_cap("pub", TRACK, "s2", 2, 1.45)
    assert [struct.unpack_from("!I", peers["pub"].inn.unprotect_rtcp(p), 8)[0] for p, _ in asked] == [LAYER_SSRCS["f"]]
    out = transcript(fw, peers, simulcast_frames(peers["pub"], range(12, 17), 1.0, keys))
    s2 = rtp_of(out, "s2")
    assert [p[-1] for p in s2][::2] == [(20000 + i) & 0xFF for i in (15, 16)]
    assert [struct.unpack_from("!H", p, 2)[0] for p in s2] == [last + 1 + i for i in range(4)]
    # What each layer brought in, and what subscribers estimate, for the adaptation to read.
    sizes = fw.layer_bytes()[("pub", TRACK)]
    assert len(sizes) == 3 and all(b == sizes[0] for b in sizes) and sizes[0] >= 17 * 2 * 12  # 17 frames of 2 packets each
    remb = peers["s2"].out.protect_rtcp(rtcp.remb(250_000, [0x3002], sender_ssrc=0x77))
    transcript(fw, peers, [("s2", remb, 2.0)])
    assert fw.subscriber_estimates() == {"s2": {("pub", TRACK): 250_000}}


@pytest.mark.parametrize("codec", ["VP8", "H264", "VP9"])
@pytest.mark.parametrize("profile", PROFILES, ids=[p.openssl_name.decode() for p in PROFILES])
def test_fast_path_matches_the_reference_with_simulcast(profile, codec):
    peers = {eid: Peer(profile) for eid in ("pub", "s1", "s2")}
    steps, lose = recorded_simulcast_session(peers, codec)
    runs = []
    for impl in IMPLEMENTATIONS:
        setup_steps = [
            lambda fw: fw.set_sdes("pub", MID_ID, RID_ID, RRID_ID),
            lambda fw: fw.add_simulcast("pub", TRACK, "1", ["q", "h", "f"], codec),
            lambda fw: fw.set_route("pub", TRACK, "s1", Route(ssrc=0x3001, payload_type=96, video=True, layer=0)),
            lambda fw: fw.set_route("pub", TRACK, "s2", Route(ssrc=0x3002, payload_type=98, seq_delta=500, video=True, layer=2)),
            lambda fw: fw.set_rtx_out("s1", 0x3001, 0x3101, 97),
        ]
        runs.append(run_recorded(impl, profile, peers, setup_steps + steps, lose))
    ref, fast = runs
    assert len(ref[0]) > 120 and fast == ref
    for key in ("layers_found", "layer_switches", "rtx_repaired", "pli_sent", "sr_forwarded", "nack_served", "nack_missed"):
        assert ref[1].get(key, 0) > 0, key
    assert ref[1].get("remb_sent", 0) == 0
    assert ref[1]["layer_switches"] >= 5


def test_nacks_are_answered_with_rtx_where_the_subscriber_takes_it(setup):
    fw, peers = setup
    fw.set_rtx_out("s2", 0x2002, 0x2102, 97)
    pub = peers["pub"]
    transcript(fw, peers, [("pub", pub.out.protect(rtp(s)), 0.0) for s in (1, 2, 3, 4, 5, 6)],
               lose=frozenset({("s1", 2), ("s2", 1002)}))  # (six sent: room for three repairs, see RTX_BURST)
    out = transcript(fw, peers, [
        ("s1", peers["s1"].out.protect_rtcp(rtcp.nack(0x2001, [2])), 1.0),
        ("s2", peers["s2"].out.protect_rtcp(rtcp.nack(0x2002, [1002, 1003])), 1.0),
    ], lose=frozenset({("s2", 2)}))  # the second repair's own number (RTX 2) lost on the way
    got = {who: p for who, kind, p in out if kind == "rtp"}
    # s1 took no RTX: the original again. s2: RFC 4588, its own SSRC, payload type and numbers,
    # the original sequence number (as s2 sees it) first, then the same payload.
    assert struct.unpack_from("!HII", got["s1"], 2) == (2, 2 * 3000, 0x2001) and got["s1"][12:] == struct.pack("!H", 2) * 50
    rtx = got["s2"]
    assert rtx[1] & 0x7F == 97 and struct.unpack_from("!HII", rtx, 2) == (1, 2 * 3000 + 90000, 0x2102)
    assert rtx[12:14] == struct.pack("!H", 1002) and rtx[14:] == struct.pack("!H", 2) * 50
    assert fw.stats["rtx_sent"] == 2 and fw.stats["nack_served"] == 3
    # Turned off again: originals (s2 has 1001 already: its header is read in the clear here).
    fw.set_rtx_out("s2", 0x2002, 0, 0)
    sent = fw.handle_rtcp(peers["s2"].out.protect_rtcp(rtcp.nack(0x2002, [1001])), S2, 2.0)
    assert [struct.unpack_from("!HI", p, 2) for p, _ in sent] == [(1001, 1 * 3000 + 90000)] and fw.stats["rtx_sent"] == 2


def test_repairs_are_at_most_half_of_what_a_subscriber_is_sent(setup):
    """On a link that loses much, NACKs come for much, again and again: each subscriber's repairs
    are held to half the bytes of what it was sent (with a burst), the rest is not answered."""
    fw, peers = setup
    pub = peers["pub"]
    transcript(fw, peers, [("pub", pub.out.protect(rtp(s)), 0.0) for s in range(1, 11)],
               lose=frozenset({("s1", s) for s in range(1, 11)}))
    sent = fw.handle_rtcp(peers["s1"].out.protect_rtcp(rtcp.nack(0x2001, list(range(1, 11)))), S1, 1.0)
    assert len(sent) == 5 and fw.stats["nack_served"] == 5 and fw.stats["nack_throttled"] == 5
    assert fw.stats.get("nack_upstream", 0) == 0  # (we have them: nothing to ask the publisher)
    again = fw.handle_rtcp(peers["s1"].out.protect_rtcp(rtcp.nack(0x2001, [9, 10])), S1, 1.1)
    assert again == []  # nothing sent since: no room
    transcript(fw, peers, [("pub", pub.out.protect(rtp(s)), 1.2) for s in range(11, 15)])
    assert len(fw.handle_rtcp(peers["s1"].out.protect_rtcp(rtcp.nack(0x2001, [9, 10])), S1, 1.3)) == 2
    # s2 has its own room.
    assert len(fw.handle_rtcp(peers["s2"].out.protect_rtcp(rtcp.nack(0x2002, [1001, 1002])), S2, 1.4)) == 2


# A video sent as one stream: paused and resumed per subscriber (audio fallback) ---------------

def single_frames(pub, frames: range, t0: float, key_every: int, seq0: int = 100) -> list:
    """A VP8 camera sent as one stream: a frame of two packets every 33 ms, a keyframe every
    ``key_every`` frames, its sequence numbers from ``seq0`` (wrapping)."""
    steps = []
    for i in frames:
        for part in range(2):
            data = rtp((seq0 + 2 * i + part) & 0xFFFF, payload=vp8(10 + i, i // 4, i % key_every == 0, part == 0),
                       marker=part == 1, ts=3000 * i)
            steps.append(("pub", pub.out.protect(data), t0 + 0.033 * i))
    return steps


def single_build(impl, profile, peers=None):
    fw, peers = build(impl, profile, peers)
    fw.set_codec("pub", PUB_SSRC, "VP8")
    fw.set_route("pub", PUB_SSRC, "s1", Route(ssrc=0x2001, payload_type=96, video=True))
    fw.set_route("pub", PUB_SSRC, "s2", Route(ssrc=0x2002, payload_type=100, seq_delta=1000, ts_delta=90000, video=True))
    return fw, peers


def seqs_of(packets) -> list[int]:
    return [struct.unpack_from("!H", p, 2)[0] for p in packets]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_video_sent_as_one_stream_pauses_for_one_subscriber_and_resumes_at_a_keyframe(impl):
    fw, peers = single_build(impl, PROFILES[0])
    out = transcript(fw, peers, single_frames(peers["pub"], range(0, 5), 1.0, 6))
    last = seqs_of(rtp_of(out, "s2"))[-1]
    assert last == 100 + 9 + 1000
    # Paused: s2 gets nothing of it, s1 all; nothing is asked of the publisher for that.
    assert fw.set_cap("pub", PUB_SSRC, "s2", -1, 1.2) == []
    out = transcript(fw, peers, single_frames(peers["pub"], range(5, 10), 1.0, 6))
    assert rtp_of(out, "s2") == [] and len(rtp_of(out, "s1")) == 10
    # Its estimate no longer sets the publisher's pace while paused.
    low = peers["s2"].out.protect_rtcp(rtcp.remb(100_000, [0x2002], sender_ssrc=0x77))
    high = peers["s1"].out.protect_rtcp(rtcp.remb(250_000, [0x2001], sender_ssrc=0x77))
    out = transcript(fw, peers, [("s2", low, 1.3), ("s1", high, 1.4)])
    assert [rtcp.remb_request(p[1], p[0] & 0x1F, p)[0] for w, _, p in out if w == "pub"] == [250_000]
    # On again: a keyframe is asked for at once; the delta frames before it are not sent to s2,
    # which starts at the keyframe (frame 12) with its numbers going on from its last packet.
    asked = fw.set_cap("pub", PUB_SSRC, "s2", 0, 1.45)
    assert [struct.unpack_from("!I", peers["pub"].inn.unprotect_rtcp(p), 8)[0] for p, _ in asked] == [PUB_SSRC]
    assert fw.set_cap("pub", PUB_SSRC, "s2", 0, 1.46) == []  # (already on: nothing more)
    out = transcript(fw, peers, single_frames(peers["pub"], range(10, 15), 1.0, 6))
    s2 = rtp_of(out, "s2")
    assert seqs_of(s2) == [last + 1 + i for i in range(6)] and len(rtp_of(out, "s1")) == 10
    assert s2[0][12 + 5] == 0x00 and s2[0][12] & 0x10  # a keyframe's first packet (S bit, P bit 0)
    stamps = [struct.unpack_from("!I", p, 4)[0] for p in s2]
    assert stamps[0] > 90000 + 3000 * 4 and stamps == sorted(stamps)
    assert fw.stats["video_resumed"] == 1
    # s2 missed frames 5-11 while paused: a NACK for its numbers from before the pause is not
    # answered (they name other packets now), one for a packet since is.
    nack = peers["s2"].out.protect_rtcp(rtcp.nack(0x2002, [last, last + 2]))
    sent = fw.handle_rtcp(nack, S2, 2.0)
    assert seqs_of([p for p, _ in sent]) == [last + 2]  # (the header is in the clear)
    # Routed again as it is (a renegotiation): the stream goes on, no jump.
    fw.set_route("pub", PUB_SSRC, "s2", Route(ssrc=0x2002, payload_type=100, video=True))
    out = transcript(fw, peers, single_frames(peers["pub"], range(15, 16), 1.0, 6))
    assert seqs_of(rtp_of(out, "s2")) == [last + 7, last + 8]
    # What it brings in, for the adaptation's rates.
    assert fw.layer_bytes()[("pub", PUB_SSRC)][0] >= 16 * 2 * 60


def test_audio_routes_and_unknown_tracks_are_never_paused():
    for impl in IMPLEMENTATIONS:
        fw, peers = build(impl, PROFILES[0])  # (build's routes are not video: audio-like)
        assert fw.set_cap("pub", PUB_SSRC, "s1", -1, 1.0) == [] and fw.set_cap("pub", 0x4444, "s1", -1, 1.0) == []
        out = transcript(fw, peers, [("pub", peers["pub"].out.protect(rtp(5)), 1.1)])
        assert sorted(w for w, _, _ in out) == ["s1", "s2"], impl


@pytest.mark.parametrize("profile", PROFILES, ids=[p.openssl_name.decode() for p in PROFILES])
def test_fast_path_matches_the_reference_pausing_a_video_sent_as_one_stream(profile):
    peers = {eid: Peer(profile) for eid in ("pub", "s1", "s2")}
    pub, s2 = peers["pub"], peers["s2"]
    steps = [
        lambda fw: fw.set_codec("pub", PUB_SSRC, "VP8"),
        lambda fw: fw.set_route("pub", PUB_SSRC, "s1", Route(ssrc=0x2001, payload_type=96, video=True)),
        lambda fw: fw.set_route("pub", PUB_SSRC, "s2", Route(ssrc=0x2002, payload_type=100, seq_delta=7, video=True)),
    ]
    steps += single_frames(pub, range(0, 6), 1.0, 5, seq0=65500)  # its numbers wrap
    steps.append(lambda fw: fw.set_cap("pub", PUB_SSRC, "s2", -1, 1.2))
    steps += single_frames(pub, range(6, 9), 1.0, 5, seq0=65500)
    steps.append(lambda fw: fw.set_cap("pub", PUB_SSRC, "s2", 0, 1.3))
    steps += single_frames(pub, range(9, 17), 1.0, 5, seq0=65500)  # waits 6 frames, asks again
    steps.append(("s2", s2.out.protect_rtcp(rtcp.nack(0x2002, [65500 + 7 + 3, 65500 + 7 + 12])), 1.7))
    steps.append(("s2", s2.out.protect_rtcp(rtcp.remb(90_000, [0x2002], sender_ssrc=0x77)), 1.8))
    steps.append(("s1", peers["s1"].out.protect_rtcp(rtcp.remb(200_000, [0x2001], sender_ssrc=0x77)), 2.4))
    steps.append(lambda fw: fw.set_cap("pub", PUB_SSRC, "s2", -1, 2.5))
    steps.append(("s1", peers["s1"].out.protect_rtcp(rtcp.remb(200_000, [0x2001], sender_ssrc=0x77)), 3.0))
    lose = frozenset({("s2", 65500 + 7 + 12)})  # the first packet after the resume, asked for again
    ref, fast = (run_recorded(impl, profile, peers, steps, lose) for impl in IMPLEMENTATIONS)
    assert len(ref[0]) > 40 and fast == ref
    for key in ("video_resumed", "nack_missed", "nack_served", "remb_sent", "pli_sent"):
        assert ref[1].get(key, 0) > 0, key
