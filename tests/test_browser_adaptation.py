"""Audio fallback and video recovery per subscriber (issue 12, part 4), as users would meet it: a
Chromium camera (simulcast), a viewer on a clean link and a viewer behind a weak one (300 kbit/s,
40 ms, 2% loss each way: a shaped link into a namespace of its own, tests/shaped_link.py). The
weak viewer's video from that camera steps down and pauses (audio goes on, the page says so);
the clean viewer keeps the full layer and the camera keeps sending it. When the link clears the
weak viewer's video comes back by itself. The same for a camera sent as one stream (an aiortc
client): nothing to step down to, so the weak viewer's video pauses, and the camera is not held
to the weak link's pace."""

from __future__ import annotations

import asyncio
import os
import shutil

import av
import pytest
from aiortc import VideoStreamTrack

from loadtest.peers import join_media

from tests.browsers import CHROMIUM, FLAGS, needs_chromium, noise_camera
from tests.helpers import ServerProcess, create_key, make_room, make_token, server_env
from tests.shaped_link import NEAR, Shape, ShapedLink

pytestmark = [
    needs_chromium,
    pytest.mark.skipif(not shutil.which("ffmpeg"), reason="ffmpeg makes the camera's file"),
    pytest.mark.skipif(not shutil.which("nsenter"), reason="nsenter runs the weak viewer's browser behind the link"),
]

WEAK = Shape(rate=300_000, delay=0.04, loss=0.02)
RECEIVED = """async () => {
  const out = { video: [], audioPackets: 0, videoBytes: 0 };
  for (const [, pc] of window.room._receiving()) {
    (await pc.getStats()).forEach((s) => {
      if (s.type !== "inbound-rtp") return;
      if (s.kind === "audio") out.audioPackets += s.packetsReceived || 0;
      else { out.video.push({ frames: s.framesDecoded || 0, width: s.frameWidth || 0, track: s.trackIdentifier });
             out.videoBytes += s.bytesReceived || 0; }
    });
  }
  out.t = performance.now();
  return out;
}"""
LIMIT = """async () => { let r = null; (await window.room.publishPc.getStats()).forEach((s) => {
  if (s.type === "outbound-rtp" && s.kind === "video" && s.qualityLimitationReason !== "none") r = s.qualityLimitationReason; }); return r; }"""
SENDING = """() => window.room.publishPc.getTransceivers().find((t) => t.sender.track && t.sender.track.kind === "video")
  .sender.getParameters().encodings.map((e) => e.active)"""


@pytest.fixture(scope="module")
def link():
    with ShapedLink() as shaped:
        yield shaped


@pytest.fixture(scope="module")
def near_server(link, tmp_path_factory):
    """A server on the link's near address: the clean pages reach it there over lo, the weak
    viewer through the link."""
    data_dir = tmp_path_factory.mktemp("adaptation")
    env = server_env(data_dir, host=NEAR, media_bind_host=NEAR,
                     media_allowed_networks='["127.0.0.0/8", "10.77.0.0/24"]')
    srv = ServerProcess(data_dir=data_dir, env=env, host=NEAR)
    srv.key = create_key(env)
    srv.start()
    yield srv
    srv.stop()


async def _until(what: str, check, timeout: float):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got:
            return got
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.3)


