"""Routed media through one MediaWorker (reference forwarding path), with real aiortc peers on loopback."""

from __future__ import annotations

import asyncio
import random

import pytest

from mediaserver.media.sdp import OutgoingTrack
from mediaserver.media.worker import MediaWorker
from tests.media_peers import accept, answer_offer, collect, loopback_only_ice, new_pc, publisher_offer, wait_for


@pytest.fixture
async def worker():
    loopback_only_ice()
    w = MediaWorker(bind_host="127.0.0.1", port=0)
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
        worker.route(publisher_transport.id, tr.ssrc, t.id, out.ssrc, out.codec.payload_type)
    return pc, t, got, outs


async def test_publisher_to_three_subscribers(worker):
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
