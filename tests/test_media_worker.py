"""Routed media through one MediaWorker, with real aiortc peers on loopback: the fast path (the
default), and for the main cases the pure-Python reference path as well."""

from __future__ import annotations

import asyncio
import random

import pytest

from mediaserver.media.rtp import KIND_RTP, classify
from mediaserver.media.sdp import OutgoingTrack
from mediaserver.media.worker import MediaWorker
from loadtest.peers import accept, answer_offer, collect, loopback_only_ice, new_pc, publisher_offer, wait_for


@pytest.fixture
async def worker():
    loopback_only_ice()
    w = MediaWorker(bind_host="127.0.0.1", port=0)
    assert w.fast
    await w.start()
    yield w
    w.close()


@pytest.fixture(params=["fastpath", "reference"])
async def any_worker(request):
    loopback_only_ice()
    w = MediaWorker(bind_host="127.0.0.1", port=0, fastpath=request.param == "fastpath")
    await w.start()
    yield w
    w.close()


async def publish(worker: MediaWorker, pid: str):
    pc = new_pc()
    t = worker.create_transport(pid, "publish")
    await accept(pc, worker.publish(t.id, await publisher_offer(pc)))
    return pc, t


async def subscribe(worker: MediaWorker, pid: str, publisher_transport):
    """A subscriber receiving every track of the publisher; returns (pc, transport, received, outs)."""
    pc = new_pc()
    got = collect(pc)
    t = worker.create_transport(pid, "subscribe")
    outs = [
        OutgoingTrack(mid=str(i), kind=tr.kind, ssrc=random.getrandbits(32), codec=tr.codec,
                      stream_id=f"{pid}-stream", track_id=f"{tr.kind}-{i}")
        for i, tr in enumerate(publisher_transport.tracks)
    ]
    worker.subscribe_answer(t.id, await answer_offer(pc, worker.subscribe_offer(t.id, outs)))
    for tr, out in zip(publisher_transport.tracks, outs):
        worker.route(publisher_transport.id, tr.ssrc, t.id, out.ssrc, out.codec.payload_type, tr.kind == "video")
    return pc, t, got, outs


async def test_publisher_to_three_subscribers(any_worker):
    worker = any_worker
    pub_pc, pub = await publish(worker, "alice")
    assert {t.kind for t in pub.tracks} == {"audio", "video"}
    assert {t.codec.name for t in pub.tracks} == {"opus", "VP8"}
    subs = [await subscribe(worker, f"sub{i}", pub) for i in range(3)]
    try:
        await wait_for(lambda: all(got.video_frames >= 30 and got.audio_frames >= 50 for _, _, got, _ in subs), timeout=30)
        for _, t, got, _ in subs:
            assert t.state == "connected"
            assert len(set(got.lumas)) >= 5, "the decoded picture must change over time"
        assert pub.state == "connected"
        assert worker.stats["rtp_out"] >= 3 * (30 + 50)
        assert worker.stats["drop_srtp"] == 0 and worker.stats["drop_not_ready"] == 0
    finally:
        for pc, *_ in subs:
            await pc.close()
        await pub_pc.close()


async def test_unsubscribed_and_unrelated_peers_receive_nothing(worker):
    pub_pc, pub = await publish(worker, "alice")
    a_pc, a, a_got, a_outs = await subscribe(worker, "a", pub)
    b_pc, b, b_got, b_outs = await subscribe(worker, "b", pub)
    # A third peer, connected to the same worker but routed to nothing (e.g. another session).
    c_pc, c, c_got, _ = await subscribe(worker, "c", pub)
    for tr in pub.tracks:
        worker.unroute(pub.id, tr.ssrc, c.id)
    try:
        await wait_for(lambda: a_got.video_frames >= 10 and b_got.video_frames >= 10, timeout=30)
        for tr in pub.tracks:
            worker.unroute(pub.id, tr.ssrc, a.id)
        await asyncio.sleep(0.5)  # frames already in flight
        frozen = a_got.video_frames
        before_b = b_got.video_frames
        await asyncio.sleep(2)
        assert a_got.video_frames == frozen, "an unsubscribed participant must stop receiving"
        assert b_got.video_frames > before_b + 20, "the others keep receiving"
        assert c_got.video_frames == 0 and c_got.audio_frames == 0
    finally:
        for pc in (a_pc, b_pc, c_pc, pub_pc):
            await pc.close()


