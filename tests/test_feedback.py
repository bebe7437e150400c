"""Transport-wide feedback from subscribers (issue 12, part 3): every packet to a subscriber
that takes transport-cc carries our own sequence number (its only header extension), and the
subscriber's feedback is paired with when each packet left and how big it was, in both
implementations alike, for its bandwidth estimate."""

from __future__ import annotations

import struct

import pytest

from mediaserver.media import rtcp, twcc
from mediaserver.media.feedback import Result
from mediaserver.media.rtp import find_extension, payload_offset
from mediaserver.media.srtp import PROFILES
from test_forwarder import IMPLEMENTATIONS, PUB_SSRC, S1, S2, Peer, build, rtp, transcript
from test_temporal import recorded_temporal_session, run_raw

OUR_ID = 5


def feedback_from(sub, seqs_arrivals: list[tuple[int, float | None]], media_ssrc: int = 0x2001) -> bytes:
    """A subscriber's feedback message (as Chrome would send it) for our numbers: arrival in
    seconds, or None for lost; protected with the subscriber's keys."""
    tw = twcc.Twcc(OUR_ID)
    for seq, arrival in seqs_arrivals:
        if arrival is not None:
            tw.record(seq, arrival)
    tw.base = seqs_arrivals[0][0]  # (lost ones at the start are reported lost too)
    msg = tw.feedback(media_ssrc, 0.0)
    return sub.out.protect_rtcp(msg)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_each_subscribers_results_are_its_own(impl):
    """Two subscribers taking transport-cc, each with feedback of its own: one call returns
    each one's results, in its order, and none of the other's."""
    fw, peers = build(impl, PROFILES[0])
    fw.set_twcc_out("s1", OUR_ID)
    fw.set_twcc_out("s2", OUR_ID)
    transcript(fw, peers, [("pub", peers["pub"].out.protect(rtp(10 + i)), 1.0 + i * 0.01) for i in range(4)])
    fw.handle_rtcp(feedback_from(peers["s1"], [(1, 2.000), (2, 2.002), (3, None), (4, 2.031)]), S1, 1.2)
    fw.handle_rtcp(feedback_from(peers["s2"], [(1, None), (2, 5.000)]), S2, 1.3)
    got = fw.twcc_results()
    assert sorted(got) == ["s1", "s2"]
    assert [(x.seq, x.arrival is None, x.reported) for x in got["s1"]] == [(1, False, 1.2), (2, False, 1.2), (3, True, 1.2), (4, False, 1.2)]
    assert [(x.seq, x.arrival is None, x.reported) for x in got["s2"]] == [(1, True, 1.3), (2, False, 1.3)]
    assert fw.twcc_results() == {}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_our_numbers_replace_the_publishers_extensions_and_feedback_is_paired(impl):
    fw, peers = build(impl, PROFILES[0])
    fw.set_twcc_out("s1", OUR_ID)
    steps = [("pub", peers["pub"].out.protect(rtp(10 + i, twcc=500 + i)), 1.0 + i * 0.01) for i in range(4)]
    steps.append(("pub", peers["pub"].out.protect(rtp(14)), 1.04))  # (one without an extension of its own)
    out = transcript(fw, peers, steps)
    s1 = [p for w, _, p in out if w == "s1"]
    s2 = [p for w, _, p in out if w == "s2"]
    assert [struct.unpack("!H", find_extension(p, OUR_ID))[0] for p in s1] == [1, 2, 3, 4, 5]
    assert all(find_extension(p, 3) is None and p[12:16] == b"\xbe\xde\x00\x01" for p in s1)  # ours alone
    assert [p[payload_offset(p):] for p in s1] == [p[payload_offset(p):] for p in s2]  # the payload as it was
    assert [find_extension(p, 3) for p in s2][:4] == [struct.pack("!H", 500 + i) for i in range(4)]  # s2: untouched
    # s1 says 1, 2 and 4 arrived (3 lost); 5 is not in this message.
    fw.handle_rtcp(feedback_from(peers["s1"], [(1, 2.000), (2, 2.002), (3, None), (4, 2.031)]), S1, 1.2)
    got = fw.twcc_results()
    assert list(got) == ["s1"]
    r = got["s1"]
    assert [x.seq for x in r] == [1, 2, 3, 4] and [x.arrival is None for x in r] == [False, False, True, False]
    assert [round(x.sent, 3) for x in r] == [1.0, 1.01, 1.02, 1.03] and all(x.reported == 1.2 for x in r)
    assert r[1].arrival - r[0].arrival == pytest.approx(0.002, abs=0.0003) and r[3].arrival - r[1].arrival == pytest.approx(0.029, abs=0.0003)  # (250 us ticks)
    assert len({x.size for x in r}) == 1 and r[0].size > 100  # as sent, SRTP included
    assert fw.twcc_results() == {}  # taken
    assert fw.stats["twcc_in"] == 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_malformed_or_foreign_feedback_is_not_read(impl):
    fw, peers = build(impl, PROFILES[0])
    fw.set_twcc_out("s1", OUR_ID)
    transcript(fw, peers, [("pub", peers["pub"].out.protect(rtp(10)), 1.0)])
    msg = twcc.Twcc(OUR_ID)
    msg.record(1, 1.0)
    plain = msg.feedback(0x2001, 1.0)
    # Cut short, without its chunks, claiming 65,535 statuses: each refused whole.
    for bad in (plain[:-4], plain[:20], plain[:14] + b"\xff\xff" + plain[16:]):
        fixed = bytearray(bad)
        fixed[2:4] = struct.pack("!H", len(bad) // 4 - 1)  # (a header that fits what is there)
        fw.handle_rtcp(peers["s1"].out.protect_rtcp(bytes(fixed)), S1, 1.1)
    assert fw.twcc_results() == {} and fw.stats["drop_twcc_malformed"] == 3
    # Feedback from an endpoint that takes none, or about numbers we never sent: nothing.
    fw.handle_rtcp(peers["s2"].out.protect_rtcp(plain), ("127.0.0.1", 5002), 1.2)
    msg = twcc.Twcc(OUR_ID)
    msg.record(900, 1.0)
    fw.handle_rtcp(peers["s1"].out.protect_rtcp(msg.feedback(0x2001, 1.0)), S1, 1.3)
    assert fw.twcc_results() == {}


@pytest.mark.parametrize("profile", PROFILES, ids=[p.openssl_name.decode() for p in PROFILES])
def test_fast_path_matches_the_reference_numbering_for_a_subscriber(profile):
    """The recorded session with temporal layers (drops, late packets, repairs, NACKs answered
    as RTX, a pause), s1 taking transport-cc: the same datagrams and the same results."""
    peers = {eid: Peer(profile) for eid in ("pub", "s1", "s2")}
    steps, _ = recorded_temporal_session(peers)
    steps = [lambda fw: fw.set_twcc_out("s1", OUR_ID), lambda fw: fw.set_rtx_out("s1", 0x2001, 0x2101, 97)] + steps
    for k in range(1, 120, 30):  # its feedback every so often, some lost, about what it got
        steps.append(("s1", feedback_from(peers["s1"], [(k + i, None if i % 7 == 3 else 3.0 + (k + i) * 0.004) for i in range(30)]), 3.0 + k * 0.004))
    runs = []
    for impl in IMPLEMENTATIONS:
        results = {}
        out, stats = run_raw(impl, profile, peers, steps + [lambda fw: results.update(fw.twcc_results())])
        runs.append((out, stats, results))
    ref, fast = runs
    assert fast == ref
    assert ref[1]["twcc_in"] == 4 and len(ref[2]["s1"]) == 120 and sum(r.arrival is None for r in ref[2]["s1"]) >= 16
    assert ref[1].get("rtx_sent", 0) > 0 and ref[1].get("temporal_dropped", 0) > 0
    assert all(isinstance(r, Result) for r in ref[2]["s1"])
