"""Publisher audio fallback (issue 12, part 4): a publisher whose uplink cannot carry its video
sends audio only for now and says so (``video_fallback``; mediaserver.js decides from the
browser's own estimate, see test_browser_adaptation.py); every subscriber of the track is told
with reason ``publisher``, newcomers see it on the track, and what cannot be said is refused."""

from __future__ import annotations

from loadtest.peers import join_media, loopback_only_ice, wait_for
from tests.helpers import make_room


async def test_subscribers_are_told_and_bad_claims_are_refused(server):
    loopback_only_ice()
    async with server.http() as http:
        room = await make_room(http, name="Weak uplink", media_mode="routed")
        cam = await join_media(server, http, room, "cam", "moderator")
        viewer = await join_media(server, http, room, "viewer", "subscriber")
        late = None
        try:
            assert (await cam.publish())["type"] == "answer"
            await wait_for(lambda: viewer.got.video_frames >= 10, timeout=40)
            tracks = {e["data"]["kind"]: e["data"]["track_id"] for e in viewer.events if e["event"] == "track_published"}
            video, audio = tracks["video"], tracks["audio"]
            for state in ("video_disabled_warning", "video_disabled"):
                assert (await cam.command({"type": "video_fallback", "track_id": video, "state": state}))["type"] == "ack"
            await wait_for(lambda: [m["type"] for m in viewer.adaptation] == ["video_disabled_warning", "video_disabled"], timeout=10)
            assert all(m["reason"] == "publisher" and m["track_id"] == video for m in viewer.adaptation)
            # A newcomer sees it on the track.
            late = await join_media(server, http, room, "late", "subscriber")
            assert {t["id"]: t["fallback"] for t in late.joined["tracks"]} == {video: "video_disabled", audio: None}
            # What cannot be said: another's track, audio, a track that is not there, a state
            # that is not one, and a subscriber who publishes nothing.
            refusals = [
                (viewer, {"track_id": video, "state": "video_disabled"}, "not_found"),
                (cam, {"track_id": audio, "state": "video_disabled"}, "invalid_request"),
                (cam, {"track_id": f"{cam.id}/9", "state": "video_disabled"}, "not_found"),
                (cam, {"track_id": video, "state": "paused"}, "invalid_request"),
                (cam, {"track_id": "x" * 200, "state": "video_disabled"}, "invalid_request"),
            ]
            for who, body, code in refusals:
                reply = await who.command({"type": "video_fallback", **body})
                assert (reply["type"], reply.get("code")) == ("error", code), (body, reply)
            assert len(viewer.adaptation) == 2  # (nothing more was told)
            assert (await cam.command({"type": "video_fallback", "track_id": video, "state": "video_enabled"}))["type"] == "ack"
            await wait_for(lambda: viewer.adaptation[-1]["type"] == "video_enabled", timeout=10)
            # In the publisher's log, for the dashboard.
            sid = cam.joined["session"]["id"]
            log = (await http.get(f"/v1/sessions/{sid}/participants/{cam.id}")).json()["events"]
            assert [e["type"] for e in log if e["type"].startswith("publisher_")] == [
                "publisher_video_disabled_warning", "publisher_video_disabled", "publisher_video_enabled"]
        finally:
            for c in (cam, viewer, late):
                if c is not None:
                    await c.close()