async def test_late_subscriber_gets_a_keyframe_through_forwarded_pli(worker):
    pub_pc, pub = await publish(worker, "alice")
    first_pc, _, first, _ = await subscribe(worker, "early", pub)
    try:
        await wait_for(lambda: first.video_frames >= 30, timeout=30)
        late_pc, _, late, _ = await subscribe(worker, "late", pub)
        await wait_for(lambda: late.video_frames >= 10, timeout=20)
        assert worker.stats["pli_sent"] >= 1  # the late decoder asked; the publisher was told
        await late_pc.close()
    finally:
        await first_pc.close()
        await pub_pc.close()


def _ice_connection(pc):
    """The aioice connection under an aiortc peer connection (to send raw bytes from its address)."""
    return pc.getTransceivers()[0].sender.transport.transport._connection


async def test_hostile_input_is_dropped_and_media_keeps_flowing(any_worker):
    worker = any_worker
    import socket

    from aioice import stun

    pub_pc, pub = await publish(worker, "alice")
    sub_pc, sub, got, _ = await subscribe(worker, "bob", pub)
    captured: list[bytes] = []
    ice = pub_pc.getTransceivers()[0].sender.transport.transport
    original = ice._send  # aiortc's RTCIceTransport sends every datagram through this

    async def spy(data: bytes) -> None:  # what the publisher puts on the wire
        if classify(data) == KIND_RTP and not captured:
            captured.append(data)
        await original(data)

    ice._send = spy
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.1", 0))
    attacker.setblocking(False)
    target = ("127.0.0.1", worker.port)
    try:
        await wait_for(lambda: got.video_frames >= 10 and captured, timeout=30)
        rnd = random.Random(1)
        bad_check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        bad_check.attributes["USERNAME"] = f"{sub.ice.ufrag}:{sub.remote.ice_ufrag}"
        bad_check.add_message_integrity(b"not-the-password")
        hostile = [
            bytes(rnd.randrange(256) for _ in range(rnd.choice([1, 3, 12, 100, 1400]))) for _ in range(500)
        ] + [
            b"\x00\x01\x00",  # truncated STUN
            b"\x00\x01\x00\x08" + b"\x21\x12\xa4\x42" + b"\0" * 12,  # STUN header claiming attributes it lacks
            bytes(bad_check),  # wrong MESSAGE-INTEGRITY
            b"\x16\xfe\xfd\x00",  # truncated DTLS
            b"\x16\xfe\xfd" + b"\0" * 50,  # DTLS from an address that did no ICE
            b"\x80\x60\x00",  # truncated RTP
            b"\x80\xc8" + b"\0" * 30,  # RTCP from nowhere
            b"\x80\x60" + b"\0" * 2000,  # oversized
            captured[0],  # a real SRTP packet, replayed from another address
        ]
        sent_before = worker.stats["rtp_out"]
        for i, pkt in enumerate(hostile):
            attacker.sendto(pkt, target)
            if i % 20 == 0:
                await asyncio.sleep(0.002)  # paced, so the kernel's socket buffer does not drop them
        # The same real packet again from the publisher's own address: a replay (RFC 3711 3.3.2).
        await _ice_connection(pub_pc).send(captured[0])
        frames_before = got.video_frames
        await asyncio.sleep(2)
        assert got.video_frames > frames_before + 20, "the legitimate stream must keep flowing"
        assert worker.stats["rtp_out"] > sent_before
        assert worker.stats["drop_srtp"] >= 1, "the replayed packet fails libsrtp's replay check"
        received = sum(v for k, v in worker.stats.items() if k.startswith("drop_")) - worker.stats["drop_srtp"]
        assert received == len(hostile), "every hostile datagram arrived and was dropped, none forwarded"
        assert worker.stats["drop_not_ready"] >= 3
        assert worker.stats["drop_stun"] >= 2 and worker.stats["drop_dtls_no_ice"] >= 1
        assert worker.stats["drop_error"] == 0
        with pytest.raises(BlockingIOError):
            attacker.recv(2048)  # nothing was ever sent to the attacker
    finally:
        attacker.close()
        await sub_pc.close()
        await pub_pc.close()


async def test_disallowed_network_gets_no_answer(worker):
    from mediaserver.media.ice import AllowedNetworks

    worker.allowed = AllowedNetworks(["10.0.0.0/8"])  # loopback clients are now outside the list
    pc = new_pc()
    t = worker.create_transport("x", "publish")
    await accept(pc, worker.publish(t.id, await publisher_offer(pc, audio=False)))
    await asyncio.sleep(2)
    assert t.state == "new" and t.addr is None
    assert worker.stats["drop_stun_not_allowed"] >= 1
    await pc.close()


