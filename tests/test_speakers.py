"""Who speaks (issue 12, part 3): the audio levels publishers put on their packets (RFC 6464),
counted by the forwarder (both implementations alike), turned into speaking and stopped by
``mediaserver.media.speakers``, and told to the room; the active speaker's video ranks before
the other cameras when a subscriber's link cannot carry them all."""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess

import pytest

from loadtest.peers import Tone, join_media, loopback_only_ice, wait_for
from mediaserver.media.adaptation import Adaptation, RouteInfo
from mediaserver.media.forwarder import LOUD_LEVEL, Route
from mediaserver.media.speakers import START, STOP, Speakers
from mediaserver.media.srtp import PROFILES
from test_forwarder import IMPLEMENTATIONS, PUB_SSRC, build, transcript
from tests.browsers import CHROMIUM, FLAGS, needs_chromium
from tests.helpers import make_room, make_token

LEVEL_ID = 1


def audio(seq: int, level: int | None, voice: bool = False) -> bytes:
    """An Opus-like packet with the audio level extension (one-byte form, RFC 8285) as Chrome sends it."""
    ext = b"" if level is None else struct.pack("!HHBBH", 0xBEDE, 1, (LEVEL_ID << 4) | 0, (0x80 if voice else 0) | level, 0)
    first = 0x80 | (0x10 if level is not None else 0)
    return struct.pack("!BBHII", first, 111, seq, seq * 960, PUB_SSRC) + ext + b"\xf8" * 40


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_the_forwarder_counts_loud_and_quiet_packets(impl):
    fw, peers = build(impl, PROFILES[0])
    fw.set_audio_level("pub", LEVEL_ID)
    levels = [20, 35, LOUD_LEVEL, LOUD_LEVEL + 1, 127, None]
    steps = [("pub", peers["pub"].out.protect(audio(i + 1, lv, voice=i == 0)), 1.0 + i / 50) for i, lv in enumerate(levels)]
    out = transcript(fw, peers, steps)
    assert sorted(w for w, _, _ in out) == ["s1"] * 6 + ["s2"] * 6  # counted on the way, forwarded as ever
    assert fw.audio_levels() == {("pub", PUB_SSRC): [5, 3, sum(127 - lv for lv in levels if lv is not None)]}
    fw.set_audio_level("pub", 0)  # (not negotiated: not read)
    transcript(fw, peers, [("pub", peers["pub"].out.protect(audio(9, 10)), 2.0)])
    assert fw.audio_levels()[("pub", PUB_SSRC)][0] == 5
    fw.remove_endpoint("pub")
    assert fw.audio_levels() == {}


def test_speaking_starts_stops_and_the_last_to_start_is_active():
    sp = Speakers()
    counts = {"a": [0, 0, 0], "b": [0, 0, 0]}

    def step(now: float, loud: dict) -> list:
        for k in counts:
            counts[k][0] += 25
            counts[k][1] += int(25 * loud.get(k, 0.0))
        return sp.observe({k: list(v) for k, v in counts.items()}, now)

    assert step(0.5, {}) == [] and sp.active(["a", "b"]) is None
    assert step(1.0, {"a": 0.8}) == [("a", True)]  # 0.4 after one interval of talk
    assert sp.active(["a", "b"]) == "a" and sp.activity["a"] >= START
    step(1.5, {"a": 0.8, "b": 0.9})
    assert sp.active(["a", "b"]) == "b" and sp.active(["a"]) == "a"  # b took the word; a still speaks
    changes = []
    t = 1.5
    while ("b", False) not in changes:  # b stops; a pause between words does not end speech at once
        t += 0.5
        changes += step(t, {"a": 0.8})
        assert t < 5
    assert t >= 2.5 and sp.activity["b"] < STOP and sp.active(["a", "b"]) == "a"
    assert sp.observe({"b": list(counts["b"])}, t + 0.5) == [("a", False)]  # a's publisher left
    assert sp.active(["a", "b"]) is None


