"""Events with registration through the gateway (REST and WebSocket, real Ray and store), and a
50-participant event session from registration to its record."""

from __future__ import annotations

import asyncio
import time

import httpx
from datetime import datetime, timezone

from tests.helpers import Participant, join_room, make_token


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


async def make_event(http, *, hosts: list[dict], start: float | None = None, hours: float = 3) -> dict:
    start = start if start is not None else time.time() - 3600
    r = await http.post("/v1/events", json={
        "name": "Career fair", "starts_at": iso(start), "ends_at": iso(start + hours * 3600), "hosts": hosts,
    })
    assert r.status_code == 201, r.text
    return r.json()


async def test_event_setup_slots_and_registration(server):
    now = time.time()
    async with server.http() as http:
        bad = await http.post("/v1/events", json={"name": "x", "starts_at": iso(now), "ends_at": iso(now - 1), "hosts": [{"identity": "a"}]})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
        event = await make_event(http, hosts=[
            {"identity": "acme", "name": "ACME", "max_sessions": 2, "spots": 2, "duration_minutes": 30,
             "timeframes": [{"starts_at": iso(now), "ends_at": iso(now + 7200)}]},
            {"identity": "globex", "spots": 10},
        ])
        assert [h["identity"] for h in event["hosts"]] == ["acme", "globex"]
        eid = event["id"]

        async def pick(host, at):
            return await http.post(f"/v1/events/{eid}/slots", json={"host_identity": host, "starts_at": iso(at)})

        first = await pick("acme", now + 600)
        assert first.status_code == 201, first.text
        slot = first.json()
        assert slot["spots"] == 2 and slot["remaining"] == 2
        for at, code in ((now + 900, "slot_overlap"), (now - 600, "slot_outside_window"), (now + 7000, "slot_outside_window")):
            r = await pick("acme", at)
            assert (r.status_code, r.json()["error"]["code"]) in ((409, code), (422, code)), (at - now, r.text)
        assert (await pick("acme", now + 2400)).status_code == 201
        r = await pick("acme", now + 4800)
        assert r.json()["error"]["code"] == "host_session_limit"
        r = await pick("nobody", now + 600)
        assert (r.status_code, r.json()["error"]["code"]) == (404, "host_not_found")

        async def register(identity):
            return await http.post(f"/v1/events/{eid}/slots/{slot['id']}/registrations", json={"identity": identity})

        ann = await register("ann")
        assert ann.status_code == 201 and ann.json()["room_id"] == slot["room_id"] and ann.json()["token"]
        assert (await register("ann")).json()["error"]["code"] == "already_registered"
        assert (await register("bob")).status_code == 201
        full = await register("cy")
        assert (full.status_code, full.json()["error"]["code"]) == (409, "slot_full")
        nowhere = await http.post(f"/v1/events/{eid}/slots/slot_nope/registrations", json={"identity": "dee"})
        assert (nowhere.status_code, nowhere.json()["error"]["code"]) == (404, "slot_not_found")
        bad = await http.post(f"/v1/events/{eid}/slots/{slot['id']}/registrations", json={"identity": ""})
        assert bad.json()["error"]["code"] == "invalid_request"
        async with httpx.AsyncClient(base_url=server.url) as anon:
            r = await anon.post(f"/v1/events/{eid}/slots/{slot['id']}/registrations", json={"identity": "eve"})
            assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized")
        detail = (await http.get(f"/v1/events/{eid}")).json()
        assert [(s["registered"], s["remaining"]) for s in detail["slots"]][0] == (2, 0)  # nothing written by refusals
        assert (await http.get("/v1/events/evt_nope")).json()["error"]["code"] == "event_not_found"


