"""Meeting features through the gateway, against real Ray actors and the store: the stage and
its limits, mic & camera requests, chat and Q&A (with history after a reconnect), breakout rooms
(limits, automatic assignment, isolation of chat and of media shown with aiortc clients)."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection

from tests.helpers import Participant, join_room, make_room, make_token
from loadtest.peers import join_media, loopback_only_ice, publisher_offer, wait_for


async def an_offer() -> str:
    """A real publish offer (VP8 + Opus) from aiortc; the seat rules are checked before media flows."""
    pc = RTCPeerConnection()
    try:
        return await publisher_offer(pc)
    finally:
        await pc.close()


async def test_fifth_speaker_and_seventh_participant_are_refused(server):
    offer = await an_offer()
    async with server.http() as http:
        room = await make_room(http, name="stage limits")
        speakers = [await join_room(server, http, room, f"host{i}", "moderator") for i in range(5)]
        guests = [await join_room(server, http, room, f"guest{i}", "publisher") for i in range(7)]
        try:
            for s in speakers[:4]:
                assert (await s.command({"type": "offer", "pc": "publish", "sdp": offer}))["type"] == "answer"
            refused = await speakers[4].command({"type": "offer", "pc": "publish", "sdp": offer})
            assert (refused["type"], refused["code"]) == ("error", "speakers_full")
            for g in guests[:6]:
                assert (await g.command({"type": "offer", "pc": "publish", "sdp": offer}))["type"] == "answer"
            refused = await guests[6].command({"type": "offer", "pc": "publish", "sdp": offer})
            assert (refused["type"], refused["code"]) == ("error", "stage_full")
            # One steps off the stage; the seventh may go on now.
            assert (await guests[0].command({"type": "leave_stage"}))["type"] == "ack"
            assert (await guests[6].command({"type": "offer", "pc": "publish", "sdp": offer}))["type"] == "answer"
            sid = speakers[0].joined["session"]["id"]
            detail = (await http.get(f"/v1/sessions/{sid}")).json()
            on = {p["identity"] for p in detail["participants"] if p["on_stage"]}
            assert on == {f"host{i}" for i in range(4)} | {f"guest{i}" for i in range(1, 7)}
        finally:
            for p in speakers + guests:
                await p.close()


async def test_51st_participant_is_refused(server):
    async with server.http() as http:
        room = await make_room(http, name="full house")  # capacity: the default, 50
        assert room["capacity"] == 50
        people = await asyncio.gather(*(join_room(server, http, room, f"p{i}", "subscriber") for i in range(50)))
        try:
            late = Participant(server)
            msg = await late.join(await make_token(http, room["id"], "p50", "subscriber"), room["id"])
            assert (msg["type"], msg["code"]) == ("error", "room_full")
            # Someone leaves: there is room again.
            assert (await people[0].command({"type": "leave"}))["type"] == "ack"
            again = Participant(server)
            assert (await again.join(await make_token(http, room["id"], "p50", "subscriber"), room["id"]))["type"] == "joined"
            await again.close()
        finally:
            for p in people:
                await p.close()


def host_traffic(metrics: str) -> dict[str, float]:
    """The gateway's calls to session hosts and the messages they went in, from /metrics."""
    out = {}
    for line in metrics.splitlines():
        if line.startswith(("mediaserver_host_calls_total", "mediaserver_host_messages_total")):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


