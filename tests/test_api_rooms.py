"""Rooms and tokens over real HTTP against `mediaserver serve`."""

from __future__ import annotations

import httpx
import jwt

from tests.helpers import create_key, make_room


async def test_room_crud(server):
    async with server.http() as http:
        group = (await http.post("/v1/groups", json={"name": "Finance"})).json()
        body = {
            "name": "Quarterly review",
            "type": "group",
            "group_id": group["id"],
            "media_mode": "routed",
            "archive_mode": "always",
            "encryption": "session_key",
            "location_hint": "127.0.0.1",
            "capacity": 12,
            "comment": "Bring numbers",
            "starts_at": "2026-12-01T10:00:00Z",
            "ends_at": "2026-12-01T11:00:00+00:00",
        }
        r = await http.post("/v1/rooms", json=body)
        assert r.status_code == 201, r.text
        room = r.json()
        assert room["id"].startswith("room_")
        for k in ("name", "type", "media_mode", "archive_mode", "encryption", "location_hint", "capacity", "comment"):
            assert room[k] == body[k]
        assert room["starts_at"] == "2026-12-01T10:00:00Z" and room["ends_at"] == "2026-12-01T11:00:00Z"

        r = await http.get(f"/v1/rooms/{room['id']}")
        assert r.status_code == 200 and r.json() == room

        r = await http.patch(f"/v1/rooms/{room['id']}", json={"name": "Q4 review", "comment": None, "capacity": 50})
        assert r.status_code == 200, r.text
        patched = r.json()
        assert (patched["name"], patched["comment"], patched["capacity"], patched["type"]) == ("Q4 review", None, 50, "group")

        defaults = (await http.post("/v1/rooms", json={"name": "Defaults"})).json()
        assert (defaults["type"], defaults["media_mode"], defaults["capacity"], defaults["encryption"]) == ("adhoc", "auto", 50, "server")

        r = await http.get("/v1/rooms", params={"q": "q4 REV"})
        assert [x["id"] for x in r.json()["rooms"]] == [room["id"]]


async def test_room_list_pages(server):
    async with server.http() as http:
        ids = {(await make_room(http, name=f"pager-{i}"))["id"] for i in range(5)}
        seen, offset = [], 0
        while offset is not None:
            r = await http.get("/v1/rooms", params={"q": "pager-", "limit": 2, "offset": offset})
            page = r.json()
            assert len(page["rooms"]) <= 2
            seen += [x["id"] for x in page["rooms"]]
            offset = page["next_offset"]
        assert sorted(seen) == sorted(ids)


async def test_room_validation_errors_write_nothing(server):
    async with server.http() as http:
        before = len((await http.get("/v1/rooms", params={"limit": 200})).json()["rooms"])
        bad_bodies = [
            ({"name": "x", "capacity": 51}, "capacity"),
            ({"name": "x", "capacity": 0}, "capacity"),
            ({"name": ""}, "name"),
            ({"name": "x" * 101}, "name"),
            ({"name": "x", "type": "webinar"}, "type"),
            ({"name": "x", "media_mode": "p2p"}, "media_mode"),
            ({"name": "x", "location_hint": "not-an-ip"}, "location_hint"),
            ({"name": "x", "starts_at": "2026-01-02T00:00:00Z", "ends_at": "2026-01-01T00:00:00Z"}, "ends_at"),
            ({"name": "x", "surprise": 1}, "surprise"),
            ({}, "name"),
        ]
        for body, field in bad_bodies:
            r = await http.post("/v1/rooms", json=body)
            assert r.status_code == 400, (body, r.text)
            err = r.json()["error"]
            assert err["code"] == "invalid_request" and field in err["message"], (body, err)
        r = await http.post("/v1/rooms", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        after = len((await http.get("/v1/rooms", params={"limit": 200})).json()["rooms"])
        assert after == before

        room = await make_room(http, name="patch me", starts_at="2026-01-01T10:00:00Z")
        r = await http.patch(f"/v1/rooms/{room['id']}", json={"ends_at": "2026-01-01T09:00:00Z"})
        assert r.status_code == 400 and "ends_at" in r.json()["error"]["message"]
        r = await http.patch(f"/v1/rooms/{room['id']}", json={"name": None})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        assert (await http.get(f"/v1/rooms/{room['id']}")).json() == room  # unchanged


async def test_auth_is_required_and_scoped_to_the_team(server):
    async with httpx.AsyncClient(base_url=server.url) as anon:
        r = await anon.get("/v1/rooms")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await anon.get("/v1/rooms", auth=(server.key["id"], "wrong-secret"))
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = await anon.get("/v1/rooms", auth=("AK_nope", "x"))
        assert r.status_code == 401
    other_key = create_key(server.env, team="other-team")
    async with server.http() as http, server.http(other_key) as other:
        room = await make_room(http, name="private")
        r = await other.get(f"/v1/rooms/{room['id']}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "room_not_found"
        r = await other.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": "x"})
        assert r.status_code == 404
        assert room["id"] not in [x["id"] for x in (await other.get("/v1/rooms")).json()["rooms"]]


async def test_unknown_routes_and_methods_use_the_error_format(server):
    async with server.http() as http:
        r = await http.get("/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await http.delete("/v1/rooms")
        assert r.status_code == 405 and "error" in r.json()
        r = await http.get("/v1/sessions", params={"status": "sleeping"})
        assert r.status_code == 400 and "status" in r.json()["error"]["message"]
        r = await http.get("/v1/rooms", params={"limit": 0})
        assert r.status_code == 400


async def test_openapi_describes_the_api(server):
    async with httpx.AsyncClient(base_url=server.url) as anon:
        spec = (await anon.get("/openapi.json")).json()
    paths = spec["paths"]
    for p in ("/v1/rooms", "/v1/rooms/{room_id}", "/v1/rooms/{room_id}/tokens", "/v1/sessions",
              "/v1/sessions/{session_id}", "/v1/sessions/{session_id}/participants/{participant_id}",
              "/v1/sessions/{session_id}/end"):
        assert p in paths, p
    assert "RoomCreate" in spec["components"]["schemas"]


async def test_token_minting(server):
    async with server.http() as http:
        room = await make_room(http, name="tokens")
        r = await http.post(
            f"/v1/rooms/{room['id']}/tokens",
            json={"identity": "bob", "name": "Bob B.", "role": "subscriber", "ttl_seconds": 600},
        )
        assert r.status_code == 201, r.text
        out = r.json()
        claims = jwt.decode(out["token"], server.key["secret"], algorithms=["HS256"])
        assert (claims["room"], claims["sub"], claims["name"], claims["role"]) == (room["id"], "bob", "Bob B.", "subscriber")
        assert claims["exp"] - claims["nbf"] == 600 and len(claims["jti"]) == 32
        assert out["ws_url"] == server.ws_url and out["join_url"].startswith(f"{server.url}/join/{room['id']}?token=")
        r = await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": "bob", "ttl_seconds": 31 * 86400})
        assert r.status_code == 400 and r.json()["error"]["code"] == "token_ttl_too_long"
        r = await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": "bob", "role": "admin"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
        r = await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": ""})
        assert r.status_code == 400
        r = await http.post("/v1/rooms/room_missing/tokens", json={"identity": "bob"})
        assert r.status_code == 404 and r.json()["error"]["code"] == "room_not_found"
