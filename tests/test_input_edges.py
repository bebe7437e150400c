"""Input at the edges, as a careless or hostile client sends it: binary WebSocket frames, huge
integers, huge bodies, over-long texts, strings where booleans go, control characters in a
search. Each is refused with its own code, the connection that sent it keeps working, and
nothing is written."""

from __future__ import annotations

import asyncio
import json

import httpx
import websockets

from tests.helpers import Participant, join_room, make_room


async def test_a_binary_frame_is_a_protocol_error_not_a_dropped_connection(server):
    async with server.http() as http:
        room = await make_room(http, name="binary")
        p = await join_room(server, http, room, "bin", "moderator")
        await p.ws.send(b"\x00\x01binary")
        err = await p.reply()
        assert (err["type"], err["code"]) == ("error", "invalid_request") and "binary" in err["message"]
        assert (await p.command({"type": "chat", "text": "still here"}))["type"] == "ack"
        detail = (await http.get(f"/v1/sessions/{p.joined['session']['id']}")).json()
        assert [x["state"] for x in detail["participants"]] == ["connected"]
        await p.close()

        # A binary first frame, before joining, is refused the same way.
        async with websockets.connect(server.ws_url) as ws:
            await ws.send(b"\xff")
            msg = json.loads(await ws.recv())
            assert (msg["type"], msg["code"]) == ("error", "invalid_request")
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as e:
                assert e.rcvd.code == 4004


async def test_integers_past_the_databases_range_are_refused_and_the_connection_lives(server):
    async with server.http() as http:
        room = await make_room(http, name="big numbers")
        p = await join_room(server, http, room, "n", "moderator")
        sid = p.joined["session"]["id"]
        for path, params in (
            ("/v1/rooms", {"offset": 2**63}),
            ("/v1/rooms", {"limit": 2**64}),
            ("/v1/sessions", {"offset": 2**63 + 5}),
            (f"/v1/sessions/{sid}/events", {"after_seq": 2**63}),
            (f"/v1/sessions/{sid}/events", {"after_seq": -1}),
        ):
            r = await http.get(path, params=params)
            assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request"), (path, params, r.text)
        # The same keep-alive connection answers the next request.
        assert (await http.get(f"/v1/sessions/{sid}/events", params={"after_seq": 0})).status_code == 200
        r = await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": "x", "ttl_seconds": 2**70})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
        await p.close()


async def test_oversized_bodies_are_refused_before_they_are_read(server):
    async with server.http() as http:
        big = json.dumps({"name": "x", "comment": "y" * (10 * 1024 * 1024)})
        r = await http.post("/v1/rooms", content=big, headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")

        async def chunks():  # no Content-Length: counted as it comes
            for _ in range(40):
                yield b"x" * 65536

        r = await http.post("/v1/rooms", content=chunks(), headers={"content-type": "application/json"})
        assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
        rooms = (await http.get("/v1/rooms", params={"limit": 200})).json()["rooms"]
        assert not any(room["name"] == "x" for room in rooms)
        ok = await http.post("/v1/rooms", json={"name": "small", "comment": "z" * 1000})
        assert ok.status_code == 201


async def test_over_long_texts_get_their_own_codes_and_booleans_are_booleans(server):
    async with server.http() as http:
        room = await make_room(http, name="long texts")
        p = await join_room(server, http, room, "long", "moderator")
        r = await p.command({"type": "chat", "text": "a" * 9000})
        assert (r["type"], r["code"]) == ("error", "message_too_long")
        r = await p.command({"type": "ask", "text": "q" * 9000})
        assert (r["type"], r["code"]) == ("error", "message_too_long")
        r = await p.command({"type": "breakout_create", "names": ["n" * 300]})
        assert (r["type"], r["code"]) == ("error", "breakout_name_too_long")
        r = await p.command({"type": "subscribe", "track_id": "part_x/0", "subscribed": "no"})
        assert (r["type"], r["code"]) == ("error", "invalid_request") and "subscribed" in r["message"]
        r = await p.command({"type": "chat", "text": "hi", "all_rooms": 1})
        assert (r["type"], r["code"]) == ("error", "invalid_request")
        r = await p.command({"type": "chat", "text": "nul \x00 inside"})
        assert (r["type"], r["code"]) == ("error", "invalid_request")
        assert (await p.command({"type": "chat_history"}))["data"] == []  # nothing was said
        assert (await p.command({"type": "breakout_create", "names": ["Fine"]}))["type"] == "ack"
        await p.close()


async def test_control_characters_in_a_search_are_refused(server):
    async with server.http() as http:
        await make_room(http, name="findable")
        for path in ("/v1/rooms", "/v1/sessions"):
            r = await http.get(path, params={"q": "\x00"})
            assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
        r = await http.post("/v1/rooms", json={"name": "nul\x00name"})
        assert (r.status_code, r.json()["error"]["code"]) == (400, "invalid_request")
        found = (await http.get("/v1/rooms", params={"q": "findable"})).json()["rooms"]
        assert [x["name"] for x in found] == ["findable"]


async def test_the_openapi_document_says_what_the_server_answers(server):
    async with httpx.AsyncClient(base_url=server.url) as anon:
        doc = (await anon.get("/openapi.json")).json()
    ops = {(m.upper(), path): op for path, item in doc["paths"].items() for m, op in item.items()}
    assert not [k for k, op in ops.items() if "422" in op["responses"]], "validation errors are answered 400"
    slots = ops[("POST", "/v1/events/{event_id}/slots")]["responses"]
    for status, code in (("400", "invalid_request"), ("401", "unauthorized"), ("404", "host_not_found"),
                         ("409", "slot_overlap"), ("409", "event_session_limit"), ("413", "payload_too_large")):
        assert code in slots[status]["description"], (status, code)
    for key in [("POST", "/v1/users"), ("POST", "/v1/auth/login"), ("GET", "/v1/me"), ("POST", "/v1/groups"),
                ("POST", "/v1/rooms/{room_id}/invites"), ("POST", "/v1/events"), ("POST", "/v1/rooms/{room_id}/join-token")]:
        assert any(s.startswith("4") for s in ops[key]["responses"]), key
    assert "HTTPValidationError" not in doc["components"]["schemas"]
