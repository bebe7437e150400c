"""Sessions over the real gateway, WebSocket and REST, against real Ray actors and the store.

The test server runs with grace = 2 s so lifecycle timers can be watched.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone

import jwt
import pytest

from mediaserver import tokens
from tests.helpers import Participant, cli, create_key, eventually, join_room, make_room, make_token

GRACE = 2.0


async def session_of(http, room) -> dict:
    r = await http.get("/v1/sessions", params={"room_id": room["id"]})
    assert r.status_code == 200
    sessions = r.json()["sessions"]
    return sessions[0] if sessions else {}


async def test_join_sees_room_and_others(server):
    async with server.http() as http:
        room = await make_room(http, name="Kickoff", comment="Welcome!", starts_at="2026-12-01T10:00:00Z")
        mod = await join_room(server, http, room, "mod", "moderator")
        assert mod.joined["room"]["comment"] == "Welcome!" and mod.joined["room"]["starts_at"] == "2026-12-01T10:00:00Z"
        assert mod.joined["participant"]["role"] == "moderator" and mod.joined["resumed"] is False
        assert mod.joined["session"]["status"] == "live" and mod.joined["grace_seconds"] == GRACE
        pub = await join_room(server, http, room, "pub")
        assert {p["identity"] for p in pub.joined["participants"]} == {"mod", "pub"}
        ev = await mod.wait_event("joined", pub.id)
        assert ev["data"] == {"identity": "pub", "name": "pub", "role": "publisher"}
        assert pub.joined["session"]["id"] == mod.joined["session"]["id"]

        s = await session_of(http, room)
        assert s["status"] == "live" and s["participant_count"] == 2 and s["room_name"] == "Kickoff"
        detail = (await http.get(f"/v1/sessions/{s['id']}")).json()
        assert {(p["identity"], p["state"]) for p in detail["participants"]} == {("mod", "connected"), ("pub", "connected")}
        await mod.close()
        await pub.close()


async def test_token_refusals_on_join(server):
    async with server.http() as http:
        room = await make_room(http, name="refusals")
        other = await make_room(http, name="other room")
        key, secret = server.key["id"], server.key["secret"]
        now = time.time()
        expired, _ = tokens.mint(key_id=key, secret=secret, room_id=room["id"], identity="x", role="publisher", ttl=10, max_ttl=60, now=now - 100)
        good = await make_token(http, room["id"], "x")
        tomorrow = datetime.fromtimestamp(now + 86400, tz=timezone.utc).isoformat()
        r = await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": "x", "not_before": tomorrow})
        early = r.json()["token"]
        # A not_before a year ahead cannot carry a token past 30 days from now.
        r = await http.post(f"/v1/rooms/{room['id']}/tokens", json={
            "identity": "x", "ttl_seconds": 30 * 86400, "not_before": datetime.fromtimestamp(now + 365 * 86400, tz=timezone.utc).isoformat(),
        })
        assert (r.status_code, r.json()["error"]["code"]) == (400, "token_ttl_too_long"), r.text
        head, body, sig = good.split(".")
        claims = jwt.decode(good, options={"verify_signature": False})
        forged_body = jwt.utils.base64url_encode(json.dumps({**claims, "role": "moderator"}).encode()).decode()
        revoked_key = create_key(server.env, team="default")
        revoked, _ = tokens.mint(key_id=revoked_key["id"], secret=revoked_key["secret"], room_id=room["id"], identity="x", role="publisher", ttl=60, max_ttl=60)
        cli("apikey", "revoke", revoked_key["id"], env=server.env)
        foreign_key = create_key(server.env, team="someone-else")
        foreign, _ = tokens.mint(key_id=foreign_key["id"], secret=foreign_key["secret"], room_id=room["id"], identity="x", role="publisher", ttl=60, max_ttl=60)
        cases = [
            (expired, room["id"], "token_expired"),
            (early, room["id"], "token_not_yet_valid"),
            (f"{head}.{forged_body}.{sig}", room["id"], "token_invalid_signature"),
            (good, other["id"], "token_wrong_room"),
            (revoked, room["id"], "token_unknown_key"),
            ("garbage", room["id"], "token_malformed"),
            (foreign, room["id"], "room_not_found"),  # a key of another team cannot open this team's room
        ]
        for token, room_id, code in cases:
            p = Participant(server)
            msg = await p.join(token, room_id)
            assert (msg["type"], msg["code"]) == ("error", code), (code, msg)
            assert (await p.closed())[0] == 4001
        # None of those refusals opened a session.
        assert await session_of(http, room) == {}
        assert await session_of(http, other) == {}


async def test_moderator_ends_the_session(server):
    async with server.http() as http:
        room = await make_room(http, name="to be ended")
        mod = await join_room(server, http, room, "mod", "moderator")
        pub = await join_room(server, http, room, "pub")
        reply = await pub.command({"type": "end_session"})
        assert (reply["type"], reply["code"]) == ("error", "not_moderator")
        assert (await mod.command({"type": "end_session"}))["type"] == "ack"
        for p in (mod, pub):
            ev = await p.wait_event("session_ended")
            assert ev["data"]["reason"] == "moderator" and ev["data"]["by"] == mod.id
            assert (await p.closed())[0] == 4002
        s = await session_of(http, room)
        assert s["status"] == "ended" and s["end_reason"] == "moderator" and s["ended_at"]
        log = (await http.get(f"/v1/sessions/{s['id']}/participants/{mod.id}")).json()
        assert [e["type"] for e in log["events"]] == ["joined", "ended_session", "session_ended"]
        assert log["state"] == "left" and log["left_reason"] == "session_ended"
        # Joining again starts a new session of the same room.
        again = await join_room(server, http, room, "mod", "moderator")
        assert again.joined["session"]["id"] != s["id"]
        await again.close()


async def test_api_ends_the_session(server):
    async with server.http() as http:
        room = await make_room(http, name="api end")
        p = await join_room(server, http, room, "a")
        sid = p.joined["session"]["id"]
        r = await http.post(f"/v1/sessions/{sid}/end")
        assert r.status_code == 200 and r.json()["status"] == "ended" and r.json()["end_reason"] == "api"
        assert (await p.wait_event("session_ended"))["data"]["reason"] == "api"
        r = await http.post(f"/v1/sessions/{sid}/end")
        assert r.status_code == 410 and r.json()["error"]["code"] == "session_ended"
        r = await http.post("/v1/sessions/sess_nope/end")
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"


async def test_grace_period_then_end(server):
    async with server.http() as http:
        room = await make_room(http, name="grace")
        a = await join_room(server, http, room, "a")
        sid = a.joined["session"]["id"]
        assert (await a.command({"type": "leave"}))["type"] == "ack"
        s = await session_of(http, room)
        assert s["status"] == "ending_soon" and s["ending_at"] is not None
        listed = (await http.get("/v1/sessions", params={"status": "ending_soon"})).json()["sessions"]
        assert sid in [x["id"] for x in listed]

        async def ended():
            s = await session_of(http, room)
            return s if s["status"] == "ended" else None

        start = time.time()
        s = await eventually(ended, timeout=GRACE + 10)
        assert s["end_reason"] == "grace_timeout" and time.time() - start >= GRACE * 0.5
        log = (await http.get(f"/v1/sessions/{sid}/participants/{a.id}")).json()
        assert [e["type"] for e in log["events"]] == ["joined", "left"]
        timeline = (await http.get(f"/v1/sessions/{sid}/events")).json()
        assert [(e["type"], e["participant_id"]) for e in timeline] == [("joined", a.id), ("left", a.id), ("session_ended", None)]
        assert timeline[-1]["data"]["reason"] == "grace_timeout"
        assert [e["seq"] for e in timeline] == [1, 2, 3]
        page = (await http.get(f"/v1/sessions/{sid}/events", params={"after_seq": 1, "limit": 1})).json()
        assert [e["seq"] for e in page] == [2]


async def test_rejoin_inside_grace_keeps_the_session(server):
    async with server.http() as http:
        room = await make_room(http, name="rejoin")
        a = await join_room(server, http, room, "a")
        sid = a.joined["session"]["id"]
        await a.command({"type": "leave"})
        b = await join_room(server, http, room, "b")
        assert b.joined["session"]["id"] == sid
        await asyncio.sleep(GRACE + 1)
        assert (await session_of(http, room))["status"] == "live"
        await b.close()


async def test_reconnect_within_grace_is_the_same_participant(server):
    async with server.http() as http:
        room = await make_room(http, name="reconnect")
        watcher = await join_room(server, http, room, "w", "moderator")
        a = await join_room(server, http, room, "a")
        await a.drop()
        ev = await watcher.wait_event("disconnected", a.id)
        assert ev["participant_id"] == a.id
        again = Participant(server)
        again.joined = a.joined
        msg = await again.resume()
        assert msg["type"] == "joined" and msg["resumed"] is True
        assert msg["participant"]["id"] == a.id and msg["session"]["id"] == a.joined["session"]["id"]
        await watcher.wait_event("reconnected", a.id)
        log = (await http.get(f"/v1/sessions/{msg['session']['id']}/participants/{a.id}")).json()
        assert [e["type"] for e in log["events"]] == ["joined", "disconnected", "reconnected"]
        assert log["state"] == "connected"
        # The reconnected participant is fully usable: commands work, events flow.
        assert (await again.command({"type": "ping"}))["type"] == "pong"
        await watcher.command({"type": "set_role", "participant_id": a.id, "role": "subscriber"})
        assert (await again.wait_event("role_changed", a.id))["data"]["role"] == "subscriber"
        await again.close()
        await watcher.close()


async def test_reconnect_after_grace_is_refused(server):
    async with server.http() as http:
        room = await make_room(http, name="too late")
        keeper = await join_room(server, http, room, "keeper")
        a = await join_room(server, http, room, "a")
        await a.drop()
        ev = await keeper.wait_event("left", a.id, timeout=GRACE + 10)
        assert ev["data"]["reason"] == "grace_timeout"
        late = Participant(server)
        late.joined = a.joined
        msg = await late.resume()
        assert (msg["type"], msg["code"]) == ("error", "reconnect_expired")
        await keeper.close()


async def test_same_identity_replaces_the_old_connection(server):
    async with server.http() as http:
        room = await make_room(http, name="replace")
        first = await join_room(server, http, room, "dup")
        second = await join_room(server, http, room, "dup")
        assert second.id != first.id
        code, reason = await first.closed()
        assert (code, reason) == (4003, "replaced")
        s = await session_of(http, room)
        assert s["participant_count"] == 1
        await second.close()


async def test_capacity_is_enforced(server):
    async with server.http() as http:
        room = await make_room(http, name="small", capacity=2)
        a = await join_room(server, http, room, "a")
        b = await join_room(server, http, room, "b")
        c = Participant(server)
        msg = await c.join(await make_token(http, room["id"], "c"), room["id"])
        assert (msg["type"], msg["code"]) == ("error", "room_full")
        assert (await session_of(http, room))["participant_count"] == 2
        await a.close()
        await b.close()


async def test_team_limit_counts_live_not_ending_soon(server):
    key = create_key(server.env, team="limited", max_live_sessions=1)
    async with server.http(key) as http:
        one = await make_room(http, name="one")
        two = await make_room(http, name="two")
        a = await join_room(server, http, one, "a")
        b = Participant(server)
        msg = await b.join(await make_token(http, two["id"], "b"), two["id"])
        assert (msg["type"], msg["code"]) == ("error", "session_limit_reached"), msg
        assert await session_of(http, two) == {}
        await a.command({"type": "leave"})  # room one is now ending soon: it stops counting
        b2 = await join_room(server, http, two, "b")
        # Bringing room one back to live would exceed the limit.
        c = Participant(server)
        msg = await c.join(await make_token(http, one["id"], "c"), one["id"])
        assert (msg["type"], msg["code"]) == ("error", "session_limit_reached")
        await b2.close()


async def test_search_and_filters(server):
    async with server.http() as http:
        marker = f"zebra{int(time.time() * 1000) % 100000}"
        room = await make_room(http, name=f"{marker} standup", comment="daily giraffe notes")
        p = await join_room(server, http, room, "a")
        sid = p.joined["session"]["id"]
        await http.post(f"/v1/sessions/{sid}/end")
        p2 = await join_room(server, http, room, "a")
        sid2 = p2.joined["session"]["id"]

        async def ids(**params):
            r = await http.get("/v1/sessions", params=params)
            assert r.status_code == 200, r.text
            return [s["id"] for s in r.json()["sessions"]]

        assert await ids(q=marker) == [sid2, sid]
        assert await ids(q=marker.upper()) == [sid2, sid]
        assert await ids(q=room["id"]) == [sid2, sid]
        assert await ids(q=sid) == [sid]
        assert await ids(q="giraffe") == [sid2, sid]
        assert await ids(q=marker, status="ended") == [sid]
        assert await ids(q=marker, status="live") == [sid2]
        assert await ids(q=marker, status="live,ended") == [sid2, sid]
        assert await ids(room_id=room["id"], limit=1) == [sid2]
        assert await ids(q="no-such-thing-anywhere") == []
        await p2.close()


async def test_participant_not_found_and_session_not_found(server):
    async with server.http() as http:
        room = await make_room(http, name="lookups")
        p = await join_room(server, http, room, "a")
        sid = p.joined["session"]["id"]
        r = await http.get(f"/v1/sessions/{sid}/participants/part_nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "participant_not_found"
        r = await http.get("/v1/sessions/sess_nope")
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"
        other = create_key(server.env, team="nosy")
        async with server.http(other) as nosy:
            r = await nosy.get(f"/v1/sessions/{sid}")
            assert r.status_code == 404
            r = await nosy.post(f"/v1/sessions/{sid}/end")
            assert r.status_code == 404
        await p.close()


async def test_bad_websocket_input(server):
    async with server.http() as http:
        room = await make_room(http, name="bad input")
        # Anything but join/resume first is refused and the socket closed.
        p = Participant(server)
        await p.connect()
        await p.send({"type": "ping"})
        msg = await p.recv()
        assert (msg["type"], msg["code"]) == ("error", "not_joined")
        assert (await p.closed())[0] == 4001
        p = Participant(server)
        await p.connect()
        await p.ws.send("{{{")
        assert (await p.recv())["code"] == "invalid_request"
        assert (await p.closed())[0] == 4004

        a = await join_room(server, http, room, "a")
        b = await join_room(server, http, room, "b", "moderator")
        for raw, code in [
            ("not json", "invalid_request"),
            (json.dumps({"type": "teleport"}), "invalid_request"),
            (json.dumps({"type": "set_role", "participant_id": b.id}), "invalid_request"),
            (json.dumps({"type": "set_role", "participant_id": b.id, "role": "king"}), "invalid_request"),
            (json.dumps([1, 2, 3]), "invalid_request"),
            ("x" * 200_000, "invalid_request"),
        ]:
            await a.ws.send(raw)
            msg = await a.reply()
            assert (msg["type"], msg.get("code")) == ("error", code), (raw[:40], msg)
        cases = [
            ({"type": "set_role", "participant_id": b.id, "role": "subscriber"}, "not_moderator"),
            ({"type": "join", "token": "x", "room_id": room["id"]}, "invalid_request"),
            ({"type": "offer", "sdp": "v=0"}, "invalid_sdp"),
            ({"type": "offer", "sdp": "v=0", "sources": {"0": "projector"}}, "invalid_request"),  # no such source
            ({"type": "offer", "sdp": "v=0", "sources": {"m" * 17: "screen"}}, "invalid_request"),  # no such mid
            ({"type": "offer", "sdp": "v=0", "sources": {str(i): "camera" for i in range(9)}}, "invalid_request"),
            ({"type": "answer", "pc": "subscribe", "sdp": "v=0"}, "invalid_request"),  # no offer is waiting
        ]
        for cmd, code in cases:
            reply = await a.command(cmd)
            assert (reply["type"], reply["code"]) == ("error", code)
        reply = await b.command({"type": "set_role", "participant_id": "part_nope", "role": "publisher"})
        assert reply["code"] == "participant_not_found"
        # Meeting commands: malformed, oversized, not allowed, or naming nothing that exists.
        meeting_cases = [
            (a, {"type": "chat"}, "invalid_request"),  # no text
            (a, {"type": "chat", "text": "x" * 9000}, "message_too_long"),
            (a, {"type": "chat", "text": 42}, "invalid_request"),
            (a, {"type": "ask", "text": "?" * 501}, "message_too_long"),
            (a, {"type": "upvote", "question_id": "q_nope"}, "question_not_found"),
            (a, {"type": "breakout_create", "names": ["A"]}, "not_moderator"),
            (b, {"type": "breakout_create", "names": []}, "invalid_request"),
            (b, {"type": "breakout_create", "names": ["x" * 300]}, "breakout_name_too_long"),
            (b, {"type": "breakout_assign", "assignments": "everyone"}, "invalid_request"),
            (b, {"type": "breakout_assign", "assignments": {a.id: "brk_nope"}}, "breakout_not_found"),
            (b, {"type": "breakout_open"}, "no_breakouts"),
            (b, {"type": "answer_stage_request", "participant_id": a.id, "approve": "yes please"}, "invalid_request"),
            (b, {"type": "answer_stage_request", "participant_id": a.id, "approve": True}, "no_stage_request"),
            (a, {"type": "remove_participant", "participant_id": b.id}, "not_moderator"),
            (a, {"type": "start_session"}, "not_moderator"),
        ]
        for who, cmd, code in meeting_cases:
            reply = await who.command(cmd)
            assert (reply["type"], reply.get("code")) == ("error", code), (cmd, reply)
        # After all that, the connection still works and nothing changed.
        assert (await a.command({"type": "ping"}))["type"] == "pong"
        sid = a.joined["session"]["id"]
        detail = (await http.get(f"/v1/sessions/{sid}")).json()
        assert {(p["identity"], p["role"]) for p in detail["participants"]} == {("a", "publisher"), ("b", "moderator")}
        assert detail["breakouts"] == {} and all(not p["on_stage"] for p in detail["participants"])
        assert (await http.get(f"/v1/sessions/{sid}/chat")).json() == []
        assert (await http.get(f"/v1/sessions/{sid}/questions")).json() == []
        await a.close()
        await b.close()


async def test_server_pings(server):
    async with server.http() as http:
        room = await make_room(http, name="pings")
        p = await join_room(server, http, room, "a")
        msg = json.loads(await asyncio.wait_for(p.ws.recv(), 5))  # ping every second on the test server
        assert msg["type"] == "ping" and msg["ts"] > 0
        await p.close()


@pytest.mark.parametrize("path", ["/", "/join/room_x"])
async def test_pages_are_served(server, path):
    async with server.http() as http:
        r = await http.get(path)
        assert r.status_code == 200 and "<html" in r.text


async def test_join_info_checks_a_link_as_the_join_would(server):
    """What a join link is for, before anyone joins: the room, who, which role; a bad link is
    refused with the code the join would give, and nothing is opened."""
    import httpx

    async with server.http() as http:
        room = await make_room(http, name="Look before you join", comment="slides first", starts_at="2027-05-01T08:00:00Z")
        other = await make_room(http, name="Other")
        good = await make_token(http, room["id"], "ann", "subscriber")
        key, secret = server.key["id"], server.key["secret"]
        expired, _ = tokens.mint(key_id=key, secret=secret, room_id=room["id"], identity="x", role="publisher", ttl=10,
                                 max_ttl=60, now=time.time() - 100)
        async with httpx.AsyncClient(base_url=server.url) as anon:  # no API key: the token is the credential
            r = await anon.post("/v1/join-info", json={"token": good, "room_id": room["id"]})
            assert r.status_code == 200, r.text
            info = r.json()
            assert (info["room"]["name"], info["room"]["comment"], info["identity"], info["role"]) == (
                "Look before you join", "slides first", "ann", "subscriber")
            assert info["room"]["starts_at"].startswith("2027-05-01") and info["session_status"] is None
            for token, room_id, status, code in (
                (good, other["id"], 403, "token_wrong_room"),
                (expired, room["id"], 401, "token_expired"),
                (good[:-3] + "AAA", room["id"], 401, "token_invalid_signature"),
                ("nope", room["id"], 401, "token_malformed"),
            ):
                r = await anon.post("/v1/join-info", json={"token": token, "room_id": room_id})
                assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
            r = await anon.post("/v1/join-info", json={"token": good})
            assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
        sessions = (await http.get("/v1/sessions", params={"room_id": room["id"]})).json()["sessions"]
        assert sessions == []  # looking opened nothing
