"""The fast path's socket loop on real UDP sockets (loopback): a received batch is forwarded as
runs (consecutive packets of one stream, subscriber by subscriber), and with GSO a run to one
subscriber leaves in one UDP_SEGMENT send; with sender threads, each thread protects and sends
its share of the subscribers. Whatever the batching and the threads, each subscriber must get
exactly the datagrams the reference forwarder gives it, in the same order (compared as sent:
SRTP with the same keys and indexes gives the same bytes, a resent packet included)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from mediaserver._fastpath import FastPath
from mediaserver.media import rtcp
from mediaserver.media.forwarder import Forwarder, Route
from mediaserver.media.srtp import PROFILES
from tests.test_forwarder import MID_ID, RID_ID, RRID_ID, TRACK, Peer, rtp, simulcast_frames

PROFILE = PROFILES[0]
AUDIO_SSRC = 0x5555
SO_NO_CHECK = 11  # <asm-generic/socket.h>: no UDP checksums, which GSO cannot do without


def udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    return s


def configure(fw, peers: dict, addrs: dict, simulcast: bool) -> None:
    for eid in ("pub", "s1", "s2"):
        fw.add_endpoint(eid)
        fw.set_address(eid, addrs[eid])
        fw.set_keys(eid, peers[eid].server_keys)
    if simulcast:
        fw.set_sdes("pub", MID_ID, RID_ID, RRID_ID)
        fw.add_simulcast("pub", TRACK, "1", ["q", "h", "f"], "VP8")
        fw.set_route("pub", TRACK, "s1", Route(ssrc=0x3001, payload_type=96, video=True, layer=0))
        fw.set_route("pub", TRACK, "s2", Route(ssrc=0x3002, payload_type=98, seq_delta=500, ts_delta=7, video=True, layer=2))
    else:
        fw.set_route("pub", 0x1111, "s1", Route(ssrc=0x2001, payload_type=96, video=True))
        fw.set_route("pub", 0x1111, "s2", Route(ssrc=0x2002, payload_type=100, seq_delta=1000, ts_delta=90000, video=True))
    for sub, ssrc in (("s1", 0x6001), ("s2", 0x6002)):
        fw.set_route("pub", AUDIO_SSRC, sub, Route(ssrc=ssrc, payload_type=111))


def plain_inputs(pub: Peer, s1: Peer) -> list[tuple[str, bytes]]:
    """Frames of four equal packets and a shorter last one, each frame a little larger than the
    one before, an audio packet after each, and a NACK from s1 in the middle."""
    out = []
    seq = 100
    for f in range(8):
        for part in range(5):
            size = 120 if part == 4 else 300 + 10 * f
            out.append(("pub", pub.out.protect(rtp(seq, payload=bytes([seq & 0xFF]) * size, marker=part == 4))))
            seq += 1
        out.append(("pub", pub.out.protect(rtp(500 + f, ssrc=AUDIO_SSRC, pt=111, payload=b"\x01" * 60))))
        if f == 3:
            out.append(("s1", s1.out.protect_rtcp(rtcp.nack(0x2001, [101, 104]))))
    return out


def simulcast_inputs(pub: Peer, s1: Peer) -> list[tuple[str, bytes]]:
    steps = simulcast_frames(pub, range(0, 9), 1.0, {"q": 5, "h": 5, "f": 4})
    return [(who, data) for who, data, _ in steps]


def reference(peers: dict, addrs: dict, inputs: list, simulcast: bool) -> dict:
    fw = Forwarder()
    configure(fw, peers, addrs, simulcast)
    who = {v: k for k, v in addrs.items()}
    got: dict[str, list[bytes]] = {"pub": [], "s1": [], "s2": []}
    for sender, data in inputs:
        handle = fw.handle_rtcp if 192 <= data[1] <= 223 else fw.handle_rtp
        for pkt, to in handle(data, addrs[sender], 1.0):
            got[who[to]].append(pkt)
    return got


def run_loop(peers: dict, inputs: list, simulcast: bool, gso: bool, no_checksums: bool = False, threads: int = 1):
    """Queue every input on the server's socket first (so the loop reads them in one batch),
    run the loop, and return what each client socket received, what the reference sends for the
    same inputs, and the loop's stats."""
    server, socks = udp(), {eid: udp() for eid in ("pub", "s1", "s2")}
    if no_checksums:
        server.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    addrs = {eid: s.getsockname() for eid, s in socks.items()}
    fw = FastPath(gso=gso, threads=threads)
    configure(fw, peers, addrs, simulcast)
    expected = reference(peers, addrs, inputs, simulcast)
    server.setblocking(False)
    fw.attach(server.fileno())
    for sender, data in inputs:
        socks[sender].sendto(data, server.getsockname())
    thread = threading.Thread(target=fw.run, daemon=True)
    thread.start()
    got: dict[str, list[bytes]] = {"pub": [], "s1": [], "s2": []}
    deadline = time.monotonic() + 5
    try:
        for eid, s in socks.items():
            s.settimeout(0.05)
            while len(got[eid]) < len(expected[eid]) and time.monotonic() < deadline:
                try:
                    got[eid].append(s.recv(4096))
                except socket.timeout:
                    pass
        time.sleep(0.1)
        for eid, s in socks.items():  # and nothing more than expected
            s.setblocking(False)
            try:
                while True:
                    got[eid].append(s.recv(4096))
            except BlockingIOError:
                pass
    finally:
        fw.stop()
        thread.join(5)
        server.close()
        for s in socks.values():
            s.close()
    return got, expected, fw.stats