async def test_start_session_six_minutes_early_is_refused(server):
    now = time.time()
    async with server.http() as http:
        event = await make_event(http, hosts=[{"identity": "acme", "spots": 5}, {"identity": "globex", "spots": 5}])
        eid = event["id"]
        late = (await http.post(f"/v1/events/{eid}/slots", json={"host_identity": "globex", "starts_at": iso(now + 6 * 60 + 30)})).json()
        soon = (await http.post(f"/v1/events/{eid}/slots", json={"host_identity": "acme", "starts_at": iso(now + 4 * 60)})).json()
        reg = (await http.post(f"/v1/events/{eid}/slots/{soon['id']}/registrations", json={"identity": "ann", "name": "Ann"})).json()

        host = await join_room(server, http, {"id": late["room_id"]}, "globex", "moderator")
        refused = await host.command({"type": "start_session"})
        assert (refused["type"], refused["code"]) == ("error", "too_early")
        await host.close()

        ann = Participant(server)
        msg = await ann.join(reg["token"], soon["room_id"])
        assert (msg["type"], msg["code"]) == ("error", "session_not_started")  # nobody started it yet
        host = await join_room(server, http, {"id": soon["room_id"]}, "acme", "moderator")
        assert host.joined["room"]["comment"] == "Career fair with acme"
        msg = await Participant(server).join(reg["token"], soon["room_id"])
        assert msg["code"] == "session_not_started"  # the host is in, but has not started it
        started = await host.command({"type": "start_session"})
        assert started["type"] == "ack" and started["data"]["started"] is True
        ann = Participant(server)
        assert (await ann.join(reg["token"], soon["room_id"]))["type"] == "joined"
        await ann.close()
        await host.close()


async def test_a_fifty_participant_event_session_end_to_end(server):
    """Registration, start, stage requests, Q&A, breakout rooms opened and closed, then the record."""
    now = time.time()
    async with server.http() as http:
        event = await make_event(http, hosts=[{"identity": "host", "name": "Host Co", "spots": 49, "duration_minutes": 60}])
        eid = event["id"]
        slot = (await http.post(f"/v1/events/{eid}/slots", json={"host_identity": "host", "starts_at": iso(now + 120)})).json()
        regs = []
        for i in range(49):
            r = await http.post(f"/v1/events/{eid}/slots/{slot['id']}/registrations", json={"identity": f"p{i:02}", "name": f"P{i:02}"})
            assert r.status_code == 201, r.text
            regs.append(r.json())
        full = await http.post(f"/v1/events/{eid}/slots/{slot['id']}/registrations", json={"identity": "p49"})
        assert full.json()["error"]["code"] == "slot_full"

        host = await join_room(server, http, {"id": slot["room_id"]}, "host", "moderator")
        assert (await host.command({"type": "start_session"}))["type"] == "ack"
        people: list[Participant] = []

        async def enter(reg):
            p = Participant(server)
            msg = await p.join(reg["token"], slot["room_id"])
            assert msg["type"] == "joined", msg
            return p

        people = list(await asyncio.gather(*(enter(r) for r in regs)))
        try:
            sid = host.joined["session"]["id"]
            walk_in = Participant(server)
            msg = await walk_in.join(await make_token(http, slot["room_id"], "walk-in", "subscriber"), slot["room_id"])
            assert (msg["type"], msg["code"]) == ("error", "room_full")  # 50 in the session

            # Stage requests: two approved, one declined.
            for p in people[:3]:
                assert (await p.command({"type": "request_stage"}))["type"] == "ack"
            for p, approve in zip(people[:3], (True, True, False)):
                reply = await host.command({"type": "answer_stage_request", "participant_id": p.id, "approve": approve})
                assert reply["type"] == "ack", reply
            # Q&A: five questions, votes from many, the host answers the top one.
            questions = [(await p.command({"type": "ask", "text": f"Question from {p.joined['participant']['name']}?"}))["data"] for p in people[10:15]]
            for i, p in enumerate(people[15:45]):
                target = questions[0] if i < 20 else questions[1]
                assert (await p.command({"type": "upvote", "question_id": target["id"]}))["type"] == "ack"
            top = (await host.command({"type": "questions"}))["data"][0]
            assert top["id"] == questions[0]["id"] and top["votes"] == 20
            assert (await host.command({"type": "answer_question", "question_id": top["id"], "answer": "Next week."}))["type"] == "ack"
            # Breakout rooms: five, filled automatically, opened, a word in each, closed.
            made = await host.command({"type": "breakout_create", "names": [f"Table {i}" for i in range(1, 6)]})
            plan = (await host.command({"type": "breakout_auto_assign"}))["data"]["plan"]
            assert sorted(list(plan.values()).count(r["id"]) for r in made["data"]["rooms"]) == [9, 10, 10, 10, 10]
            assert (await host.command({"type": "breakout_open"}))["type"] == "ack"
            by_room = {}
            for p in people:
                by_room.setdefault(plan[p.id], p)
            for room_id, p in by_room.items():
                assert (await p.command({"type": "chat", "text": f"hello from {room_id}"}))["data"]["breakout_id"] == room_id
            assert (await host.command({"type": "breakout_close"}))["type"] == "ack"
            assert (await host.command({"type": "end_session"}))["type"] == "ack"

            # The record.
            detail = (await http.get(f"/v1/sessions/{sid}")).json()
            assert detail["status"] == "ended" and len(detail["participants"]) == 50
            assert all(p["joined_at"] and p["left_at"] for p in detail["participants"])
            log = (await http.get(f"/v1/sessions/{sid}/participants/{people[0].id}")).json()["events"]
            kinds = [e["type"] for e in log]
            for t in ("joined", "stage_requested", "stage_approved", "moved", "chat", "session_ended"):
                assert t in kinds, (t, kinds)
            declined = [e["type"] for e in (await http.get(f"/v1/sessions/{sid}/participants/{people[2].id}")).json()["events"]]
            assert "stage_declined" in declined
            qs = (await http.get(f"/v1/sessions/{sid}/questions")).json()
            assert [(q["votes"], q["status"]) for q in qs[:2]] == [(20, "answered"), (10, "open")] and len(qs) == 5
            chat = (await http.get(f"/v1/sessions/{sid}/chat")).json()
            assert sorted(m["breakout_id"] for m in chat) == sorted(by_room)
            voters = [p for p in detail["participants"] if p["counts"]["upvotes"] == 1]
            assert len(voters) == 30
        finally:
            for p in people + [host]:
                await p.close()