async def test_a_weak_link_falls_back_to_audio_for_that_viewer_only_and_recovers(link, near_server, tmp_path):
    from playwright.async_api import async_playwright

    srv = near_server
    link.clear()  # (whatever the test before left)
    camera = noise_camera(tmp_path)
    async with async_playwright() as p, srv.http() as http:
        # (Not loopback, so not a secure context by itself: camera and microphone need one.)
        flags = FLAGS + [f"--unsafely-treat-insecure-origin-as-secure={srv.url}"]
        near = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags + [f"--use-file-for-fake-video-capture={camera}"])
        far = await p.chromium.launch(executable_path=link.far_executable(CHROMIUM, str(tmp_path)), headless=True, args=flags)
        room = await make_room(http, name="Weak link", media_mode="routed")
        pages = {}
        # Wide windows: each viewer's tiles are large enough to want the camera's full layer.
        for who, browser, role in (("cam", near, "moderator"), ("clean", near, "subscriber"), ("weak", far, "subscriber")):
            page = await (await browser.new_context(viewport={"width": 1920, "height": 1080})).new_page()
            await page.goto(f"{srv.url}/join/{room['id']}?token={await make_token(http, room['id'], who, role)}")
            await page.get_by_role("button", name="Join now").click()
            pages[who] = page
        cam, clean, weak = pages["cam"], pages["clean"], pages["weak"]
        await cam.wait_for_function("window.room && window.room.publishPc && window.room.publishPc.connectionState === 'connected'", timeout=30000)
        track = await cam.evaluate("window.room.trackIdOf(window.room._stream.getVideoTracks()[0])")

        async def video(page):
            return next((v for v in (await page.evaluate(RECEIVED))["video"] if v["track"] == track), None)

        # Both viewers decode the full layer on a clean link.
        for page in (clean, weak):
            await _until("the full layer for each viewer", lambda page=page: _full(page, video), 45)

        await weak.evaluate("window.__adapted = []; window.room.addEventListener('video_adaptation', (e) => window.__adapted.push(e.detail.state))")
        state = f"window.room.videoStates.get('{track}') || null"
        # The weak viewer's link degrades: it gets what the link carries, the lower layer (at
        # half or a quarter of the frames if that is what fits: the camera sends temporal
        # layers), else audio only after a warning (which one depends on the lower layer's rate).
        link.set(WEAK)
        shaped = asyncio.get_running_loop().time()
        outcome = None
        while outcome is None:
            assert asyncio.get_running_loop().time() - shaped < 60, await weak.evaluate("window.__adapted")
            if await weak.evaluate(state) == "video_disabled":
                outcome = "audio only"
                break
            v1 = await video(weak)
            await asyncio.sleep(3)
            v2 = await video(weak)
            # (Given the time to step down: one step a second at most, and the full layer does
            # not fit, so it cannot be what plays then.)
            settling = asyncio.get_running_loop().time() - shaped < 15
            if not settling and await weak.evaluate(state) != "video_disabled" and v2["width"] <= 400 and v2["frames"] >= v1["frames"] + 2:
                outcome = f"the lower layer ({v2['width']} px, {(v2['frames'] - v1['frames']) / 3:.1f} fps)"
        settled = asyncio.get_running_loop().time() - shaped
        if outcome == "audio only":
            await weak.locator(".notice.adapt", has_text="Video paused").wait_for(timeout=5000)
            events = await weak.evaluate("window.__adapted")
            assert events.index("video_disabled_warning") < events.index("video_disabled"), events
            # Paused: (almost) no video frames, audio goes on.
            a, v = await weak.evaluate(RECEIVED), await video(weak)
            await asyncio.sleep(2)
            b, w = await weak.evaluate(RECEIVED), await video(weak)
            assert b["audioPackets"] > a["audioPackets"] + 20, (a, b)
            # No video but a trial's: the lowest layer at a quarter of the camera's 30 fps, TRIAL s
            # at a time (mediaserver/media/adaptation.py); playing, even that layer at half its
            # frames, is 15 fps. (A frame count of 15 in 2 s failed once with a trial the whole
            # window long: 16 frames.)
            fps = (w["frames"] - v["frames"]) / ((b["t"] - a["t"]) / 1000)
            assert fps <= 30 / 4 * 1.3, (v, w, fps)
        # The clean viewer is untouched: the full layer, at its rate; the camera sends it still.
        c1, v1 = await clean.evaluate(RECEIVED), await video(clean)
        await asyncio.sleep(3)
        c2, v2 = await clean.evaluate(RECEIVED), await video(clean)
        rate = 8 * (c2["videoBytes"] - c1["videoBytes"]) / ((c2["t"] - c1["t"]) / 1000)
        limit = await cam.evaluate(LIMIT)
        print(f"weak viewer: {outcome} {settled:.1f} s after the link degraded; clean viewer meanwhile: "
              f"{rate / 1e6:.2f} Mbit/s, {v2['width']} px wide (the camera's encoder limited by: {limit})")
        # Its rate and frame rate are the camera's and its own CPU's (three browsers share two cores
        # here: 4-30 fps seen), so what is asserted is the layer and that it plays on.
        assert v2["width"] >= 600 and v2["frames"] > v1["frames"], (v1, v2, rate)
        assert await cam.evaluate(SENDING) == [True, True]
        # (Its own link is clean; on this busy 2-core machine a CPU stall could still make one of its
        # reports look lossy, so what is asserted is what it sees: never paused, the full layer.)
        assert await clean.evaluate(state) in (None, "video_disabled_warning_lifted"), await clean.evaluate(state)

        # The link clears: the full video comes back by itself (from a keyframe), and with it
        # video_enabled if it had been paused.
        link.clear()
        cleared = asyncio.get_running_loop().time()
        before = (await video(weak))["frames"]
        if outcome == "audio only":
            await _until("the weak viewer's video enabled again",
                         lambda: weak.evaluate(f"window.room.videoStates.get('{track}') === 'video_enabled'"), 30)
            await _until("frames decoded again", lambda: _more(weak, video, before + 10), 15)
        back = asyncio.get_running_loop().time() - cleared
        await _until("the weak viewer's full layer again", lambda: _full(weak, video, before + 10), 40)
        full = asyncio.get_running_loop().time() - cleared
        events = await weak.evaluate("window.__adapted")
        print(f"after the link cleared: video again in {back:.1f} s, the full layer in {full:.1f} s; the weak viewer's events: {events}")
        if "video_disabled" in events:
            # Enabled after its last pause (a passing warning may follow once it plays: lifted).
            last_pause = len(events) - 1 - events[::-1].index("video_disabled")
            assert "video_enabled" in events[last_pause:], events
        # (None: it never came to a warning, the lower layer at fewer frames being what fitted.)
        assert await weak.evaluate(state) in ("video_enabled", "video_disabled_warning_lifted", None), events
        assert await weak.locator(".notice.adapt").count() == 0
        await near.close()
        await far.close()


