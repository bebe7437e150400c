"""Relayed (peer-to-peer) rooms with aiortc peers: the server carries offers, answers and
candidates between participants and keeps the meeting's rules; media goes directly between the
peers and never through a media worker."""

from __future__ import annotations

from loadtest.peers import (
    ChangingVideo, accept, answer_offer, collect, join_media, loopback_only_ice, new_pc, wait_for,
)
from tests.helpers import make_room


async def forwarded(http) -> int:
    """RTP packets every media worker has received so far."""
    health = (await http.get("/v1/server")).json()
    return sum(w["counters"].get("rtp_in", 0) for w in health["workers"])


async def error_of(client, msg: dict) -> str | None:
    reply = await client.command(msg)
    return reply.get("code") if reply["type"] == "error" else None


def signal_from(client, sender: str, kind: str) -> dict | None:
    return next((s for s in client.signals if s["type"] == "signal" and s["from"] == sender and s["kind"] == kind), None)


async def link(publisher, receiver, pc_pub, pc_sub) -> None:
    """The publisher offers its media to the receiver through the server; the receiver answers."""
    pc_pub.addTrack(ChangingVideo())
    await pc_pub.setLocalDescription(await pc_pub.createOffer())
    reply = await publisher.command({"type": "signal", "to": receiver.id, "link": publisher.id, "kind": "offer",
                                     "sdp": pc_pub.localDescription.sdp})
    assert reply["type"] == "ack", reply
    await wait_for(lambda: signal_from(receiver, publisher.id, "offer"))
    offer = signal_from(receiver, publisher.id, "offer")
    assert offer["link"] == publisher.id
    answer = await answer_offer(pc_sub, offer["sdp"])
    reply = await receiver.command({"type": "signal", "to": publisher.id, "link": publisher.id, "kind": "answer", "sdp": answer})
    assert reply["type"] == "ack", reply
    await wait_for(lambda: signal_from(publisher, receiver.id, "answer"))
    await accept(pc_pub, signal_from(publisher, receiver.id, "answer")["sdp"])


async def test_two_peers_connect_directly_and_the_rules_hold(server):
    loopback_only_ice()
    async with server.http() as http:
        room = await make_room(http, name="p2p", media_mode="relayed")
        ann = await join_media(server, http, room, "ann", "moderator")
        bob = await join_media(server, http, room, "bob", "publisher")
        viewer = await join_media(server, http, room, "vic", "subscriber")
        pcs = []
        try:
            # A routed publication is refused with a code that says what to do instead.
            assert (await ann.command({"type": "offer", "pc": "publish", "sdp": "v=0"}))["code"] == "relayed_media"
            # Nothing to offer before publishing; a subscriber may not publish.
            assert await error_of(ann, {"type": "signal", "to": bob.id, "link": ann.id, "kind": "offer", "sdp": "v=0"}) == "not_publishing"
            assert await error_of(viewer, {"type": "peer_publish", "tracks": [{"name": "v0", "kind": "video"}]}) == "publish_not_allowed"

            reply = await ann.command({"type": "peer_publish", "tracks": [{"name": "video0", "kind": "video"}]})
            assert reply["type"] == "ack" and [t["id"] for t in reply["data"]["tracks"]] == [f"{ann.id}/video0"]
            await wait_for(lambda: bob.event_seen("track_published", track_id=f"{ann.id}/video0"))
            await wait_for(lambda: bob.event_seen("stage_joined"))  # the stage's seats count peer publications too

            # Only a link's publisher offers; only its receiver answers; nobody signals outsiders.
            assert await error_of(bob, {"type": "signal", "to": ann.id, "link": ann.id, "kind": "offer", "sdp": "v=0"}) == "invalid_request"
            assert await error_of(ann, {"type": "signal", "to": bob.id, "link": ann.id, "kind": "answer", "sdp": "v=0"}) == "invalid_request"
            assert await error_of(ann, {"type": "signal", "to": "part_nobody", "link": ann.id, "kind": "candidate", "candidate": ""}) == "participant_not_found"
            assert await error_of(ann, {"type": "signal", "to": bob.id, "link": "part_x", "kind": "candidate", "candidate": ""}) == "invalid_request"
            assert await error_of(ann, {"type": "signal", "to": bob.id, "link": ann.id, "kind": "offer"}) == "invalid_request"

            before = await forwarded(http)
            for receiver in (bob, viewer):
                pc_pub, pc_sub = new_pc(), new_pc()
                pcs += [pc_pub, pc_sub]
                got = collect(pc_sub)
                await link(ann, receiver, pc_pub, pc_sub)
                await wait_for(lambda: got.video_frames >= 10, timeout=30)
                assert len(set(got.lumas[-10:])) > 1, "the picture must change: real frames, decoded"
            assert await forwarded(http) == before, "peer-to-peer media must not touch a media worker"

            # No worker sees this media: receivers report their own quality, and the record shows it.
            assert (await bob.command({"type": "quality_report", "loss_percent": 12.5, "jitter_ms": 4.0}))["type"] == "ack"
            assert await error_of(bob, {"type": "quality_report", "loss_percent": 101, "jitter_ms": 1}) == "invalid_request"
            sid = ann.joined["session"]["id"]
            parts = (await http.get(f"/v1/sessions/{sid}")).json()["participants"]
            q = next(p["quality"] for p in parts if p["id"] == bob.id)
            assert q["grade"] == "poor" and q["loss_percent"] == 12.5, q

            # Off the stage: the receivers are told to close the links it publishes on.
            assert (await ann.command({"type": "leave_stage"}))["type"] == "ack"
            await wait_for(lambda: any(s["type"] == "peer_closed" and s["participant_id"] == ann.id and s["as_publisher_only"]
                                       for s in bob.signals))
            await wait_for(lambda: bob.event_seen("track_unpublished", track_id=f"{ann.id}/video0"))
            assert await error_of(ann, {"type": "signal", "to": bob.id, "link": ann.id, "kind": "candidate", "candidate": ""}) == "not_publishing"

            # Removed: everyone closes every link with it.
            assert (await ann.command({"type": "remove_participant", "participant_id": bob.id}))["type"] == "ack"
            await wait_for(lambda: any(s["type"] == "peer_closed" and s["participant_id"] == bob.id and not s["as_publisher_only"]
                                       for s in ann.signals + viewer.signals))
        finally:
            for pc in pcs:
                await pc.close()
            for c in (ann, bob, viewer):
                await c.close()