async def test_bursts_of_requests_keep_every_event_rule(server):
    """16 registrations at once for 3 spots, 5 slot picks at once against an allowance of 2, 5
    overlapping picks at once, and an event-wide allowance: the server keeps every count."""
    now = time.time()
    async with server.http() as http:
        event = await make_event(http, hosts=[
            {"identity": "acme", "max_sessions": 2, "spots": 3},
            {"identity": "globex", "max_sessions": 5, "spots": 3},
            {"identity": "initech", "max_sessions": 5, "spots": 3},
        ], hours=12)
        eid = event["id"]

        async def pick(host, at):
            return await http.post(f"/v1/events/{eid}/slots", json={"host_identity": host, "starts_at": iso(at)})

        picks = await asyncio.gather(*(pick("acme", now + 600 + i * 3600) for i in range(5)))
        assert sorted(r.status_code for r in picks) == [201, 201, 409, 409, 409]
        assert {r.json()["error"]["code"] for r in picks if r.status_code == 409} == {"host_session_limit"}
        overlapping = await asyncio.gather(*(pick("globex", now + 600 + i * 60) for i in range(5)))
        assert sorted(r.status_code for r in overlapping) == [201, 409, 409, 409, 409]
        assert {r.json()["error"]["code"] for r in overlapping if r.status_code == 409} == {"slot_overlap"}

        slot = next(r.json() for r in picks if r.status_code == 201)
        regs = await asyncio.gather(*(
            http.post(f"/v1/events/{eid}/slots/{slot['id']}/registrations", json={"identity": f"p{i}"}) for i in range(16)
        ))
        assert sorted(r.status_code for r in regs) == [201] * 3 + [409] * 13
        assert {r.json()["error"]["code"] for r in regs if r.status_code == 409} == {"slot_full"}
        detail = (await http.get(f"/v1/events/{eid}")).json()
        mine = next(s for s in detail["slots"] if s["id"] == slot["id"])
        assert (mine["registered"], mine["remaining"]) == (3, 0)

        capped = await make_event(http, hosts=[{"identity": f"h{i}", "max_sessions": 3} for i in range(3)], hours=12)
        assert capped["max_sessions"] is None
        r = await http.post("/v1/events", json={
            "name": "Small fair", "starts_at": iso(now - 60), "ends_at": iso(now + 86400), "max_sessions": 4,
            "hosts": [{"identity": f"h{i}", "max_sessions": 3} for i in range(3)],
        })
        assert r.status_code == 201 and r.json()["max_sessions"] == 4
        small = r.json()["id"]
        results = await asyncio.gather(*(
            http.post(f"/v1/events/{small}/slots", json={"host_identity": f"h{i}", "starts_at": iso(now + 600 + j * 3600)})
            for i in range(3) for j in range(3)
        ))
        assert sorted(r.status_code for r in results) == [201] * 4 + [409] * 5
        assert {r.json()["error"]["code"] for r in results if r.status_code == 409} == {"event_session_limit"}
        assert len((await http.get(f"/v1/events/{small}")).json()["slots"]) == 4