@pytest.mark.parametrize("threads", [1, 3], ids=["one-thread", "three-threads"])
@pytest.mark.parametrize("gso", [True, False], ids=["gso", "no-gso"])
@pytest.mark.parametrize("simulcast", [False, True], ids=["plain", "simulcast"])
def test_a_batch_reaches_each_subscriber_as_the_reference_sends_it(gso, simulcast, threads):
    # With three threads the publisher (endpoint 0) is the loop thread's, s1 and s2 one
    # sender thread's each: the NACK's repair and the publisher's feedback cross threads.
    peers = {eid: Peer(PROFILE) for eid in ("pub", "s1", "s2")}
    inputs = (simulcast_inputs if simulcast else plain_inputs)(peers["pub"], peers["s1"])
    assert len(inputs) <= 64  # one recvmmsg
    got, expected, stats = run_loop(peers, inputs, simulcast, gso, threads=threads)
    assert len(expected["s1"]) >= 18 and len(expected["s2"]) >= 18
    for eid in ("s1", "s2", "pub"):
        assert got[eid] == expected[eid], eid
    assert stats["rx_batches"] <= 2 and stats["rx_packets"] == len(inputs)
    if gso:
        # Runs went out subscriber by subscriber, several datagrams per send.
        assert stats["tx_gso"] >= len(got["s1"]) // 2 and stats["tx_batches"] <= 4 * threads
    else:
        assert "tx_gso" not in stats
    assert "gso_refused" not in stats and "drop_send" not in stats
    if not simulcast:
        # The NACK in the middle was answered from the cache after the media before it.
        assert stats["nack_served"] == 2


@pytest.mark.parametrize("threads", [1, 3], ids=["one-thread", "three-threads"])
def test_a_path_that_refuses_segmentation_gets_single_datagrams(threads):
    peers = {eid: Peer(PROFILE) for eid in ("pub", "s1", "s2")}
    inputs = plain_inputs(peers["pub"], peers["s1"])
    got, expected, stats = run_loop(peers, inputs, False, gso=True, no_checksums=True, threads=threads)
    for eid in ("s1", "s2", "pub"):
        assert got[eid] == expected[eid], eid
    # One refusal per subscriber address, then plain datagrams; nothing lost.
    assert stats["gso_refused"] == 2 and "tx_gso" not in stats and "drop_send" not in stats



@pytest.mark.parametrize("profile", PROFILES, ids=[p.openssl_name.decode() for p in PROFILES])
@pytest.mark.parametrize("threads", [1, 2, 4], ids=["one-thread", "two-threads", "four-threads"])
def test_a_fan_out_spread_over_sender_threads_matches_the_reference(threads, profile):
    """One publisher to 40 subscribers, several batches of input: far more datagrams than one
    send batch holds, so each sender thread is handed batch after batch while the loop fills
    the next. Every subscriber gets the reference's datagrams in order, and the bytes counted
    as sent (the adaptation's and TWCC's figure, reckoned before a sender thread protects a
    packet) are what arrived."""
    subs = [f"s{i}" for i in range(40)]
    peers = {eid: Peer(profile) for eid in ["pub"] + subs}
    server, socks = udp(), {eid: udp() for eid in ["pub"] + subs}
    addrs = {eid: sk.getsockname() for eid, sk in socks.items()}
    inputs = [peers["pub"].out.protect(rtp(1000 + i, payload=bytes([i]) * 900, marker=i % 6 == 5)) for i in range(150)]

    def configure_fan_out(fw):
        for eid in ["pub"] + subs:
            fw.add_endpoint(eid)
            fw.set_address(eid, addrs[eid])
            fw.set_keys(eid, peers[eid].server_keys)
        for i, eid in enumerate(subs):
            fw.set_route("pub", 0x1111, eid,
                         Route(ssrc=0x7000 + i, payload_type=96, seq_delta=i * 7, ts_delta=i, video=True))

    ref = Forwarder()
    configure_fan_out(ref)
    who = {v: k for k, v in addrs.items()}
    expected: dict[str, list[bytes]] = {eid: [] for eid in subs}
    for data in inputs:
        for pkt, to in ref.handle_rtp(data, addrs["pub"], 1.0):
            expected[who[to]].append(pkt)
    fw = FastPath(threads=threads)
    configure_fan_out(fw)
    server.setblocking(False)
    fw.attach(server.fileno())
    thread = threading.Thread(target=fw.run, daemon=True)
    thread.start()
    got: dict[str, list[bytes]] = {eid: [] for eid in subs}
    try:
        for k in range(0, len(inputs), 50):  # three bursts
            for data in inputs[k:k + 50]:
                socks["pub"].sendto(data, server.getsockname())
            time.sleep(0.05)
        deadline = time.monotonic() + 5
        for eid in subs:
            socks[eid].settimeout(0.05)
            while len(got[eid]) < len(expected[eid]) and time.monotonic() < deadline:
                try:
                    got[eid].append(socks[eid].recv(4096))
                except socket.timeout:
                    pass
    finally:
        fw.stop()
        thread.join(5)
        stats = fw.stats
        server.close()
        for sk in socks.values():
            sk.close()
    assert not thread.is_alive()
    for eid in subs:
        assert len(expected[eid]) == 150
        assert got[eid] == expected[eid], eid
    assert stats["rtp_out"] == 150 * 40
    assert stats["bytes_out"] == sum(len(p) for eid in subs for p in got[eid])
    assert not any(k.startswith("drop_") for k in stats), stats


@pytest.mark.parametrize("threads", [0, 17, -1])
def test_a_thread_count_out_of_range_is_refused(threads):
    import os

    stdin = os.fstat(0)
    with pytest.raises(ValueError, match="threads must be 1 to 16"):
        FastPath(threads=threads)
    import gc

    gc.collect()
    assert os.fstat(0).st_ino == stdin.st_ino  # (the refused one closed no descriptor of ours)
