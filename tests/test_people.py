"""Users, groups and group rooms, invite links for guests, and rooms as calendar events,
through the real gateway (REST and WebSocket) with real Ray and the store."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import Participant, join_room, make_room


async def user(http, email: str, name: str, password: str = "correct horse") -> dict:
    r = await http.post("/v1/users", json={"email": email, "name": name, "password": password})
    assert r.status_code == 201, r.text
    return r.json()


async def login(server, email: str, password: str = "correct horse") -> httpx.AsyncClient:
    anon = httpx.AsyncClient(base_url=server.url, timeout=30)
    r = await anon.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    anon.headers["Authorization"] = f"Bearer {r.json()['token']}"
    return anon


async def test_users_sign_in(server):
    async with server.http() as http:
        u = await user(http, "Dana@example.com", "Dana")
        dup = await http.post("/v1/users", json={"email": "dana@example.com", "name": "D2", "password": "12345678"})
        assert (dup.status_code, dup.json()["error"]["code"]) == (409, "user_exists")
        short = await http.post("/v1/users", json={"email": "e@example.com", "name": "E", "password": "short"})
        assert short.status_code == 400
        async with httpx.AsyncClient(base_url=server.url) as anon:
            bad = await anon.post("/v1/auth/login", json={"email": "dana@example.com", "password": "wrong password"})
            assert (bad.status_code, bad.json()["error"]["code"]) == (401, "invalid_credentials")
            nobody = await anon.post("/v1/auth/login", json={"email": "nobody@example.com", "password": "whatever1"})
            assert nobody.json()["error"]["code"] == "invalid_credentials"
            assert (await anon.get("/v1/me")).json()["error"]["code"] == "unauthorized"
        client = await login(server, "DANA@example.com")
        assert (await client.get("/v1/me")).json() == {"id": u["id"], "email": "dana@example.com", "name": "Dana"}
        await client.aclose()


async def test_group_rooms_are_started_by_leaders_and_joined_by_members(server):
    async with server.http() as http:
        lead, co, mem, out = [await user(http, f"{n}@group.test", n.title()) for n in ("lead", "co", "mem", "out")]
        group = (await http.post("/v1/groups", json={"name": "Project X"})).json()
        for u, role in ((lead, "leader"), (co, "co_leader"), (mem, "member")):
            r = await http.put(f"/v1/groups/{group['id']}/members", json={"user_id": u["id"], "role": role})
            assert r.status_code == 200, r.text
        assert [(m["name"], m["role"]) for m in r.json()["members"]] == [("Lead", "leader"), ("Co", "co_leader"), ("Mem", "member")]
        no_group = await http.post("/v1/rooms", json={"name": "x", "type": "group"})
        assert no_group.json()["error"]["code"] == "invalid_request"
        room = await make_room(http, name="Project X weekly", type="group", group_id=group["id"])

        async def token_for(u) -> dict:
            client = await login(server, u["email"])
            try:
                return (await client.post(f"/v1/rooms/{room['id']}/join-token")).json()
            finally:
                await client.aclose()

        outsider = await token_for(out)
        assert outsider["error"]["code"] == "not_group_member"
        member_token, co_token = await token_for(mem), await token_for(co)
        assert member_token["role"] == "publisher" and co_token["role"] == "moderator"
        # A member cannot start the session; a co-leader can; then the member joins.
        m = Participant(server)
        msg = await m.join(member_token["token"], room["id"])
        assert (msg["type"], msg["code"]) == ("error", "not_group_leader")
        c = Participant(server)
        assert (await c.join(co_token["token"], room["id"]))["type"] == "joined"
        m = Participant(server)
        msg = await m.join(member_token["token"], room["id"])
        assert msg["type"] == "joined" and msg["participant"]["identity"] == mem["id"] and msg["participant"]["name"] == "Mem"
        await m.close()
        await c.close()


async def test_invite_links_for_guests(server):
    async with server.http() as http:
        room = await make_room(http, name="Client call", comment="Quarterly review", starts_at="2027-01-15T14:00:00Z",
                               ends_at="2027-01-15T15:00:00Z")
        made = (await http.post(f"/v1/rooms/{room['id']}/invites", json={"role": "publisher"})).json()
        link = made["url"].rsplit("/", 1)[1]
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as anon:
            info = (await anon.get(f"/v1/invites/{link}")).json()
            assert info["room_name"] == "Client call" and info["comment"] == "Quarterly review" and info["live"] is False
            early = await anon.post(f"/v1/invites/{link}/join", json={"name": "Guest"})
            assert (early.status_code, early.json()["error"]["code"]) == (409, "session_not_live")  # no async access

            ics = await anon.get(f"/v1/invites/{link}/event.ics")
            assert ics.headers["content-type"].startswith("text/calendar")
            text = ics.text.replace("\r\n ", "")
            for part in ("BEGIN:VEVENT", "SUMMARY:Client call", "DTSTART:20270115T140000Z", "DTEND:20270115T150000Z", "Quarterly review"):
                assert part in text, part

            host = await join_room(server, http, room, "host", "moderator")
            assert (await anon.get(f"/v1/invites/{link}")).json()["live"] is True
            guest_token = await anon.post(f"/v1/invites/{link}/join", json={"name": "Guest Gina"})
            assert guest_token.status_code == 201, guest_token.text
            guest = Participant(server)
            msg = await guest.join(guest_token.json()["token"], room["id"])
            assert msg["type"] == "joined" and msg["participant"]["name"] == "Guest Gina"
            assert msg["participant"]["identity"].startswith("guest_") and msg["participant"]["role"] == "publisher"
            await guest.close()

            # A link for two guests lets two in, however many try at once.
            pair = (await http.post(f"/v1/rooms/{room['id']}/invites", json={"max_uses": 2})).json()
            assert (pair["max_uses"], pair["uses"]) == (2, 0)
            pair_link = pair["url"].rsplit("/", 1)[1]
            tries = await asyncio.gather(*(anon.post(f"/v1/invites/{pair_link}/join", json={"name": f"G{i}"}) for i in range(10)))
            assert sorted(t.status_code for t in tries) == [201, 201] + [410] * 8
            assert {t.json()["error"]["code"] for t in tries if t.status_code == 410} == {"invite_used_up"}
            assert next(i for i in (await http.get(f"/v1/rooms/{room['id']}/invites")).json() if i["id"] == pair["id"])["uses"] == 2
            bad = await http.post(f"/v1/rooms/{room['id']}/invites", json={"max_uses": 0})
            assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_request")

            # Revoked, expired and forged links are refused, each with its own code.
            assert (await http.delete(f"/v1/rooms/{room['id']}/invites/{made['id']}")).status_code == 204
            gone = await anon.post(f"/v1/invites/{link}/join", json={"name": "Late"})
            assert (gone.status_code, gone.json()["error"]["code"]) == (410, "invite_revoked")
            short = (await http.post(f"/v1/rooms/{room['id']}/invites", json={"ttl_seconds": 1})).json()
            await asyncio.sleep(2.1)
            expired = await anon.get(f"/v1/invites/{short['url'].rsplit('/', 1)[1]}")
            assert expired.json()["error"]["code"] == "invite_expired"
            forged = link[:-4] + ("AAAA" if not link.endswith("AAAA") else "BBBB")
            assert (await anon.get(f"/v1/invites/{forged}")).json()["error"]["code"] == "invite_invalid"
            assert (await anon.get("/v1/invites/garbage")).json()["error"]["code"] == "invite_invalid"
            listed = (await http.get(f"/v1/rooms/{room['id']}/invites")).json()
            assert [i["revoked"] for i in listed] == [True, False, False]
            page = await anon.get(f"/invite/{link}")
            assert page.status_code == 200 and "<html" in page.text.lower()
            await host.close()

        ics = await http.get(f"/v1/rooms/{room['id']}/event.ics")
        assert "SUMMARY:Client call" in ics.text
        # The comment is searchable, for rooms and for their sessions.
        found = (await http.get("/v1/rooms", params={"q": "quarterly"})).json()["rooms"]
        assert [r["id"] for r in found] == [room["id"]]
        sessions = (await http.get("/v1/sessions", params={"q": "QUARTERLY"})).json()["sessions"]
        assert sessions and all(s["room_id"] == room["id"] for s in sessions)