def test_the_active_speakers_camera_goes_down_after_the_others():
    """A subscriber receiving three cameras (two layers each) over a congested link: at each
    step (their top layers, then their pictures) the active speaker's camera (priority 1) is the
    last to give way."""
    ad = Adaptation()
    rs = [RouteInfo("pub", 0x100 + i, "sub", 0x300 + i, 2, 1, priority=1 if i == 1 else 0) for i in range(3)]
    for r in rs:
        ad.measure({("pub", r.track_ssrc): [0, 0]}, 0.0)
        ad.measure({("pub", r.track_ssrc): [20_000, 60_000]}, 1.0)
    order, now, seq = [], 1.0, 0
    while len(order) < 6:
        now, seq = now + 0.5, seq + 50
        quality = {("sub", 0x300 + i): {"fraction_lost": 0.3, "highest_seq": seq, "lost": 0, "jitter": 1, "lsr": 0} for i in range(3)}
        changes, _ = ad.step(rs, {"sub": 3}, {}, quality, now)
        order += [(ssrc, caps[0]) for (_, ssrc, _), caps in changes.items()]
        assert now < 60
    assert [ssrc for ssrc, _ in order[:3]] in ([0x102, 0x100, 0x101], [0x100, 0x102, 0x101]) and {c for _, c in order[:3]} == {0}
    assert [ssrc for ssrc, _ in order[3:]] in ([0x102, 0x100, 0x101], [0x100, 0x102, 0x101]) and {c for _, c in order[3:]} == {-1}


async def test_the_room_is_told_who_speaks(server):
    """Two aiortc publishers, one talking (a tone) and one silent, and a viewer: the viewer
    (and the publishers) are told the talker speaks; when the other talks instead, that one is
    the active speaker, and when nobody does, nobody is."""
    loopback_only_ice()
    async with server.http() as http:
        room = await make_room(http, name="Who speaks", media_mode="routed")
        ann_voice, bob_voice = Tone(), Tone()
        bob_voice.on = False
        ann = await join_media(server, http, room, "ann", "moderator")
        bob = await join_media(server, http, room, "bob", "moderator")
        viewer = await join_media(server, http, room, "viewer", "subscriber")
        try:
            for who, voice in ((ann, ann_voice), (bob, bob_voice)):
                reply = await who.publish(video=False, audio_track=voice)
                assert reply["type"] == "answer" and "ssrc-audio-level" in reply["sdp"], reply
            await wait_for(lambda: viewer.speakers and viewer.speakers[-1]["active"] == ann.id, timeout=20)
            assert viewer.speakers[-1]["speaking"] == [ann.id]
            await wait_for(lambda: bob.speakers and bob.speakers[-1]["active"] == ann.id, timeout=10)  # everyone is told
            # Bob talks and Ann stops: Bob is the active speaker.
            bob_voice.on, ann_voice.on = True, False
            await wait_for(lambda: viewer.speakers[-1] == {"type": "speakers", "active": bob.id, "speaking": [bob.id]}, timeout=20)
            # Nobody talks: nobody is.
            bob_voice.on = False
            await wait_for(lambda: viewer.speakers[-1]["active"] is None and viewer.speakers[-1]["speaking"] == [], timeout=20)
            told = len(viewer.speakers)
            await asyncio.sleep(2)
            assert len(viewer.speakers) == told  # told on a change only
        finally:
            for c in (ann, bob, viewer):
                await c.close()