async def _full(page, video, frames: int = 10):
    v = await video(page)
    return v is not None and v["width"] >= 600 and v["frames"] > frames


async def _more(page, video, frames):
    v = await video(page)
    return v is not None and v["frames"] > frames


class NoiseVideo(VideoStreamTrack):
    """320 x 240 frames of noise: an encoder spends whatever bitrate it is given on them."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(320, 240, "yuv420p")
        for plane in frame.planes:
            plane.update(os.urandom(plane.buffer_size))
        frame.pts, frame.time_base = pts, time_base
        return frame


async def test_a_camera_sent_as_one_stream_pauses_for_the_weak_viewer_only_and_recovers(link, near_server, tmp_path):
    from playwright.async_api import async_playwright

    srv = near_server
    link.clear()  # (whatever the test before left)
    async with async_playwright() as p, srv.http() as http:
        flags = FLAGS + [f"--unsafely-treat-insecure-origin-as-secure={srv.url}"]
        near = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        far = await p.chromium.launch(executable_path=link.far_executable(CHROMIUM, str(tmp_path)), headless=True, args=flags)
        room = await make_room(http, name="Weak link, one stream", media_mode="routed")
        cam = await join_media(srv, http, room, "cam", role="moderator")
        reply = await cam.publish(video_track=NoiseVideo())
        assert reply["type"] == "answer", reply
        pages = {}
        for who, browser in (("clean", near), ("weak", far)):
            page = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
            await page.goto(f"{srv.url}/join/{room['id']}?token={await make_token(http, room['id'], who, 'subscriber')}")
            await page.get_by_role("button", name="Join now").click()
            pages[who] = page
        clean, weak = pages["clean"], pages["weak"]

        async def video(page):
            return next(iter((await page.evaluate(RECEIVED))["video"]), None)  # the room's only video

        for page in (clean, weak):
            await _until("frames for each viewer", lambda page=page: _more(page, video, 20), 45)
        track = (await video(weak))["track"]
        state = f"window.room.videoStates.get('{track}') || null"
        await weak.evaluate("window.__adapted = []; window.room.addEventListener('video_adaptation', (e) => window.__adapted.push(e.detail.state))")

        link.set(WEAK)
        shaped = asyncio.get_running_loop().time()
        await _until("the weak viewer's video paused", lambda: weak.evaluate(f"({state}) === 'video_disabled'"), 60)
        settled = asyncio.get_running_loop().time() - shaped
        events = await weak.evaluate("window.__adapted")
        assert events.index("video_disabled_warning") < events.index("video_disabled"), events
        await weak.locator(".notice.adapt", has_text="Video paused").wait_for(timeout=5000)
        a, v = await weak.evaluate(RECEIVED), await video(weak)
        c1, cv1 = await clean.evaluate(RECEIVED), await video(clean)
        await asyncio.sleep(3)
        b, w = await weak.evaluate(RECEIVED), await video(weak)
        c2, cv2 = await clean.evaluate(RECEIVED), await video(clean)
        rate = 8 * (c2["videoBytes"] - c1["videoBytes"]) / ((c2["t"] - c1["t"]) / 1000)
        print(f"one stream: weak viewer audio only {settled:.1f} s after the link degraded; clean viewer meanwhile "
              f"{rate / 1e6:.2f} Mbit/s, {cv2['frames'] - cv1['frames']} frames in 3 s")
        assert b["audioPackets"] > a["audioPackets"] + 30, (a, b)  # audio goes on
        assert w["frames"] - v["frames"] <= 5, (v, w)
        # The clean viewer plays on, and above what the weak link carries: the camera is not held
        # to the weak viewer's estimate.
        assert cv2["frames"] > cv1["frames"] + 10 and rate > 400_000, (cv1, cv2, rate)
        assert await clean.evaluate(f"window.room.videoStates.get('{track}') || null") in (None, "video_disabled_warning_lifted")

        link.clear()
        cleared = asyncio.get_running_loop().time()
        before = (await video(weak))["frames"]
        await _until("the weak viewer's video enabled again", lambda: weak.evaluate(f"({state}) === 'video_enabled'"), 30)
        await _until("frames decoded again", lambda: _more(weak, video, before + 10), 15)
        print(f"one stream: video again {asyncio.get_running_loop().time() - cleared:.1f} s after the link cleared; "
              f"events {await weak.evaluate('window.__adapted')}")
        assert await weak.locator(".notice.adapt").count() == 0
        await cam.close()
        await near.close()
        await far.close()


WEAK_UPLINK = Shape(rate=100_000, delay=0.04, loss=0.02)


async def test_a_camera_whose_uplink_cannot_carry_video_goes_audio_only_and_comes_back(link, near_server, tmp_path):
    """Publisher audio fallback: the camera's page behind a weak link (100 kbit/s, 40 ms, 2%
    each way): its browser's own estimate falls under what video needs, so it warns, sends
    audio only and says so; the viewer is told (reason publisher) and hears the audio; when the
    link clears, the camera tries its lowest layer, and the viewer sees it again."""
    from playwright.async_api import async_playwright

    srv = near_server
    link.clear()
    camera = noise_camera(tmp_path)
    async with async_playwright() as p, srv.http() as http:
        flags = FLAGS + [f"--unsafely-treat-insecure-origin-as-secure={srv.url}"]
        near = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        far = await p.chromium.launch(executable_path=link.far_executable(CHROMIUM, str(tmp_path)), headless=True,
                                      args=flags + [f"--use-file-for-fake-video-capture={camera}"])
        room = await make_room(http, name="Weak uplink", media_mode="routed")
        pages = {}
        for who, browser, role in (("cam", far, "moderator"), ("viewer", near, "subscriber")):
            page = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
            await page.goto(f"{srv.url}/join/{room['id']}?token={await make_token(http, room['id'], who, role)}")
            await page.get_by_role("button", name="Join now").click()
            pages[who] = page
        cam, viewer = pages["cam"], pages["viewer"]
        await cam.wait_for_function("window.room && window.room.publishPc && window.room.publishPc.connectionState === 'connected'", timeout=30000)
        track = await cam.evaluate("window.room.trackIdOf(window.room._stream.getVideoTracks()[0])")

        async def video(page=viewer):
            return next((v for v in (await page.evaluate(RECEIVED))["video"] if v["track"] == track), None)

        await _until("the viewer decodes the camera", lambda: _more(viewer, video, 20), 45)
        await cam.evaluate("window.__uplink = []; window.room.addEventListener('uplink', (e) => window.__uplink.push(e.detail.state))")
        state = f"window.room.videoStates.get('{track}') || null"
        link.set(WEAK_UPLINK)
        shaped = asyncio.get_running_loop().time()
        await _until("the viewer told the camera is audio only", lambda: viewer.evaluate(f"({state}) === 'video_disabled'"), 60)
        settled = asyncio.get_running_loop().time() - shaped
        await viewer.locator(".notice.adapt", has_text="cam's connection is too weak").wait_for(timeout=5000)
        await cam.locator(".notice.adapt", has_text="sending audio only").wait_for(timeout=5000)
        assert (await cam.evaluate("window.__uplink"))[:2] == ["warned", "disabled"]
        a, v = await viewer.evaluate(RECEIVED), await video()
        await asyncio.sleep(3)
        b, w = await viewer.evaluate(RECEIVED), await video()
        assert b["audioPackets"] > a["audioPackets"] + 30, (a, b)  # its audio goes on
        # (a trial of the lowest layer may show a few frames)
        print(f"weak uplink: the camera audio only {settled:.1f} s after its link degraded ({w['frames'] - v['frames']} frames in 3 s)")

        link.clear()
        cleared = asyncio.get_running_loop().time()
        before = (await video())["frames"]
        await _until("the viewer told the camera's video is back", lambda: viewer.evaluate(f"({state}) === 'video_enabled'"), 45)
        await _until("frames decoded again", lambda: _more(viewer, video, before + 10), 15)
        print(f"weak uplink: video again {asyncio.get_running_loop().time() - cleared:.1f} s after the link cleared; "
              f"the camera's states {await cam.evaluate('window.__uplink')}")
        assert await viewer.locator(".notice.adapt").count() == 0 and await cam.locator(".notice.adapt").count() == 0
        await near.close()
        await far.close()