async def test_a_room_filling_at_once_tells_everyone_of_everyone(server):
    """Twenty join one room at the same instant, so every join wakes everyone's long poll: each
    learns of all the others (in its joined message or a joined event, once each), and the
    gateway's calls to the session's host went in fewer messages than there were calls. They
    all raced to open the session (its first join writes it, on its host): they are all in one."""
    async with server.http() as http:
        before = host_traffic((await http.get("/metrics")).text)
        room = await make_room(http, name="rush hour")
        people = await asyncio.gather(*(join_room(server, http, room, f"p{i}") for i in range(20)))
        try:
            assert len({p.joined["session"]["id"] for p in people}) == 1
            listed = (await http.get("/v1/sessions", params={"room_id": room["id"]})).json()["sessions"]
            assert [s["id"] for s in listed if s["room_id"] == room["id"]] == [people[0].joined["session"]["id"]]
            everyone = {p.id for p in people}
            for p in people:
                known = [q["id"] for q in p.joined["participants"] if q["id"] != p.id]
                while set(known) != everyone - {p.id}:
                    known.append((await p.wait_event("joined", timeout=20))["participant_id"])
                assert sorted(known) == sorted(everyone - {p.id})  # (no one twice)
            said = await people[7].command({"type": "chat", "text": "all here?"})
            assert said["type"] == "ack"
            for p in people:
                assert (await p.wait_event("chat", people[7].id))["data"]["message"]["text"] == "all here?"
            after = host_traffic((await http.get("/metrics")).text)
            sent = {k: after[k] - before.get(k, 0) for k in after}
            for kind in ("calls", "polls"):
                calls, messages = sent[f'mediaserver_host_calls_total{{kind="{kind}"}}'], sent[f'mediaserver_host_messages_total{{kind="{kind}"}}']
                assert calls >= 20 and 0 < messages < calls, (kind, calls, messages)
        finally:
            for p in people:
                await p.close()


async def test_mic_and_camera_request_approved_declined_and_revoked(server):
    offer = await an_offer()
    async with server.http() as http:
        room = await make_room(http, name="requests")
        host = await join_room(server, http, room, "host", "moderator")
        ann = await join_room(server, http, room, "ann", "subscriber")
        bob = await join_room(server, http, room, "bob", "subscriber")
        try:
            refused = await ann.command({"type": "offer", "pc": "publish", "sdp": offer})
            assert (refused["type"], refused["code"]) == ("error", "publish_not_allowed")
            assert (await ann.command({"type": "request_stage"}))["type"] == "ack"
            again = await ann.command({"type": "request_stage"})
            assert again["code"] == "stage_request_pending"
            assert (await bob.command({"type": "request_stage"}))["type"] == "ack"
            await host.wait_event("stage_requested", ann.id)
            await host.wait_event("stage_requested", bob.id)
            nope = await bob.command({"type": "answer_stage_request", "participant_id": ann.id, "approve": True})
            assert nope["code"] == "not_moderator"
            ok = await host.command({"type": "answer_stage_request", "participant_id": ann.id, "approve": True})
            assert ok["type"] == "ack"
            await ann.wait_event("stage_approved", ann.id)
            assert (await ann.wait_event("role_changed", ann.id))["data"]["role"] == "publisher"
            assert (await host.command({"type": "answer_stage_request", "participant_id": bob.id, "approve": False}))["type"] == "ack"
            await bob.wait_event("stage_declined", bob.id)
            assert (await ann.command({"type": "offer", "pc": "publish", "sdp": offer}))["type"] == "answer"
            assert (await bob.command({"type": "offer", "pc": "publish", "sdp": offer}))["code"] == "publish_not_allowed"
            # The host takes ann off screen: her tracks end for everyone and she may not publish again.
            assert (await host.command({"type": "remove_from_stage", "participant_id": ann.id}))["type"] == "ack"
            await bob.wait_event("stage_left", ann.id)
            await bob.wait_event("track_unpublished", ann.id)
            assert (await ann.command({"type": "offer", "pc": "publish", "sdp": offer}))["code"] == "publish_not_allowed"
            # ... and removes bob from the session.
            assert (await host.command({"type": "remove_participant", "participant_id": bob.id}))["type"] == "ack"
            code, reason = await bob.closed()
            assert (code, reason) == (4003, "removed")
            sid = host.joined["session"]["id"]
            log = [e["type"] for e in (await http.get(f"/v1/sessions/{sid}/participants/{ann.id}")).json()["events"]]
            for t in ("stage_requested", "stage_approved", "stage_left", "track_published", "track_unpublished"):
                assert t in log, (t, log)
        finally:
            for p in (host, ann, bob):
                await p.close()