async def test_h264_publisher_reaches_subscribers_as_h264(worker):
    pc = new_pc()
    pub = worker.create_transport("alice", "publish")
    answer = worker.publish(pub.id, await publisher_offer(pc, audio=False, video_codec="H264"))
    assert "H264/90000" in answer and "packetization-mode=1" in answer
    await accept(pc, answer)
    assert [t.codec.name for t in pub.tracks] == ["H264"]
    sub_pc, _, got, outs = await subscribe(worker, "bob", pub)
    try:
        assert outs[0].codec.name == "H264"  # a subscriber gets the publisher's codec
        await wait_for(lambda: got.video_frames >= 20, timeout=30)
        assert len(set(got.lumas)) >= 5
    finally:
        await sub_pc.close()
        await pc.close()


async def test_consent_lapses_after_30_seconds_without_checks(any_worker):
    """RFC 7675: stop sending to an address whose consent was not refreshed for 30 s; the
    client's next consent check (aioice sends one every few seconds) restores it."""
    import time

    worker = any_worker
    offset = [0.0]
    worker.clock = lambda: time.monotonic() + offset[0]
    pub_pc, pub = await publish(worker, "alice")
    sub_pc, sub, got, _ = await subscribe(worker, "bob", pub)
    try:
        await wait_for(lambda: got.video_frames >= 10, timeout=30)
        # As if the subscriber had not answered anything for 31 s (the fast path keeps its own clock).
        offset[0] += 31
        if worker.fast:
            worker.forwarder.set_consent(sub.id, time.monotonic() - 31)
        await wait_for(lambda: worker.stats["drop_no_consent"] > 0, timeout=5)
        await wait_for(lambda: worker.clock() - sub.consent_at < 10, timeout=20)  # a fresh check arrived
        resumed = got.video_frames
        await wait_for(lambda: got.video_frames > resumed + 10, timeout=20)
    finally:
        await sub_pc.close()
        await pub_pc.close()


async def test_checks_before_the_answer_arrives_are_answered(worker):
    """A subscriber's ICE checks may reach us before its SDP answer does (the answer travels
    through the gateway and the session): they must be answered, and media must then flow."""
    pub_pc, pub = await publish(worker, "alice")
    pc = new_pc()
    got = collect(pc)
    t = worker.create_transport("late-answer", "subscribe")
    outs = [
        OutgoingTrack(mid=str(i), kind=tr.kind, ssrc=random.getrandbits(32), codec=tr.codec, stream_id="s", track_id=f"t{i}")
        for i, tr in enumerate(pub.tracks)
    ]
    answer = await answer_offer(pc, worker.subscribe_offer(t.id, outs))
    try:
        await wait_for(lambda: t.addr is not None, timeout=10)  # checked and answered, no answer yet
        assert t.remote is None
        await asyncio.sleep(1.5)  # the answer is slow to arrive
        worker.subscribe_answer(t.id, answer)
        for tr, out in zip(pub.tracks, outs):
            worker.route(pub.id, tr.ssrc, t.id, out.ssrc, out.codec.payload_type, tr.kind == "video")
        await wait_for(lambda: got.video_frames >= 10, timeout=30)
    finally:
        await pc.close()
        await pub_pc.close()


def _check(t, *, nominate: bool = False) -> bytes:
    """A valid ICE connectivity check for transport ``t``, as a full agent sends it."""
    from aioice import stun

    msg = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{t.ice.ufrag}:clientufrag"
    msg.attributes["PRIORITY"] = 1853824767
    msg.attributes["ICE-CONTROLLING"] = 1
    if nominate:
        msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(t.ice.pwd.encode())
    return bytes(msg)


