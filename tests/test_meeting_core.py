"""Meeting rules on SessionCore, without Ray: every limit at and past its bound, each refusal's
code, and that what was acknowledged survives a reload (real SQLite store, a test clock)."""

from __future__ import annotations

import pytest

from mediaserver.control.meeting import MAX_BREAKOUTS
from mediaserver.errors import MediaserverError
from tests.test_control_core import env, new_session, reloaded  # noqa: F401  (fixture and helpers)


async def refused(code: str, coro) -> MediaserverError:
    with pytest.raises(MediaserverError) as info:
        await coro
    assert info.value.code == code, info.value
    return info.value


async def people(core, n: int, role: str, prefix: str) -> list[str]:
    return [(await core.join(identity=f"{prefix}{i}", name=f"{prefix.upper()}{i}", role=role))["id"] for i in range(n)]


async def test_four_speakers_and_six_participants_on_screen(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    speakers = await people(core, 5, "moderator", "s")
    publishers = await people(core, 7, "publisher", "p")
    viewer = (await people(core, 1, "subscriber", "v"))[0]
    for s in speakers[:4]:
        assert await core.take_stage(s) is True
    assert await core.take_stage(speakers[0]) is False  # already seated: nothing changes
    await refused("speakers_full", core.take_stage(speakers[4]))
    for p in publishers[:6]:
        await core.take_stage(p)
    await refused("stage_full", core.take_stage(publishers[6]))
    await refused("publish_not_allowed", core.take_stage(viewer))
    # A seat frees when someone steps off; the refused one gets it then.
    await core.leave_stage(publishers[0])
    await core.take_stage(publishers[6])
    await refused("not_on_stage", core.leave_stage(publishers[0]))
    fresh = await reloaded(core)
    assert fresh._seats(type("T", (), {"participants": {}, "participant": fresh.participants.get})()) == (4, 6)


async def test_mic_and_camera_requests_approved_and_declined(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    [host] = await people(core, 1, "moderator", "h")
    a, b = await people(core, 2, "subscriber", "v")
    await core.request_stage(a)
    await refused("stage_request_pending", core.request_stage(a))
    await refused("not_moderator", core.answer_stage_request(b, a, True))
    await core.request_stage(b)
    await core.answer_stage_request(host, a, True)
    assert core.participants[a]["role"] == "publisher" and core.participants[a]["on_stage"]
    await core.answer_stage_request(host, b, False)
    assert core.participants[b]["role"] == "subscriber" and core.participants[b]["stage_requested_at"] is None
    await refused("no_stage_request", core.answer_stage_request(host, b, True))
    await refused("already_on_stage", core.request_stage(a))
    # A speaker takes a off screen: it loses the permission to publish as well.
    await core.remove_from_stage(host, a)
    assert core.participants[a]["role"] == "subscriber" and not core.participants[a]["on_stage"]
    await refused("publish_not_allowed", core.take_stage(a))
    events = [e["type"] for e in await store.participant_events(a)]
    for t in ("stage_requested", "stage_approved", "stage_left", "role_changed"):
        assert t in events
    assert "stage_declined" in [e["type"] for e in await store.participant_events(b)]


async def test_approval_is_refused_when_six_are_on_screen(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    [host] = await people(core, 1, "moderator", "h")
    viewers = await people(core, 7, "subscriber", "v")
    for v in viewers:
        await core.request_stage(v)
    for v in viewers[:6]:
        await core.answer_stage_request(host, v, True)
    await refused("stage_full", core.answer_stage_request(host, viewers[6], True))
    assert core.participants[viewers[6]]["stage_requested_at"] is not None  # still waiting, not lost


async def test_removing_a_participant(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    host, other = await people(core, 2, "moderator", "h")
    [v] = await people(core, 1, "subscriber", "v")
    await refused("not_moderator", core.remove(v, host))
    await core.remove(host, v)
    assert v not in core.participants
    assert (await store.get_participant(v))["left_reason"] == "removed"


async def test_chat_limits_rate_and_history(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    a, b = await people(core, 2, "publisher", "p")
    await refused("message_empty", core.chat(a, "   "))
    await refused("message_too_long", core.chat(a, "x" * 1001))
    await core.chat(a, "x" * 1000)  # at the limit
    for i in range(4):
        clock.t += 0.1
        await core.chat(a, f"hello {i}")
    await refused("rate_limited", core.chat(a, "one too many"))  # 5 in 5 s
    clock.t += 5
    await core.chat(a, "later")
    await refused("not_moderator", core.chat(b, "to all rooms", all_rooms=True))
    history = await core.chat_history(b)
    assert [m["text"] for m in history][-2:] == ["hello 3", "later"] and len(history) == 6
    fresh = await reloaded(core)
    assert [m["text"] for m in await fresh.chat_history(b)] == [m["text"] for m in history]


async def test_questions_upvotes_and_order(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    [host] = await people(core, 1, "moderator", "h")
    a, b, c = await people(core, 3, "subscriber", "v")
    q1 = await core.ask(a, "first?")
    clock.t += 1
    q2 = await core.ask(b, "second?")
    clock.t += 1
    q3 = await core.ask(c, "third?")
    await core.upvote(a, q2["id"])
    await core.upvote(c, q2["id"])
    await core.upvote(a, q3["id"])
    await refused("already_voted", core.upvote(a, q2["id"]))
    await refused("question_not_found", core.upvote(a, "q_nope"))
    assert [q["id"] for q in core.question_list()] == [q2["id"], q3["id"], q1["id"]]
    await refused("not_moderator", core.settle_question(a, q1["id"], "answered"))
    await core.settle_question(host, q2["id"], "answered", "Yes, on Friday.")
    await core.settle_question(host, q1["id"], "dismissed")
    await refused("question_closed", core.upvote(b, q2["id"]))
    listed = core.question_list()
    assert [(q["id"], q["status"]) for q in listed] == [(q3["id"], "open"), (q2["id"], "answered")]
    assert listed[1]["answer"] == "Yes, on Friday." and listed[1]["votes"] == 2
    assert len(core.question_list(include_dismissed=True)) == 3
    fresh = await reloaded(core)
    assert fresh.question_list() == listed
    await refused("already_voted", fresh.upvote(a, q3["id"]))  # votes survive a restart too
    await refused("rate_limited", _ask_many(core, b))


async def _ask_many(core, pid):
    for i in range(4):
        await core.ask(pid, f"more {i}")


async def test_breakout_limits_names_and_assignment(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    [host] = await people(core, 1, "moderator", "h")
    members = await people(core, 7, "publisher", "p")
    await refused("not_moderator", core.create_breakouts(members[0], ["A"]))
    await refused("breakout_name_too_long", core.create_breakouts(host, ["x" * 31]))
    await refused("breakout_name_empty", core.create_breakouts(host, [" "]))
    view = await core.create_breakouts(host, ["y" * 30] + [f"Room {i}" for i in range(2, MAX_BREAKOUTS + 1)])
    assert len(view["rooms"]) == MAX_BREAKOUTS
    await refused("too_many_breakouts", core.create_breakouts(host, ["Eleven"]))
    rooms = view["rooms"]
    await refused("breakout_name_taken", core.rename_breakout(host, rooms[0]["id"], "room 2"))  # case-insensitive
    await core.rename_breakout(host, rooms[0]["id"], "Team blue")
    for r in rooms[3:]:
        await core.delete_breakout(host, r["id"])
    await refused("breakout_not_found", core.delete_breakout(host, rooms[5]["id"]))
    view = await core.auto_assign_breakouts(host)
    sizes = sorted(list(view["plan"].values()).count(r["id"]) for r in view["rooms"])
    assert sizes == [2, 2, 3] and host not in view["plan"]  # an even split of the 7 non-speakers
    await refused("breakouts_closed", core.visit_breakout(host, rooms[0]["id"]))
    await core.open_breakouts(host)
    await refused("breakouts_open", core.open_breakouts(host))
    await refused("breakouts_open", core.delete_breakout(host, rooms[0]["id"]))
    for pid, room in view["plan"].items():
        assert core.participants[pid]["breakout_id"] == room
    await core.visit_breakout(host, rooms[1]["id"])
    assert core.room_of(host) == rooms[1]["id"]
    # Moving someone by hand while open moves them at once.
    mover = members[0]
    target = next(r["id"] for r in view["rooms"] if r["id"] != view["plan"][mover])
    await core.assign_breakout(host, {mover: target})
    assert core.room_of(mover) == target
    fresh = await reloaded(core)
    assert fresh.room_of(mover) == target and fresh.breakout_view()["open"]
    await core.close_breakouts(host)
    assert all(p["breakout_id"] is None for p in core.participants.values())
    moves = [e for e in await store.participant_events(mover) if e["type"] == "moved"]
    assert [m["data"]["breakout_id"] for m in moves] == [view["plan"][mover], target, None]


async def test_breakout_chat_and_events_stay_in_their_room(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    [host] = await people(core, 1, "moderator", "h")
    a, b = await people(core, 2, "publisher", "p")
    view = await core.create_breakouts(host, ["A", "B"])
    ra, rb = (r["id"] for r in view["rooms"])
    await core.assign_breakout(host, {a: ra, b: rb})
    await core.open_breakouts(host)
    seq = core.last_seq
    said_a = await core.chat(a, "in A")
    await core.chat(b, "in B")
    await core.chat(host, "main room")
    await core.chat(host, "everyone", all_rooms=True)
    assert said_a["breakout_id"] == ra

    async def chats(pid):
        got = await core.wait_events(pid, seq, timeout=0)
        return [e["data"]["message"]["text"] for e in got["events"] if e["type"] == "chat"]

    assert await chats(a) == ["in A", "everyone"]
    assert await chats(b) == ["in B", "everyone"]
    assert await chats(host) == ["main room", "everyone"]
    assert [m["text"] for m in await core.chat_history(a)] == ["in A", "everyone"]
    # Events fetched from the store (an old cursor) are filtered the same way.
    core.recent.clear()
    assert await chats(b) == ["in B", "everyone"]


async def event_session(store, team, clock, *, spots: int, starts_in: float):
    """The session of an event slot with ``spots`` that begins ``starts_in`` seconds from the clock."""
    from mediaserver.control.directory import DirectoryCore
    from mediaserver.control.session import SessionCore
    from tests.test_control_core import GRACE, STALE

    start = clock.t + starts_in
    event = await store.create_event(team["id"], "Career fair", start - 3600, start + 3600, [{
        "identity": "acme", "name": "ACME", "max_sessions": 2, "spots": spots, "duration": 1800.0,
        "timeframes": [[start - 3600, start + 3600]],
    }])
    host = event["hosts"][0]
    slot = await store.add_slot(event, host, start, {
        "name": "ACME", "type": "adhoc", "media_mode": "routed", "archive_mode": "manual", "encryption": "server",
        "location_hint": None, "comment": "Career fair with ACME", "capacity": spots + 4,  # as the API makes it
    })
    room = await store.get_room(slot["room_id"])
    session = await DirectoryCore(store, default_max_live_sessions=5, clock=clock).open_session(room)
    core = SessionCore(store, session["id"], grace=GRACE, stale=STALE, clock=clock)
    await core.load()
    return core, slot, event, host


async def test_event_session_starts_from_five_minutes_before(env):
    store, team, clock = env
    core, slot, _, _ = await event_session(store, team, clock, spots=3, starts_in=6 * 60)
    host = (await core.join(identity="acme", name="ACME", role="moderator"))["id"]  # speakers may come in early
    await refused("session_not_started", core.join(identity="early", name="Early", role="subscriber"))
    err = await refused("too_early", core.start_session(host))  # 6 minutes before: refused
    assert "5 minutes" in err.message
    clock.t += 61  # now 4:59 before
    await refused("session_not_started", core.join(identity="early", name="Early", role="subscriber"))
    assert (await core.start_session(host))["started"] is True
    await core.join(identity="early", name="Early", role="subscriber")
    assert (await reloaded(core)).meeting["started"] is True


async def test_registration_until_full_and_unclaimed_spots(env):
    store, team, clock = env
    core, slot, _, _ = await event_session(store, team, clock, spots=3, starts_in=60)
    await store.register(slot["id"], "ann", "Ann")
    await store.register(slot["id"], "bob", "Bob")
    await refused("already_registered", store.register(slot["id"], "ann", "Ann"))
    await store.register(slot["id"], "cy", "Cy")
    await refused("slot_full", store.register(slot["id"], "dee", "Dee"))
    host = (await core.join(identity="acme", name="ACME", role="moderator"))["id"]
    await core.start_session(host)
    # The host takes no participant spot.
    await core.join(identity="ann", name="Ann", role="subscriber")
    # Spots held for bob and cy: an unregistered walk-in may not take them.
    await refused("room_full", core.join(identity="walk-in", name="W", role="subscriber"))
    await core.join(identity="bob", name="Bob", role="subscriber")
    await core.join(identity="cy", name="Cy", role="subscriber")
    await refused("room_full", core.join(identity="walk-in", name="W", role="subscriber"))


async def test_unclaimed_spots_are_open_to_all_once_live(env):
    store, team, clock = env
    core, slot, _, _ = await event_session(store, team, clock, spots=3, starts_in=60)
    await store.register(slot["id"], "ann", "Ann")
    host = (await core.join(identity="acme", name="ACME", role="moderator"))["id"]
    await core.start_session(host)
    await core.join(identity="w1", name="W1", role="subscriber")
    await core.join(identity="w2", name="W2", role="subscriber")  # 2 unclaimed spots taken by walk-ins
    await refused("room_full", core.join(identity="w3", name="W3", role="subscriber"))  # ann's is held
    await core.join(identity="ann", name="Ann", role="subscriber")


async def test_slots_respect_overlap_allowance_and_spots(env):
    store, team, clock = env
    _, slot, event, host = await event_session(store, team, clock, spots=2, starts_in=3600)
    room = {"name": "x", "type": "adhoc", "media_mode": "routed", "archive_mode": "manual", "encryption": "server",
            "location_hint": None, "comment": None}
    await refused("slot_overlap", store.add_slot(event, host, slot["starts_at"] + 600, room))
    second = await store.add_slot(event, host, slot["ends_at"], room)  # back to back is fine
    assert second["starts_at"] == slot["ends_at"]
    await refused("host_session_limit", store.add_slot(event, host, slot["ends_at"] + 7200, room))
    detail = await store.get_event(event["id"])
    assert [s["id"] for s in detail["slots"]] == [slot["id"], second["id"]]
