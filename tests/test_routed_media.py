"""Routed sessions end to end: aiortc clients join through the gateway's WebSocket, publish and
subscribe, and media flows through the server's MediaWorker actor (Ray) over loopback."""

from __future__ import annotations

import asyncio

from tests.helpers import eventually, make_room
from loadtest.peers import join_media, loopback_only_ice, wait_for


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


async def test_publisher_reaches_three_subscribers_and_nobody_else(server):
    loopback_only_ice()
    async with server.http() as http:
        room = await make_room(http, name="routed", media_mode="routed")
        other_room = await make_room(http, name="elsewhere", media_mode="routed")
        pub = await join_media(server, http, room, "alice", "moderator")
        subs = [await join_media(server, http, room, f"viewer{i}", "subscriber") for i in range(3)]
        outsider = await join_media(server, http, other_room, "outsider")
        try:
            reply = await pub.publish()
            assert reply["type"] == "answer", reply
            assert "a=ice-lite" in reply["sdp"] and "a=setup:passive" in reply["sdp"]
            await wait_for(lambda: all(s.got.video_frames >= 30 and s.got.audio_frames >= 30 for s in subs), timeout=60)
            for s in subs:
                assert len(set(s.got.lumas)) >= 5, "decoded video must change over time"
                published = [e for e in s.events if e["event"] == "track_published"]
                assert {e["data"]["kind"] for e in published} == {"audio", "video"}
                assert all(e["participant_id"] == pub.id for e in published)
            assert outsider.got.video_frames == 0 and outsider.got.audio_frames == 0 and outsider.offers_answered == 0

            # A viewer that unsubscribes from the video stops receiving it; the others do not.
            video = next(e["data"]["track_id"] for e in subs[0].events if e["event"] == "track_published" and e["data"]["kind"] == "video")
            assert (await subs[0].command({"type": "subscribe", "track_id": video, "subscribed": False}))["type"] == "ack"
            await wait_for(lambda: subs[0].offers_answered >= 2, timeout=20)
            await asyncio.sleep(1)
            frozen, others = subs[0].got.video_frames, subs[1].got.video_frames
            await asyncio.sleep(2)
            assert subs[0].got.video_frames == frozen
            assert subs[1].got.video_frames > others + 20

            # A subscriber may not publish; muting is announced to everyone.
            refused = await subs[2].publish()
            assert (refused["type"], refused["code"]) == ("error", "publish_not_allowed")
            assert (await pub.command({"type": "mute", "track_id": video, "muted": True}))["type"] == "ack"
            await wait_for(lambda: subs[1].event_seen("muted", track_id=video) is not None, timeout=10)

            # The record shows it: published for the publisher, subscribed for a viewer.
            sid = pub.joined["session"]["id"]
            log = (await http.get(f"/v1/sessions/{sid}/participants/{pub.id}")).json()["events"]
            assert [e["type"] for e in log].count("track_published") == 2 and "muted" in [e["type"] for e in log]
            log = (await http.get(f"/v1/sessions/{sid}/participants/{subs[0].id}")).json()["events"]
            assert {"subscribed", "unsubscribed"} <= {e["type"] for e in log}
            states = [(e["data"]["pc"], e["data"]["state"]) for e in log if e["type"] == "connection_state"]
            assert ("subscribe", "connected") in states, states
            log = (await http.get(f"/v1/sessions/{sid}/participants/{pub.id}")).json()["events"]
            assert ("publish", "connected") in [(e["data"]["pc"], e["data"]["state"]) for e in log if e["type"] == "connection_state"]

            # Receivers' reports give each subscriber a quality record (no loss on loopback).
            async def graded():
                parts = (await http.get(f"/v1/sessions/{sid}")).json()["participants"]
                return all(p["quality"] for p in parts if p["identity"].startswith("viewer")) and parts

            for p in await eventually(graded, timeout=20):
                if p["identity"].startswith("viewer"):
                    assert p["quality"]["grade"] == "good" and p["quality"]["loss_percent"] < 2, p

            # One scrape shows the whole server: live figures from the store, forwarding from the worker.
            metrics = (await http.get("/metrics")).text
            figures = parse_metrics(metrics)
            assert figures['mediaserver_participants'] >= 5
            assert figures['mediaserver_sessions{status="live"}'] >= 2
            worker = (await http.get(f"/v1/sessions/{sid}")).json()["media_worker"]
            assert worker.startswith("media:127.0.0.1:")
            assert figures[f'mediaserver_media_rtp_out_total{{worker="{worker}"}}'] > 3 * 60
            assert figures[f'mediaserver_media_bytes_out_total{{worker="{worker}"}}'] > 0
            assert figures[f'mediaserver_media_worker_cpu_seconds_total{{worker="{worker}"}}'] > 0
            assert figures[f'mediaserver_media_send_threads{{worker="{worker}"}}'] == 2  # (the fixture's setting)
            assert figures['mediaserver_joins_total{result="joined"}'] >= 5
            assert figures['mediaserver_ws_connections'] >= 5

            # When the publisher leaves, its tracks are unpublished for everyone.
            await pub.command({"type": "leave"})
            await wait_for(lambda: all(s.event_seen("track_unpublished", participant_id=pub.id) for s in subs), timeout=15)
        finally:
            for c in (pub, *subs, outsider):
                await c.close()