async def test_media_stays_on_the_nominated_pair(any_worker):
    """A client with two addresses that both reach us keeps checking the pair it does not use:
    those checks are answered but move nothing; a nomination moves media, and so does the loss
    of consent on the pair in use (RFC 8445 section 7.3.1.5, RFC 7675)."""
    import socket
    import time

    worker = any_worker
    offset = [0.0]
    worker.clock = lambda: time.monotonic() + offset[0]
    t = worker.create_transport("two-homes", "subscribe")
    wifi, wired = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    wifi.bind(("127.0.0.2", 0))
    wired.bind(("127.0.0.3", 0))
    for s in (wifi, wired):
        s.setblocking(False)
    target = ("127.0.0.1", worker.port)
    loop = asyncio.get_running_loop()

    async def check(sock, **kw):
        sock.sendto(_check(t, **kw), target)
        response = await asyncio.wait_for(loop.sock_recv(sock, 2048), 5)
        assert response[:2] == b"\x01\x01"  # every valid check gets its success response

    try:
        await check(wifi)
        assert t.addr == wifi.getsockname()  # the first valid check serves until a nomination
        before = t.consent_at
        await asyncio.sleep(0.05)
        await check(wired)
        assert t.addr == wifi.getsockname() and t.consent_at == before, "an unused pair moves nothing"
        await check(wired, nominate=True)
        assert t.addr == wired.getsockname() and worker._by_addr[wired.getsockname()] is t
        assert wifi.getsockname() not in worker._by_addr
        for _ in range(3):
            await check(wifi)  # keeps checking the pair it left
        assert t.addr == wired.getsockname()
        # The pair in use goes quiet past the consent timeout: a check elsewhere takes over.
        offset[0] += 31
        await check(wifi)
        assert t.addr == wifi.getsockname()
    finally:
        wifi.close()
        wired.close()