@needs_chromium
@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="ffmpeg makes the talker's microphone file")
async def test_the_meeting_page_shows_who_speaks(server, tmp_path):
    """Chromium on the meeting page: a participant whose microphone carries something like a
    voice (a file) and one with Chrome's fake microphone (short beeps, mostly silence). Both
    pages are told the talker speaks, and show it on the talker's tile."""
    from playwright.async_api import async_playwright

    # Something like a voice: pitch gliding, loudness at a syllable rate (a steady tone would
    # not do: the browser's noise suppression takes it for noise and silences it in a second).
    tone = tmp_path / "voice.wav"
    voice = ("0.4*sin(2*PI*(180+60*sin(2*PI*0.7*t))*t)*(0.55+0.45*sin(2*PI*3.5*t))"
             "+0.2*sin(2*PI*(360+90*sin(2*PI*0.9*t))*t)*(0.5+0.5*sin(2*PI*3.5*t+1))")
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"aevalsrc='{voice}':s=48000", "-t", "60", str(tone)], check=True)
    async with async_playwright() as p, server.http() as http:
        talking = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS + [f"--use-file-for-fake-audio-capture={tone}"])
        quiet = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        room = await make_room(http, name="Who speaks here", media_mode="routed")
        pages = {}
        for who, b in (("talker", talking), ("listener", quiet)):
            page = await (await b.new_context(viewport={"width": 1280, "height": 800})).new_page()
            await page.goto(f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], who, 'moderator')}")
            await page.get_by_role("button", name="Join now").click()
            await page.wait_for_function("window.room && window.room.me", timeout=30000)
            pages[who] = page
        talker_id = await pages["talker"].evaluate("window.room.me.id")
        for page in pages.values():
            await page.wait_for_function(f"window.room.speakers && window.room.speakers.active === '{talker_id}'", timeout=30000)
            await page.locator(f"#tile-{talker_id}.speaking").wait_for(state="attached", timeout=10000)
        assert await pages["listener"].evaluate("window.room.speakers.speaking") == [talker_id]  # the beeps are not speech
        await talking.close()
        await quiet.close()


async def test_the_worker_ranks_each_subscribers_active_speaker_before_the_other_cameras():
    """A media worker with two aiortc publishers (camera and microphone each; one talks) and a
    subscriber of both: it reports who started speaking, and the talker's camera ranks before the
    other one in that subscriber's adaptation."""
    from loadtest.peers import accept, new_pc, publisher_offer
    from mediaserver.media.worker import MediaWorker
    from test_media_worker import subscribe

    loopback_only_ice()
    worker = MediaWorker(bind_host="127.0.0.1", port=0)
    await worker.start()
    pcs = []
    try:
        transports = {}
        for who, voice in (("talker", Tone()), ("quiet", None)):
            pc = new_pc()
            t = worker.create_transport(who, "publish")
            await accept(pc, worker.publish(t.id, await publisher_offer(pc, audio_track=voice)))
            transports[who], pcs = t, pcs + [pc]
        routed = []
        for who in ("talker", "quiet"):  # (one subscriber transport per publisher here: the helper's way)
            pc, t, got, outs = await subscribe(worker, f"viewer-{who}", transports[who])
            pcs.append(pc)
            routed.append(t.id)
        # One subscriber hearing both: route the other publisher's tracks to the first transport as well.
        viewer = routed[0]
        for tr in transports["quiet"].tracks:
            worker.route(transports["quiet"].id, tr.ssrc, viewer, tr.ssrc ^ 0x5A5A, 96 if tr.kind == "video" else 111, tr.kind == "video")
        seen: list = []
        step = worker.adaptation.step
        worker.adaptation.step = lambda routes, *a: (seen.append(routes), step(routes, *a))[1]
        await wait_for(lambda: any(e["type"] == "speaking" for e in worker.adaptation_events), timeout=20)
        speaking = [e for e in worker.adaptation_events if e["type"] == "speaking"]
        assert {(e["publisher"], e["speaking"]) for e in speaking} == {(transports["talker"].id, True)}
        await wait_for(lambda: len(seen) >= 2, timeout=5)
        ranks = {r.publisher: r.priority for r in seen[-1] if r.subscriber == viewer}
        assert ranks == {transports["talker"].id: 1, transports["quiet"].id: 0}
    finally:
        for pc in pcs:
            await pc.close()
        worker.close()
