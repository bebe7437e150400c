"""A session whose receivers span two media workers, without Ray: two real workers in-process
(on 127.0.0.1 and 127.0.0.2), aiortc peers, and the session's routing (``MediaSession``) with
one receiver per worker: the second subscriber goes to the other worker, the track is relayed
to it once, and the relay stops when nobody there receives it."""

from __future__ import annotations

import asyncio

import pytest

from loadtest.peers import accept, answer_offer, collect, loopback_only_ice, new_pc, publisher_offer, wait_for
from mediaserver.control.media import MediaSession
from mediaserver.media.legs import leg_keys
from mediaserver.media.service import WorkerService


@pytest.fixture
async def two_workers():
    loopback_only_ice()
    ws = [WorkerService(bind_host=h, port=0, advertised_host=None, allowed_networks=["127.0.0.0/8"]) for h in ("127.0.0.1", "127.0.0.2")]
    for w in ws:
        await w.start()
    yield ws
    for w in ws:
        w.worker.close()


async def receive(media: MediaSession, pid: str):
    """A subscriber's peer connection, answering the session's offers; returns (pc, what it decodes)."""
    pc = new_pc()
    got = collect(pc)
    await media.join(pid)
    offer = media.take_outbox(pid)[-1]
    await media.subscribe_answer(pid, await answer_offer(pc, offer["sdp"]))
    return pc, got


async def test_receivers_past_one_worker_get_the_track_over_a_leg(two_workers):
    a, b = two_workers
    extra = []

    async def more(using):
        extra.append(list(using))
        return "media:b", b

    media = MediaSession(a, receivers_per_worker=1, more=more, leg_keys=lambda x, y: leg_keys("secret", x, y), home="media:a")
    pub_pc = new_pc()
    answer, added, _ = await media.publish("alice", await publisher_offer(pub_pc))
    await accept(pub_pc, answer)
    assert {t.kind for t in added} == {"audio", "video"}
    first_pc, first = await receive(media, "bob")
    second_pc, second = await receive(media, "cy")
    try:
        assert media.subscribers["bob"].worker == "" and media.subscribers["cy"].worker == "media:b"
        assert extra == [["media:a"]]  # one more worker asked for, once
        await wait_for(lambda: first.video_frames >= 20 and second.video_frames >= 20, timeout=30)
        assert len(set(second.lumas)) >= 5
        assert set(media.relays) == {(t.id, "media:b") for t in added}  # each track relayed once
        assert b.worker.stats["rtp_in"] > 0  # what B forwards came over the leg
        # What each worker carries of the session: B only Cy's receiving side.
        assert media.transports("media:b") == {media.subscribers["cy"].transport_id: ("cy", "subscribe")}
        # Cy leaves: nothing is sent over the leg any more.
        out_leg = media.legs["media:b"][0]
        await media.leave("cy")
        assert media.relays == {}
        routes = a.worker.forwarder.routes if not a.worker.fast else None
        if routes is not None:
            assert not any(out_leg in r for r in routes.values())
        sent = a.worker.stats["rtp_out"]
        await wait_for(lambda: first.video_frames >= 40, timeout=30)
        assert a.worker.stats["rtp_out"] - sent < 2 * (first.video_frames + first.audio_frames)  # only Bob's copies
    finally:
        for pc in (pub_pc, first_pc, second_pc):
            await pc.close()


async def test_losing_the_extra_worker_restarts_only_its_receivers(two_workers):
    a, b = two_workers

    async def more(using):
        return "media:b", b

    media = MediaSession(a, receivers_per_worker=1, more=more, leg_keys=lambda x, y: leg_keys("secret", x, y), home="media:a")
    pub_pc = new_pc()
    answer, _, _ = await media.publish("alice", await publisher_offer(pub_pc))
    await accept(pub_pc, answer)
    first_pc, first = await receive(media, "bob")
    second_pc, _ = await receive(media, "cy")
    try:
        await media.lose_worker("media:b", "the media server restarted")
        assert media.outbox["cy"][0] == {"type": "media_reset", "reason": "the media server restarted"}
        assert "bob" not in media.outbox and media.relays == {} and "media:b" not in media.legs
        before = first.video_frames
        await wait_for(lambda: first.video_frames >= before + 20, timeout=30)  # Bob never noticed
    finally:
        for pc in (pub_pc, first_pc, second_pc):
            await pc.close()


class Counting:
    """A media worker seen through the calls made on it: how many were under way at once."""

    def __init__(self, worker):
        self.worker = worker
        self.busy = self.most = 0

    def __getattr__(self, name):
        method = getattr(self.worker, name)

        async def counted(*args):
            self.busy += 1
            self.most = max(self.most, self.busy)
            try:
                await asyncio.sleep(0.001)  # (a remote worker answers later: the caller goes on meanwhile)
                return await method(*args)
            finally:
                self.busy -= 1

        return counted


async def test_a_publication_reaches_every_viewer_in_one_round_of_worker_calls(two_workers):
    """Twelve viewers on the home worker: when someone publishes, every viewer's offer is made at
    once (a gateway's worker client sends such calls as one message), and each viewer gets
    exactly one offer, for both tracks. Past one worker, legs are made one at a time (tested above)."""
    a, _ = two_workers
    worker = Counting(a)
    media = MediaSession(worker, receivers_per_worker=1000, more=None, home="media:a")
    viewers = [f"v{i}" for i in range(12)]
    for v in viewers:
        await media.join(v)
        assert media.take_outbox(v) == []  # (nothing to receive yet)
    pub_pc = new_pc()
    try:
        worker.most = 0
        answer, added, _ = await media.publish("alice", await publisher_offer(pub_pc))  # (it refreshes everyone)
        assert worker.most >= 12  # all the viewers' calls under way together
        for v in viewers:
            [offer] = media.take_outbox(v)
            assert offer["type"] == "offer" and offer["sdp"].count("m=") == 2
            assert {s.track_id for s in media.subscribers[v].slots} == {t.id for t in added}
    finally:
        await pub_pc.close()