async def test_a_two_address_peer_receives_on_the_pair_it_nominated(worker):
    """An aiortc subscriber gathering two host candidates (127.0.0.1 and 127.0.0.2): media goes
    to the pair its ICE agent nominated, and every frame arrives there."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1", "127.0.0.2"] if use_ipv4 else []
    try:
        pub_pc, pub = await publish(worker, "alice")
        sub_pc, sub, got, _ = await subscribe(worker, "bob", pub)
        await wait_for(lambda: got.video_frames >= 30, timeout=30)
        conn = _ice_connection(sub_pc)
        nominated = next(iter(conn._nominated.values()))
        assert sub.addr == (nominated.local_candidate.host, nominated.local_candidate.port)
        assert worker.stats["drop_not_ready"] == 0
        await sub_pc.close()
        await pub_pc.close()
    finally:
        loopback_only_ice()


async def test_a_flood_of_unknown_sources_does_not_crowd_out_known_clients(worker):
    """10,000 STUN-looking datagrams from 16 unknown sources, unpaced, while a known client keeps
    checking: every one of its checks is answered; the noise is capped per source and in all."""
    import socket

    t = worker.create_transport("known", "subscribe")
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.2", 0))
    client.setblocking(False)
    target = ("127.0.0.1", worker.port)
    loop = asyncio.get_running_loop()
    client.sendto(_check(t), target)
    await asyncio.wait_for(loop.sock_recv(client, 2048), 5)
    assert t.addr == client.getsockname()
    noise = []
    for i in range(16):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((f"127.0.1.{i + 1}", 0))
        s.setblocking(False)
        noise.append(s)
    junk = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)  # a STUN header with nothing valid behind it
    answered = 0

    async def flood():
        for n in range(10_000):
            try:
                noise[n % len(noise)].sendto(junk, target)
            except BlockingIOError:
                pass
            if n % 2500 == 0:  # bursts far larger than the queue to Python between its drains
                await asyncio.sleep(0)

    async def keep_checking():
        nonlocal answered
        for _ in range(40):
            client.sendto(_check(t), target)
            try:
                await asyncio.wait_for(loop.sock_recv(client, 2048), 2)
                answered += 1
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(0.005)

    try:
        await asyncio.gather(flood(), keep_checking())
        assert answered == 40, f"{answered} of 40 checks from a known client answered during the flood"
        assert worker.stats["drop_slow_queue_full"] == 0
        assert worker.stats["drop_slow_unknown"] > 0 and worker.stats["drop_stun"] > 0
    finally:
        client.close()
        for s in noise:
            s.close()


@pytest.mark.parametrize("fast", [True, False], ids=["fastpath", "reference"])
async def test_a_track_relayed_to_another_worker_reaches_its_subscribers(fast):
    """A publisher on worker A, a subscriber on worker B (another address), the track carried
    once over an SRTP leg between them: the subscriber decodes it, and its keyframe requests
    travel back over the leg to the publisher."""
    from mediaserver.media.legs import leg_keys
    from mediaserver.media.service import WorkerService

    loopback_only_ice()
    a = WorkerService(bind_host="127.0.0.1", port=0, advertised_host=None, allowed_networks=["127.0.0.0/8"], fastpath=fast)
    b = WorkerService(bind_host="127.0.0.2", port=0, advertised_host=None, allowed_networks=["127.0.0.0/8"], fastpath=fast)
    await a.start()
    await b.start()
    try:
        pub_pc, pub = await publish(a.worker, "alice")
        k1, k2 = leg_keys()
        out = await a.relay("127.0.0.2", b.worker.port, rx=k2, tx=k1)
        inn = await b.relay("127.0.0.1", a.worker.port, rx=k1, tx=k2)
        assert (out["host"], inn["host"]) == ("127.0.0.1", "127.0.0.2")
        again = await a.relay("127.0.0.2", b.worker.port, rx=k2, tx=k1)
        assert again["id"] == out["id"]  # one leg per pair of workers
        pc = new_pc()
        got = collect(pc)
        t = b.worker.create_transport("bob", "subscribe")
        relayed = {tr.ssrc: random.getrandbits(32) for tr in pub.tracks}
        outs = [
            OutgoingTrack(mid=str(i), kind=tr.kind, ssrc=random.getrandbits(32), codec=tr.codec, stream_id="bob", track_id=f"t{i}")
            for i, tr in enumerate(pub.tracks)
        ]
        b.worker.subscribe_answer(t.id, await answer_offer(pc, b.worker.subscribe_offer(t.id, outs)))
        for tr, o in zip(pub.tracks, outs):
            a.worker.route(pub.id, tr.ssrc, out["id"], relayed[tr.ssrc], tr.codec.payload_type, tr.kind == "video")
            b.worker.route(inn["id"], relayed[tr.ssrc], t.id, o.ssrc, o.codec.payload_type, tr.kind == "video")
        await wait_for(lambda: got.video_frames >= 30 and got.audio_frames >= 30, timeout=30)
        assert len(set(got.lumas)) >= 5
        assert a.worker.stats["rtp_out"] > 0 and b.worker.stats["rtp_in"] > 0
        # The subscriber's decoder asks for a keyframe: B passes it over the leg, A to the publisher.
        sent_before = a.worker.stats["pli_sent"] + a.worker.stats["pli_throttled"]
        await asyncio.sleep(0.6)  # past A's throttle
        for pkt, to in b.worker.forwarder.keyframes_for(t.id, b.worker.clock() + 1):  # (B's own throttle passed too)
            b.worker._send_consented(pkt, to)
        await wait_for(lambda: a.worker.stats["pli_sent"] + a.worker.stats["pli_throttled"] > sent_before, timeout=5)
        await pc.close()
        await pub_pc.close()
    finally:
        a.worker.close()
        b.worker.close()


async def test_a_subscriber_that_lost_a_packet_gets_it_back_as_rtx():
    """The subscribe offer carries RTX (RFC 4588) and aiortc takes it; one video packet is lost on
    the way to the subscriber (dropped as it leaves the worker: this machine has no lossy link),
    the subscriber's NACK is answered with an RTX packet, and its video goes on. The reference
    path, whose sends pass through Python where a packet can be dropped; the fast path's RTX is
    the same, packet for packet (tests/test_forwarder.py)."""
    loopback_only_ice()
    worker = MediaWorker(bind_host="127.0.0.1", port=0, fastpath=False)
    await worker.start()
    pub_pc, pub = await publish(worker, "alice")
    pc, t, got, outs = await subscribe(worker, "bob", pub)
    video = next(o for o in outs if o.kind == "video")
    send, seen = worker._send_consented, {"n": 0, "dropped": None}

    def lossy(pkt: bytes, to: tuple) -> None:
        if to == t.addr and 128 <= pkt[0] <= 191 and (pkt[1] & 0x7F) == video.codec.payload_type:
            seen["n"] += 1
            if seen["n"] == 60:
                seen["dropped"] = int.from_bytes(pkt[2:4], "big")
                return
        send(pkt, to)

    worker._send_consented = lossy
    try:
        assert "rtx/90000" in worker.subscribe_offer(t.id, outs)
        await wait_for(lambda: worker.stats["rtx_sent"] >= 1, timeout=30)
        before = got.video_frames
        await wait_for(lambda: got.video_frames >= before + 30, timeout=20)
        assert seen["dropped"] is not None and worker.stats["nack_served"] >= 1
        assert worker.forwarder.rtx_out[(t.id, video.ssrc)][0] == sdp_rtx_ssrc(video.ssrc)
    finally:
        await pc.close()
        await pub_pc.close()
        worker.close()


def sdp_rtx_ssrc(ssrc: int) -> int:
    from mediaserver.media.sdp import rtx_ssrc

    return rtx_ssrc(ssrc)