async def test_chat_and_questions_round_trip_with_history_after_reconnect(server):
    async with server.http() as http:
        room = await make_room(http, name="talk", comment="Ask anything")
        host = await join_room(server, http, room, "host", "moderator")
        ann = await join_room(server, http, room, "ann", "subscriber")
        bob = await join_room(server, http, room, "bob", "subscriber")
        try:
            sent = await ann.command({"type": "chat", "text": "hello all"})
            assert sent["type"] == "ack" and sent["data"]["text"] == "hello all"
            ev = await bob.wait_event("chat", ann.id)
            assert ev["data"]["message"]["text"] == "hello all"
            assert (await ann.command({"type": "chat", "text": "x" * 1001}))["code"] == "message_too_long"
            assert (await ann.command({"type": "chat", "text": ""}))["code"] == "message_empty"
            for i in range(5):
                assert (await bob.command({"type": "chat", "text": f"msg {i}"}))["type"] == "ack"
            assert (await bob.command({"type": "chat", "text": "too fast"}))["code"] == "rate_limited"  # 5 per 5 s

            q1 = (await ann.command({"type": "ask", "text": "When is the next one?"}))["data"]
            q2 = (await bob.command({"type": "ask", "text": "Slides?"}))["data"]
            assert (await ann.command({"type": "upvote", "question_id": q2["id"]}))["data"]["votes"] == 1
            assert (await host.command({"type": "upvote", "question_id": q2["id"]}))["data"]["votes"] == 2
            assert (await ann.command({"type": "upvote", "question_id": q2["id"]}))["code"] == "already_voted"
            listed = (await bob.command({"type": "questions"}))["data"]
            assert [q["id"] for q in listed] == [q2["id"], q1["id"]]  # most votes first
            answered = await host.command({"type": "answer_question", "question_id": q2["id"], "answer": "Yes, by email."})
            assert answered["data"]["status"] == "answered"
            assert (await ann.wait_event("question_answered"))["data"]["question"]["answer"] == "Yes, by email."

            # Bob's network drops; he comes back inside the grace period and has the history.
            await bob.drop()
            resumed = Participant(server)
            msg = await resumed.resume(bob.joined["reconnect_token"])
            assert msg["type"] == "joined" and msg["resumed"] is True
            assert [m["text"] for m in msg["chat"]] == ["hello all"] + [f"msg {i}" for i in range(5)]
            assert [(q["id"], q["status"]) for q in msg["questions"]] == [(q1["id"], "open"), (q2["id"], "answered")]
            assert msg["room"]["comment"] == "Ask anything"
            await resumed.close()

            # The session's record keeps both.
            sid = host.joined["session"]["id"]
            chat = (await http.get(f"/v1/sessions/{sid}/chat")).json()
            assert [m["text"] for m in chat] == ["hello all"] + [f"msg {i}" for i in range(5)]
            qs = (await http.get(f"/v1/sessions/{sid}/questions")).json()
            assert [(q["id"], q["votes"], q["status"]) for q in qs] == [(q2["id"], 2, "answered"), (q1["id"], 0, "open")]
            detail = (await http.get(f"/v1/sessions/{sid}")).json()
            counts = {p["identity"]: p["counts"] for p in detail["participants"]}
            assert counts["bob"] == {"chat_messages": 5, "questions": 1, "upvotes": 0}
            assert counts["ann"] == {"chat_messages": 1, "questions": 1, "upvotes": 1}
        finally:
            for p in (host, ann):
                await p.close()


