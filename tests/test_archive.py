"""Archives, end to end on a real server: an aiortc publisher whose frames carry their number
and a tone, recorded through the fast path, read back with ffprobe and PyAV; the rules and
refusals; two moderators at once; always mode; the composed file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import av
import httpx
import pytest

from loadtest.peers import CounterVideo, Tone, join_media, loopback_only_ice, read_counter, tone_strength, wait_for
from tests.browsers import frames, needs_chromium
from tests.helpers import create_key, eventually, join_room, make_room, make_token


async def _ready(http: httpx.AsyncClient, archive_id: str, timeout: float = 60) -> dict:
    async def done():
        a = (await http.get(f"/v1/archives/{archive_id}")).json()
        return a if a["status"] in ("ready", "failed") else None

    return await eventually(done, timeout=timeout, interval=0.25)


def _probe(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _counters(path) -> list[int]:
    with av.open(str(path)) as c:
        return [read_counter(f) for f in c.decode(video=0)]


def _audio(path) -> list[float]:
    import array

    samples: list[float] = []
    with av.open(str(path)) as c:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=48000)
        for frame in c.decode(audio=0):
            for out in resampler.resample(frame):
                samples.extend(array.array("h", bytes(out.planes[0]))[: out.samples])
    return samples


async def _publisher(server, http, room, identity="speaker", role="moderator", codec=None):
    loopback_only_ice()
    c = await join_media(server, http, room, identity, role)
    video, tone = CounterVideo(), Tone(440)
    reply = await c.publish(video_track=video, audio_track=tone, video_codec=codec)
    assert reply["type"] == "answer", reply
    return c, video, tone


async def _download(http, archive: dict, name: str, tmp_path):
    r = await http.get(f"/v1/archives/{archive['id']}/files/{name}")
    assert r.status_code == 200, r.text
    path = tmp_path / name
    path.write_bytes(r.content)
    return path


@pytest.mark.parametrize("codec, container", [("VP8", "webm"), ("H264", "mkv")])
async def test_an_archive_holds_every_frame_and_the_tone(server, tmp_path, codec, container):
    async with httpx.AsyncClient(base_url=server.url, auth=(server.key["id"], server.key["secret"])) as http:
        room = await make_room(http)
        pub, video, tone = await _publisher(server, http, room, codec=codec)
        watcher = await join_room(server, http, room, "watcher", "subscriber")
        session_id = pub.joined["session"]["id"]
        await wait_for(lambda: video.sent > 10)  # media flowing
        r = await http.post(f"/v1/sessions/{session_id}/archives", json={"name": "Weekly sync"})
        assert r.status_code == 201, r.text
        archive = r.json()
        assert archive["status"] == "recording" and archive["name"] == "Weekly sync" and archive["output"] == "individual"
        started = await watcher.wait_event("archive_started")
        assert started["data"]["archive_id"] == archive["id"]
        first, t0 = video.sent, time.monotonic()
        await asyncio.sleep(4)
        r = await http.post(f"/v1/archives/{archive['id']}/stop")
        assert r.status_code == 200 and r.json()["status"] in ("processing", "ready"), r.text
        span, last = time.monotonic() - t0, video.sent
        stopped = await watcher.wait_event("archive_stopped")
        assert stopped["data"]["reason"] == "api"
        done = await _ready(http, archive["id"])
        assert done["status"] == "ready", done
        kinds = {f["kind"] for f in done["files"]}
        assert kinds == {"track", "manifest"} and done["size"] == sum(f["size"] for f in done["files"]) > 0

        manifest = json.loads((await _download(http, done, "manifest.json", tmp_path)).read_text())
        by_kind = {s["kind"]: s for s in manifest["segments"]}
        assert set(by_kind) == {"audio", "video"} and manifest["not_recorded"] == []
        assert {s["participant_id"] for s in manifest["segments"]} == {pub.id}

        assert by_kind["video"]["codec"] == codec and by_kind["video"]["file"].endswith(f".{container}")
        vpath = await _download(http, done, by_kind["video"]["file"], tmp_path)
        info = _probe(vpath)
        assert info["streams"][0]["codec_name"] == codec.lower() and info["format"]["format_name"].startswith("matroska")
        assert (info["streams"][0]["width"], info["streams"][0]["height"]) == (320, 240)
        assert abs(float(info["format"]["duration"]) - span) <= 0.5, (info["format"]["duration"], span)
        counters = _counters(vpath)
        assert counters == sorted(counters), "frames out of order"
        expected = last - first  # the frames sent while it recorded
        assert len(set(counters)) >= 0.95 * expected * (span - 0.5) / span, (len(counters), expected)

        apath = await _download(http, done, by_kind["audio"]["file"], tmp_path)
        ainfo = _probe(apath)
        assert ainfo["streams"][0]["codec_name"] == "opus"
        assert abs(float(ainfo["format"]["duration"]) - span) <= 0.5
        samples = _audio(apath)
        assert tone_strength(samples[48000:96000], 440) > 0.8  # the tone, not noise
        assert tone_strength(samples[48000:96000], 1000) < 0.05

        r = await http.get(f"/v1/archives/{archive['id']}/zip")
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip" and len(r.content) > done["size"]
        listed = (await http.get("/v1/archives", params={"session_id": session_id})).json()["archives"]
        assert [a["id"] for a in listed] == [archive["id"]]
        events = (await http.get(f"/v1/sessions/{session_id}/events")).json()
        assert {"archive_started", "archive_stopped", "archive_ready"} <= {e["type"] for e in events}

        r = await http.delete(f"/v1/archives/{archive['id']}")
        assert r.status_code == 200
        assert (await http.get(f"/v1/archives/{archive['id']}")).json()["error"]["code"] == "archive_not_found"
        await pub.close()
        await watcher.close()


async def test_refusals_and_two_moderators_at_once(server):
    async with httpx.AsyncClient(base_url=server.url, auth=(server.key["id"], server.key["secret"])) as http:
        # Relayed and end-to-end encrypted rooms cannot be archived.
        for fields, code in (({"media_mode": "relayed"}, "archive_requires_routed"),
                             ({"encryption": "session_key"}, "archive_not_allowed_e2ee")):
            room = await make_room(http, **fields)
            p = await join_room(server, http, room, "mod", "moderator")
            r = await http.post(f"/v1/sessions/{p.joined['session']['id']}/archives", json={})
            assert r.status_code == 409 and r.json()["error"]["code"] == code, r.text
            reply = await p.command({"type": "archive_start"})
            assert reply["type"] == "error" and reply["code"] == code
            await p.close()

        room = await make_room(http)
        mods = [await join_room(server, http, room, f"mod{i}", "moderator") for i in range(2)]
        viewer = await join_room(server, http, room, "viewer", "publisher")
        reply = await viewer.command({"type": "archive_start"})
        assert reply["type"] == "error" and reply["code"] == "not_moderator"
        bad = await mods[0].command({"type": "archive_start", "output": "film"})
        assert bad["type"] == "error" and bad["code"] == "invalid_request"
        replies = await asyncio.gather(*(m.command({"type": "archive_start"}) for m in mods))
        assert sorted(r["type"] for r in replies) == ["ack", "error"], replies
        assert next(r for r in replies if r["type"] == "error")["code"] == "archive_already_recording"
        session_id = mods[0].joined["session"]["id"]
        r = await http.post(f"/v1/sessions/{session_id}/archives", json={})
        assert r.json()["error"]["code"] == "archive_already_recording"
        listed = (await http.get("/v1/archives", params={"session_id": session_id})).json()["archives"]
        assert len(listed) == 1 and listed[0]["status"] == "recording"
        archive_id = listed[0]["id"]
        r = await http.get(f"/v1/archives/{archive_id}/zip")
        assert r.json()["error"]["code"] == "archive_in_progress"
        assert (await http.delete(f"/v1/archives/{archive_id}")).json()["error"]["code"] == "archive_in_progress"
        stops = await asyncio.gather(*(m.command({"type": "archive_stop"}) for m in mods))
        assert sorted(r["type"] for r in stops) == ["ack", "error"], stops
        assert next(r for r in stops if r["type"] == "error")["code"] == "archive_not_recording"
        done = await _ready(http, archive_id)
        assert done["status"] == "ready" and done["stop_reason"] == "moderator"
        r = await http.post(f"/v1/archives/{archive_id}/stop")
        assert r.json()["error"]["code"] == "archive_not_recording"
        r = await http.get(f"/v1/archives/{archive_id}/files/..%2Fmanifest.json")
        assert r.status_code == 404
        # Malformed requests are refused with what to fix; nothing is written.
        for body in ({"name": "x" * 101}, {"output": "film"}, {"name": "a\x00b"}, {"colour": "red"}):
            r = await http.post(f"/v1/sessions/{session_id}/archives", json=body)
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request", (body, r.text)
        assert len((await http.get("/v1/archives", params={"session_id": session_id})).json()["archives"]) == 1
        assert (await http.get("/v1/archives", params={"status": "paused"})).status_code == 400
        # Another team sees none of it; no key, nothing at all.
        other = create_key(server.env, team="archive-outsiders")
        async with httpx.AsyncClient(base_url=server.url, auth=(other["id"], other["secret"])) as outsider:
            for method, path in (("GET", f"/v1/archives/{archive_id}"), ("POST", f"/v1/archives/{archive_id}/stop"),
                                 ("GET", f"/v1/archives/{archive_id}/zip"), ("DELETE", f"/v1/archives/{archive_id}"),
                                 ("GET", f"/v1/archives/{archive_id}/files/manifest.json")):
                r = await outsider.request(method, path)
                assert r.status_code == 404 and r.json()["error"]["code"] == "archive_not_found", (method, path, r.text)
            r = await outsider.post(f"/v1/sessions/{session_id}/archives", json={})
            assert r.json()["error"]["code"] == "session_not_found"
            assert (await outsider.get("/v1/archives")).json()["archives"] == []
        assert (await httpx.AsyncClient(base_url=server.url).get("/v1/archives")).status_code == 401
        assert (await http.get(f"/v1/archives/{archive_id}")).json()["status"] == "ready"  # untouched
        for p in (*mods, viewer):
            await p.close()


@pytest.mark.parametrize("room_fields", [{"archive_mode": "always", "media_mode": "auto"}])
async def test_always_mode_archives_from_the_first_join_and_composes(server, tmp_path, room_fields):
    async with httpx.AsyncClient(base_url=server.url, auth=(server.key["id"], server.key["secret"])) as http:
        room = await make_room(http, **room_fields)
        a, video_a, _ = await _publisher(server, http, room, "alice", "moderator")
        assert a.joined["archive"] is not None and a.joined["media_mode"] == "routed"  # archiving: routed for good
        session_id = a.joined["session"]["id"]
        b, video_b, _ = await _publisher(server, http, room, "bob", "publisher")
        assert b.joined["archive"]["id"] == a.joined["archive"]["id"]
        await wait_for(lambda: video_a.sent > 60 and video_b.sent > 60, timeout=30)
        r = await http.post(f"/v1/sessions/{session_id}/end")
        assert r.status_code == 200
        archive_id = a.joined["archive"]["id"]
        done = await _ready(http, archive_id, timeout=120)
        assert done["status"] == "ready" and done["stop_reason"] == "session_ended" and done["output"] == "both", done
        composed = await _download(http, done, "composed.mp4", tmp_path)
        info = _probe(composed)
        codecs = sorted(s["codec_name"] for s in info["streams"])
        assert codecs == ["aac", "h264"], codecs
        video = next(s for s in info["streams"] if s["codec_type"] == "video")
        assert (video["width"], video["height"]) == (1280, 360)  # two cells side by side
        # Both participants are in it: each half shows its publisher's counting frames.
        with av.open(str(composed)) as c:
            frames = [f for f in c.decode(video=0)]
        # (each 320 x 240 picture scaled to 480 x 360, centred in its 640 x 360 cell)
        late = [read_counter(frames[-5], (x + 80, 0, 480, 360)) for x in (0, 640)]
        earlier = [read_counter(frames[-30], (x + 80, 0, 480, 360)) for x in (0, 640)]
        sent = (video_a.sent, video_b.sent)
        assert all(30 < n <= most for n, most in zip(late, sent)), (late, sent)
        assert all(e < n for e, n in zip(earlier, late)), (earlier, late)  # moving pictures, not a still
        await a.close()
        await b.close()



@needs_chromium
@pytest.mark.parametrize("codec, mode", [("VP8", "manual"), ("H264", "always"), ("VP9", "manual")])
async def test_browsers_are_archived_from_the_meeting_page_or_always(server, browser, tmp_path, codec, mode):
    """Chromium publishers (VP8 or H264, and Opus). Manual: the speaker records from the page and
    everyone sees the badge come and go. Always: recorded from the first join until the session
    ends. Either way the archive holds both browsers' tracks and a composed file with both."""
    async with server.http() as http:
        room = await make_room(http, name="Recorded call", media_mode="routed", archive_mode=mode)
        pages = []
        for identity, role in (("rec-ann", "moderator"), ("rec-bob", "publisher")):
            page = await (await browser.new_context()).new_page()
            token = await make_token(http, room["id"], identity, role)
            await page.goto(f"{server.url}/join/{room['id']}?token={token}&autojoin=1&codec={codec}")
            pages.append(page)
        ann, bob = pages
        await eventually(lambda: _decoding(pages), timeout=60, interval=0.5)
        assert await bob.locator("#record").is_hidden()  # only speakers record
        if mode == "manual":
            assert await ann.locator("#recording").is_hidden()
            await ann.get_by_role("button", name="Record").click()
        for page in pages:
            await page.locator("#recording").wait_for(state="visible", timeout=15000)
        await asyncio.sleep(4)
        if mode == "manual":
            await ann.get_by_role("button", name="Stop recording").click()
            for page in pages:
                await page.locator("#recording").wait_for(state="hidden", timeout=15000)
        else:
            assert await ann.get_by_role("button", name="Stop recording").is_visible()
            await http.post(f"/v1/sessions/{await ann.evaluate('window.room.session.id')}/end")
        session_id = await ann.evaluate("window.room.session.id")
        archive = (await http.get("/v1/archives", params={"session_id": session_id})).json()["archives"][0]
        done = await _ready(http, archive["id"], timeout=120)
        assert done["status"] == "ready" and done["output"] == "both", done
        assert done["stop_reason"] == ("moderator" if mode == "manual" else "session_ended")
        manifest = json.loads((await _download(http, done, "manifest.json", tmp_path)).read_text())
        tracks = {(s["name"], s["kind"], s["codec"]) for s in manifest["segments"]}
        assert {(n, k) for n, k, _ in tracks} >= {(who, kind) for who in ("rec-ann", "rec-bob") for kind in ("audio", "video")}, tracks
        assert {c for _, k, c in tracks if k == "video"} == {codec}
        for s in manifest["segments"]:
            info = _probe(await _download(http, done, s["file"], tmp_path))
            assert info["streams"][0]["codec_name"] == (codec.lower() if s["kind"] == "video" else "opus")
            assert 2.5 < float(info["format"]["duration"]) < (7 if mode == "manual" else 30), (s, info["format"]["duration"])
        composed = _probe(await _download(http, done, "composed.mp4", tmp_path))
        video = next(s for s in composed["streams"] if s["codec_type"] == "video")
        assert (video["width"], video["height"]) == (1280, 360)  # both browsers, side by side
        if codec != "VP8":
            return

        # The operator's record shows it, its files and their size, and downloads it.
        dash = await (await browser.new_context(accept_downloads=True)).new_page()
        await dash.goto(f"{server.url}/dashboard")
        await dash.get_by_label("API key ID").fill(server.key["id"])
        await dash.get_by_label("API secret").fill(server.key["secret"])
        await dash.get_by_role("button", name="Sign in").click()
        await dash.get_by_label("Search by room ID, room name, session ID or comment").fill(session_id)
        await dash.get_by_role("row", name=f"Session {session_id} of Recorded call").click()
        archives = dash.locator("#archives")
        await archives.get_by_text("composed.mp4").wait_for(timeout=15000)
        assert "ready" in await archives.inner_text() and "manifest.json" in await archives.inner_text()
        async with dash.expect_download() as download:
            await dash.get_by_role("button", name=f"Download the archive {done['name']}").click()
        assert (await download.value).suggested_filename == f"{done['id']}.zip"