async def test_bad_sdp_is_refused_and_changes_nothing(server):
    loopback_only_ice()
    async with server.http() as http:
        room = await make_room(http, name="bad sdp")
        a = await join_media(server, http, room, "a")
        try:
            for sdp, code in [
                ("hello", "invalid_sdp"),
                ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "invalid_sdp"),
                ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=rtcp-mux\r\n"
                 "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 AA:BB\r\na=setup:actpass\r\n"
                 "a=rtpmap:0 PCMU/8000\r\na=ssrc:1 cname:x\r\n", "unsupported_codec"),
            ]:
                reply = await a.command({"type": "offer", "pc": "publish", "sdp": sdp})
                assert (reply["type"], reply["code"]) == ("error", code), reply
            reply = await a.command({"type": "offer", "pc": "subscribe", "sdp": "v=0"})
            assert reply["code"] == "invalid_request"
            reply = await a.command({"type": "subscribe", "track_id": "nope", "subscribed": True})
            assert reply["code"] == "not_found"
            sid = a.joined["session"]["id"]
            log = (await http.get(f"/v1/sessions/{sid}/participants/{a.id}")).json()["events"]
            assert "track_published" not in [e["type"] for e in log]
            reply = await a.publish()  # and a good offer still works afterwards
            assert reply["type"] == "answer"
        finally:
            await a.close()


async def test_two_publishers_see_each_other(server):
    """Both join and publish at once (the order the server sees them in is up to chance):
    each must receive the other."""
    loopback_only_ice()
    async with server.http() as http:
        room = await make_room(http, name="two-way")
        a, b = await asyncio.gather(join_media(server, http, room, "a"), join_media(server, http, room, "b"))
        try:
            replies = await asyncio.gather(a.publish(), b.publish())
            assert [r["type"] for r in replies] == ["answer", "answer"], replies
            try:
                await wait_for(lambda: a.got.video_frames >= 20 and b.got.video_frames >= 20, timeout=60)
            except AssertionError:
                worker = {k: v for k, v in parse_metrics((await http.get("/metrics")).text).items() if "media_" in k and v}
                raise AssertionError(
                    f"a: {a.got.video_frames} frames, {a.offers_answered} offers, {a.errors}, pcs {a.pub_pc.connectionState}/{a.sub_pc.connectionState}; "
                    f"b: {b.got.video_frames} frames, {b.offers_answered} offers, {b.errors}, pcs {b.pub_pc.connectionState}/{b.sub_pc.connectionState}; "
                    f"worker: {worker}"
                ) from None
            assert a.errors == [] and b.errors == []
        finally:
            await a.close()
            await b.close()


async def test_end_session_is_acknowledged_while_media_flows(server):
    """A moderator who publishes ends the session: the ack for end_session arrives before the
    socket closes (4002), with a publisher and a subscriber connected, every time."""
    import websockets

    loopback_only_ice()
    async with server.http() as http:
        for attempt in range(3):
            room = await make_room(http, name=f"ending with media {attempt}")
            host = await join_media(server, http, room, "host", "moderator")
            viewer = await join_media(server, http, room, "viewer", "subscriber")
            try:
                assert (await host.publish())["type"] == "answer"
                await wait_for(lambda: viewer.got.video_frames >= 5, timeout=30)
                reply = await host.command({"type": "end_session"}, timeout=15)
                assert reply["type"] == "ack", reply
                try:
                    await asyncio.wait_for(host.ws.wait_closed(), 15)
                except websockets.ConnectionClosed:
                    pass
                assert host.ws.close_code == 4002
            finally:
                await host.close()
                await viewer.close()