async def test_breakout_rooms_limits_assignment_and_chat_isolation(server):
    async with server.http() as http:
        room = await make_room(http, name="workshop")
        host = await join_room(server, http, room, "host", "moderator")
        people = [await join_room(server, http, room, f"p{i}", "subscriber") for i in range(5)]
        try:
            too_long = await host.command({"type": "breakout_create", "names": ["x" * 31]})
            assert too_long["code"] == "breakout_name_too_long"
            made = await host.command({"type": "breakout_create", "names": ["y" * 30] + [f"Room {i}" for i in range(2, 11)]})
            assert made["type"] == "ack" and len(made["data"]["rooms"]) == 10
            eleventh = await host.command({"type": "breakout_create", "names": ["Eleven"]})
            assert eleventh["code"] == "too_many_breakouts"
            assert (await people[0].command({"type": "breakout_open"}))["code"] == "not_moderator"
            rooms = made["data"]["rooms"]
            dup = await host.command({"type": "breakout_rename", "breakout_id": rooms[0]["id"], "name": "Room 2"})
            assert dup["code"] == "breakout_name_taken"
            renamed = await host.command({"type": "breakout_rename", "breakout_id": rooms[0]["id"], "name": "Team blue"})
            assert renamed["data"]["rooms"][0]["name"] == "Team blue"
            for r in rooms[2:]:
                assert (await host.command({"type": "breakout_delete", "breakout_id": r["id"]}))["type"] == "ack"
            plan = (await host.command({"type": "breakout_auto_assign"}))["data"]["plan"]
            assert sorted(list(plan.values()).count(r["id"]) for r in rooms[:2]) == [2, 3]
            assert (await host.command({"type": "breakout_open"}))["type"] == "ack"
            for p in people:
                moved = await p.wait_event("moved", p.id)
                assert moved["data"]["breakout_id"] == plan[p.id]

            # Chat stays in its room; the host's message to all rooms reaches everyone.
            a = next(p for p in people if plan[p.id] == rooms[0]["id"])
            b = next(p for p in people if plan[p.id] == rooms[1]["id"])
            mate = next(p for p in people if p is not a and plan[p.id] == plan[a.id])
            assert (await a.command({"type": "chat", "text": "only for blue"}))["type"] == "ack"
            await mate.wait_event("chat", a.id)
            assert (await host.command({"type": "chat", "text": "5 minutes left", "all_rooms": True}))["type"] == "ack"
            got = await b.wait_event("chat", host.id)
            assert got["data"]["message"]["text"] == "5 minutes left"
            assert not [e for e in b.events if e["event"] == "chat" and e["participant_id"] == a.id]
            history = (await b.command({"type": "chat_history"}))["data"]
            assert [m["text"] for m in history] == ["5 minutes left"]

            # The host visits a room, then closes them all: everyone is back in the main room.
            assert (await host.command({"type": "breakout_visit", "breakout_id": rooms[1]["id"]}))["type"] == "ack"
            assert (await host.command({"type": "breakout_close"}))["type"] == "ack"
            for p in people:
                assert (await p.wait_event("moved", p.id))["data"]["breakout_id"] is None
            sid = host.joined["session"]["id"]
            log = [e for e in (await http.get(f"/v1/sessions/{sid}/participants/{a.id}")).json()["events"] if e["type"] == "moved"]
            assert [e["data"]["breakout_id"] for e in log] == [rooms[0]["id"], None]
        finally:
            for p in [host] + people:
                await p.close()


async def test_breakout_rooms_isolate_media(server):
    """aiortc clients: a subscriber in room A decodes A's publisher and nothing of B's; after the
    rooms close it receives both."""
    loopback_only_ice()
    async with server.http() as http:
        room = await make_room(http, name="isolated", media_mode="routed")
        host = await join_media(server, http, room, "host", "moderator")
        pub_a = await join_media(server, http, room, "pub-a", "publisher")
        pub_b = await join_media(server, http, room, "pub-b", "publisher")
        sub_a = await join_media(server, http, room, "sub-a", "subscriber")
        sub_b = await join_media(server, http, room, "sub-b", "subscriber")
        clients = [host, pub_a, pub_b, sub_a, sub_b]
        try:
            made = await host.command({"type": "breakout_create", "names": ["A", "B"]})
            ra, rb = (r["id"] for r in made["data"]["rooms"])
            assign = {pub_a.id: ra, sub_a.id: ra, pub_b.id: rb, sub_b.id: rb}
            assert (await host.command({"type": "breakout_assign", "assignments": assign}))["type"] == "ack"
            assert (await host.command({"type": "breakout_open"}))["type"] == "ack"
            assert (await pub_a.publish())["type"] == "answer"
            assert (await pub_b.publish())["type"] == "answer"
            await wait_for(lambda: sub_a.got.video_from.get(pub_a.id, 0) >= 30 and sub_b.got.video_from.get(pub_b.id, 0) >= 30, timeout=60)
            await asyncio.sleep(1)
            assert sub_a.got.video_from.get(pub_b.id, 0) == 0 and sub_b.got.video_from.get(pub_a.id, 0) == 0
            assert host.got.video_frames == 0  # the host stayed in the main room, where nobody publishes
            assert (await host.command({"type": "breakout_close"}))["type"] == "ack"
            await wait_for(lambda: sub_a.got.video_from.get(pub_b.id, 0) >= 20 and host.got.video_from.get(pub_a.id, 0) >= 20, timeout=60)
        finally:
            for c in clients:
                await c.close()