async def _decoding(pages) -> bool:
    counts = [await frames(p) for p in pages]
    return all(c and max(c) >= 10 for c in counts)


async def test_segments_a_dead_recorder_left_open_are_finished_by_the_next_one(tmp_path):
    """Without Ray: a segment open when its recorder's process died (its container never closed)
    is finished by whoever next stops the archive on that node, and listed like any other: every
    frame the dead muxer had written out, in a file that decodes; nothing is left as ``.part``."""
    from fractions import Fraction

    from mediaserver.media.recorder import OPEN_LOG, SEGMENT_LOG, RecorderService, Segment, TrackInfo

    enc = av.CodecContext.create("libvpx", "w")
    enc.width, enc.height, enc.pix_fmt, enc.time_base = 64, 48, "yuv420p", Fraction(1, 30)
    enc.options = {"g": "15", "deadline": "realtime"}
    packets = []
    for i in range(90):  # 3 s at 30 frames a second
        frame = av.VideoFrame(64, 48, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes([(i * 7) % 256]) * plane.buffer_size)
        frame.pts = i
        packets += [(bytes(p), p.is_keyframe) for p in enc.encode(frame)]
    assert packets[0][1] and len(packets) >= 85

    directory = tmp_path / "archives" / "arc_dead"
    directory.mkdir(parents=True)
    info = TrackInfo(track_id="part_a/0", participant_id="part_a", kind="video", codec="VP8", clock_rate=90000, name="A")
    seg = Segment(str(directory), "part_a-0-0", info, 1.25)
    (directory / OPEN_LOG).write_text(json.dumps(seg.describe()) + "\n")
    for i, (data, key) in enumerate(packets):
        seg.add(data, i * 3000, key)
    # The process dies here: the container is never closed (what it held in memory is gone).
    assert (directory / "part_a-0-0.webm.part").stat().st_size > 0

    result = await RecorderService(host="127.0.0.1", archive_dir=str(tmp_path / "archives")).stop_archive("arc_dead")
    [segment] = result["segments"]
    assert segment["file"] == "part_a-0-0.webm" and segment["salvaged"] and segment["offset"] == 1.25
    assert sorted(p.name for p in directory.iterdir()) == [SEGMENT_LOG, "part_a-0-0.webm"]
    with av.open(str(directory / "part_a-0-0.webm")) as c:
        decoded = list(c.decode(video=0))
    # Clusters of half a second are on disk as they close: at least the first 2.5 s survive.
    assert segment["frames"] == len(decoded) >= 75 and 2.4 <= segment["duration"] <= 3.0, (segment, len(decoded))
    # Asked again (its log now has it), the same segment, finished once.
    again = await RecorderService(host="127.0.0.1", archive_dir=str(tmp_path / "archives")).stop_archive("arc_dead")
    assert again["segments"] == [segment]