async def test_a_relayed_session_holds_four_and_refuses_the_fifth(server):
    async with server.http() as http:
        room = await make_room(http, name="p2p full", media_mode="relayed")
        clients = [await join_media(server, http, room, f"p{i}") for i in range(4)]
        try:
            r = await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": "fifth", "role": "publisher"})
            from loadtest.peers import MediaClient

            fifth = MediaClient(server.ws_url)
            msg = await fifth.join(r.json()["token"], room["id"])
            assert msg["type"] == "error" and msg["code"] == "relayed_session_full", msg
            assert "routed" in msg["message"]
            await fifth.close()
            # One leaves: there is room again.
            await clients.pop().command({"type": "leave"})
            again = MediaClient(server.ws_url)
            assert (await again.join(r.json()["token"], room["id"]))["type"] == "joined"
            clients.append(again)
        finally:
            for c in clients:
                await c.close()


async def test_breakout_rooms_split_the_mesh(server):
    async with server.http() as http:
        room = await make_room(http, name="p2p rooms", media_mode="relayed")
        host = await join_media(server, http, room, "host", "moderator")
        guest = await join_media(server, http, room, "guest", "publisher")
        try:
            assert (await host.command({"type": "peer_publish", "tracks": [{"name": "a0", "kind": "audio"}]}))["type"] == "ack"
            rooms = (await host.command({"type": "breakout_create", "names": ["Side"]}))["data"]["rooms"]
            await host.command({"type": "breakout_assign", "assignments": {guest.id: rooms[0]["id"]}})
            assert (await host.command({"type": "breakout_open"}))["type"] == "ack"
            await wait_for(lambda: any(s["type"] == "peers_changed" for s in guest.signals))
            assert await error_of(host, {"type": "signal", "to": guest.id, "link": host.id, "kind": "candidate",
                                         "candidate": ""}) == "not_in_your_room"
            await host.command({"type": "breakout_close"})
            await wait_for(lambda: sum(s["type"] == "peers_changed" for s in guest.signals) >= 2)
            assert (await host.command({"type": "signal", "to": guest.id, "link": host.id, "kind": "candidate",
                                        "candidate": ""}))["type"] == "ack"
        finally:
            for c in (host, guest):
                await c.close()


async def test_peer_calls_in_a_routed_room_say_so(server):
    async with server.http() as http:
        room = await make_room(http, name="routed still", media_mode="routed")
        ann = await join_media(server, http, room, "ann", "moderator")
        try:
            assert await error_of(ann, {"type": "peer_publish", "tracks": []}) == "routed_media"
            assert await error_of(ann, {"type": "signal", "to": ann.id, "link": ann.id, "kind": "candidate"}) == "routed_media"
            assert await error_of(ann, {"type": "quality_report", "loss_percent": 0, "jitter_ms": 0}) == "routed_media"
        finally:
            await ann.close()


async def test_relayed_limits_hold_under_a_burst_and_bad_input_is_refused(server):
    """Eight joins at once into a relayed room: four get in, four hear relayed_session_full
    (the session's owner checks each join in turn); malformed peer messages are refused."""
    import asyncio

    from loadtest.peers import MediaClient

    async with server.http() as http:
        room = await make_room(http, name="p2p burst", media_mode="relayed")
        tokens = [(await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": f"b{i}", "role": "publisher"})).json()["token"]
                  for i in range(8)]
        clients = [MediaClient(server.ws_url) for _ in tokens]
        replies = await asyncio.gather(*(c.join(t, room["id"]) for c, t in zip(clients, tokens)))
        try:
            kinds = sorted(r["type"] if r["type"] == "joined" else r["code"] for r in replies)
            assert kinds == ["joined"] * 4 + ["relayed_session_full"] * 4, kinds
            me = next(c for c, r in zip(clients, replies) if r["type"] == "joined")
            other = next(c for c, r in zip(clients, replies) if r["type"] == "joined" and c is not me)
            bad = [
                {"type": "peer_publish", "tracks": [{"name": f"t{i}", "kind": "video"} for i in range(5)]},  # too many
                {"type": "peer_publish", "tracks": [{"name": "no spaces", "kind": "video"}]},
                {"type": "peer_publish", "tracks": [{"name": "v", "kind": "data"}]},
                {"type": "signal", "to": other.id, "link": me.id, "kind": "offer", "sdp": "x" * 70_000},  # oversized
                {"type": "signal", "to": other.id, "link": me.id, "kind": "candidate", "sdp": "v=0"},
                {"type": "quality_report", "loss_percent": "1", "jitter_ms": 1},  # a string is not a number
                {"type": "direct_failed", "extra": 1},
            ]
            for msg in bad:
                assert await error_of(me, msg) == "invalid_request", msg
            assert await error_of(me, {"type": "direct_failed"}) == "invalid_request"  # not an auto room
        finally:
            for c in clients:
                await c.close()
