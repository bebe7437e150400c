"""The control plane's plain classes, without Ray: real SQLite store, a clock the test moves."""

from __future__ import annotations

import asyncio

import pytest

from mediaserver.control.directory import DirectoryCore
from mediaserver.control.session import SessionCore
from mediaserver.errors import MediaserverError
from mediaserver.store import Store

GRACE, STALE = 10.0, 30.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def env(tmp_path):
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    team = await store.ensure_team("t", max_live_sessions=2)
    clock = Clock()
    yield store, team, clock
    await store.close()


async def new_session(store: Store, team: dict, clock: Clock, capacity: int = 50, media_mode: str = "routed") -> SessionCore:
    room = await store.create_room(team["id"], {
        "name": "r", "type": "adhoc", "media_mode": media_mode, "archive_mode": "manual", "encryption": "server",
        "location_hint": None, "capacity": capacity, "comment": None, "starts_at": None, "ends_at": None,
    })
    directory = DirectoryCore(store, default_max_live_sessions=5, clock=clock)
    session = await directory.open_session(room)
    core = SessionCore(store, session["id"], grace=GRACE, stale=STALE, clock=clock)
    await core.load()
    return core


async def reloaded(core: SessionCore) -> SessionCore:
    fresh = SessionCore(core.store, core.session_id, grace=GRACE, stale=STALE, clock=core.clock)
    await fresh.load()
    return fresh


def types(events: list[dict]) -> list[str]:
    return [e["type"] for e in events]


async def test_join_leave_and_grace_end(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    a = await core.join(identity="a", name="A", role="moderator")
    b = await core.join(identity="b", name="B", role="publisher")
    assert core.session["status"] == "live" and len(core.participants) == 2
    await core.leave(a["id"])
    clock.t += 1
    await core.leave(b["id"])
    assert core.session["status"] == "ending_soon" and core.session["empty_since"] == clock.t
    clock.t += GRACE - 0.5
    await core.tick()
    assert core.session["status"] == "ending_soon"
    clock.t += 0.5
    await core.tick()
    assert core.session["status"] == "ended" and core.session["end_reason"] == "grace_timeout"
    stored = await store.get_session(core.session_id)
    assert stored["status"] == "ended" and stored["ended_at"] == clock.t
    with pytest.raises(MediaserverError) as e:
        await core.join(identity="c", name="C", role="publisher")
    assert e.value.code == "session_ended"


async def test_rejoin_inside_grace_keeps_session(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    a = await core.join(identity="a", name="A", role="publisher")
    await core.leave(a["id"])
    clock.t += GRACE - 1
    await core.join(identity="a", name="A", role="publisher")
    assert core.session["status"] == "live" and core.session["empty_since"] is None
    clock.t += GRACE * 2
    await core.tick()
    assert core.session["status"] == "live"


async def test_disconnect_then_resume_is_the_same_participant(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    a = await core.join(identity="a", name="A", role="publisher")
    await core.disconnect(a["id"], a["connection_id"])
    assert core.participants[a["id"]]["state"] == "disconnected" and core.session["status"] == "ending_soon"
    clock.t += GRACE - 1
    back = await core.resume(a["id"])
    assert back["id"] == a["id"] and back["state"] == "connected" and core.session["status"] == "live"
    assert types(await store.participant_events(a["id"])) == ["joined", "disconnected", "reconnected"]
    # The old connection's late disconnect must not knock out the resumed one.
    await core.disconnect(a["id"], a["connection_id"])
    assert core.participants[a["id"]]["state"] == "connected"


async def test_resume_after_grace_is_refused(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    a = await core.join(identity="a", name="A", role="publisher")
    b = await core.join(identity="b", name="B", role="publisher")  # keeps the session alive
    await core.disconnect(a["id"], a["connection_id"])
    clock.t += GRACE
    await core.tick()
    assert a["id"] not in core.participants and core.session["status"] == "live"
    with pytest.raises(MediaserverError) as e:
        await core.resume(a["id"])
    assert e.value.code == "reconnect_expired"
    assert (await store.get_participant(a["id"]))["left_reason"] == "grace_timeout"
    assert b["id"] in core.participants


async def test_stale_connection_is_disconnected(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    a = await core.join(identity="a", name="A", role="publisher")
    clock.t += STALE / 2
    core.touch(a["id"])
    clock.t += STALE / 2 + 1
    await core.tick()
    assert core.participants[a["id"]]["state"] == "connected"
    clock.t += STALE + 1
    await core.tick()
    assert core.participants[a["id"]]["state"] == "disconnected"


async def test_capacity_and_replacement(env):
    store, team, clock = env
    core = await new_session(store, team, clock, capacity=2)
    a = await core.join(identity="a", name="A", role="publisher")
    await core.join(identity="b", name="B", role="publisher")
    with pytest.raises(MediaserverError) as e:
        await core.join(identity="c", name="C", role="publisher")
    assert e.value.code == "room_full"
    # The same identity again replaces its old connection, so it still fits.
    a2 = await core.join(identity="a", name="A", role="publisher")
    assert a2["id"] != a["id"] and a["id"] not in core.participants
    assert (await store.get_participant(a["id"]))["left_reason"] == "replaced"
    assert len(await store.list_participants(core.session_id)) == 3  # the refused join wrote nothing


async def test_roles_and_moderator_end(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    mod = await core.join(identity="m", name="M", role="moderator")
    pub = await core.join(identity="p", name="P", role="publisher")
    with pytest.raises(MediaserverError) as e:
        await core.set_role(pub["id"], mod["id"], "subscriber")
    assert e.value.code == "not_moderator"
    await core.set_role(mod["id"], pub["id"], "moderator")
    assert core.participants[pub["id"]]["role"] == "moderator"
    with pytest.raises(MediaserverError) as e:
        await core.end(reason="moderator", by="part_nobody")
    assert e.value.code == "not_moderator"
    await core.end(reason="moderator", by=mod["id"])
    assert core.session["end_reason"] == "moderator" and not core.participants
    assert types(await store.participant_events(mod["id"])) == ["joined", "ended_session", "session_ended"]
    assert types(await store.participant_events(pub["id"])) == ["joined", "role_changed", "session_ended"]
    role_event = (await store.participant_events(pub["id"]))[1]
    assert role_event["data"] == {"role": "moderator", "previous": "publisher", "by": mod["id"]}


async def test_restart_rebuilds_the_same_state(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    a = await core.join(identity="a", name="A", role="moderator")
    b = await core.join(identity="b", name="B", role="publisher")
    await core.disconnect(b["id"], b["connection_id"])
    fresh = await reloaded(core)
    assert fresh.participants == core.participants
    assert fresh.last_seq == core.last_seq == 3
    assert [e["seq"] for e in fresh.recent] == [e["seq"] for e in core.recent]
    # It carries on: the disconnected participant's grace still runs out, seq numbers continue.
    clock.t += GRACE
    await fresh.tick()
    assert b["id"] not in fresh.participants and fresh.last_seq == 4
    assert a["id"] in fresh.participants


async def test_wait_events_long_poll(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    a = await core.join(identity="a", name="A", role="moderator")
    start = core.last_seq
    waiter = asyncio.create_task(core.wait_events(a["id"], start, timeout=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    b = await core.join(identity="b", name="B", role="publisher")
    got = await asyncio.wait_for(waiter, 2)
    assert [(e["type"], e["participant_id"]) for e in got["events"]] == [("joined", b["id"])]
    empty = await core.wait_events(a["id"], core.last_seq, timeout=0.05)
    assert empty["events"] == []
    # A gap older than the in-memory window is served from the store.
    core.recent.clear()
    core.recent.append({"seq": core.last_seq, "type": "x"})
    old = await core.wait_events(a["id"], 0, timeout=0)
    assert [e["type"] for e in old["events"]] == ["joined", "joined"]


async def test_superseded_connection_is_told(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    a = await core.join(identity="a", name="A", role="publisher")
    again = await core.resume(a["id"])
    res = await core.wait_events(a["id"], 0, timeout=0, connection_id=a["connection_id"])
    assert res["superseded"] is True
    res = await core.wait_events(a["id"], 0, timeout=0, connection_id=again["connection_id"])
    assert res["superseded"] is False


async def test_session_that_never_got_a_join_ends(env):
    store, team, clock = env
    core = await new_session(store, team, clock)
    clock.t += GRACE
    await core.tick()
    assert core.session["status"] == "ended"


async def test_directory_limit_counts_live_not_ending_soon(env):
    store, team, clock = env  # the team allows 2 live sessions
    s1 = await new_session(store, team, clock)
    s2 = await new_session(store, team, clock)
    a1 = await s1.join(identity="a", name="A", role="publisher")
    await s2.join(identity="b", name="B", role="publisher")
    room3 = await store.create_room(team["id"], {
        "name": "r3", "type": "adhoc", "media_mode": "routed", "archive_mode": "manual", "encryption": "server",
        "location_hint": None, "capacity": 50, "comment": None, "starts_at": None, "ends_at": None,
    })
    directory = DirectoryCore(store, default_max_live_sessions=5, clock=clock)
    with pytest.raises(MediaserverError) as e:
        await directory.open_session(room3)
    assert e.value.code == "session_limit_reached"
    assert await store.unended_session(room3["id"]) is None  # the refusal wrote nothing
    await s1.leave(a1["id"])  # s1 is now ending_soon: it no longer counts
    s3 = await directory.open_session(room3)
    assert s3["status"] == "live"
    # Joining s1 again would make three live sessions: refused the same way.
    room1 = await store.get_room(s1.session["room_id"])
    with pytest.raises(MediaserverError) as e:
        await directory.open_session(room1)
    assert e.value.code == "session_limit_reached"


async def test_a_large_audience_hears_of_the_staff_only(env):
    """Past 50 participants (a webinar), viewers' comings and goings reach the staff only, and
    a viewer's welcome lists the staff and itself: no viewer hears of every other viewer."""
    store, team, clock = env
    core = await new_session(store, team, clock, capacity=80)
    host = await core.join(identity="host", name="Host", role="moderator")
    viewers = [await core.join(identity=f"v{i}", name=f"V{i}", role="subscriber") for i in range(60)]
    first, late = viewers[0], viewers[-1]
    seen_by_viewer = await core.wait_events(first["id"], 0, 0.01, first["connection_id"])
    seen_by_host = await core.wait_events(host["id"], 0, 0.01, host["connection_id"])
    joined = lambda r: {e["participant_id"] for e in r["events"] if e["type"] == "joined"}  # noqa: E731
    assert joined(seen_by_host) == {host["id"]} | {v["id"] for v in viewers}
    # The first 49 viewers joined a small session: everyone heard of them; past 50, only the staff.
    assert {v["id"] for v in viewers[:49]} <= joined(seen_by_viewer)
    assert late["id"] not in joined(seen_by_viewer)
    assert late["id"] in joined(await core.wait_events(late["id"], 0, 0.01, late["connection_id"]))  # its own, yes
    listed = {p["id"] for p in core.snapshot(late["id"])["participants"]}
    assert listed == {host["id"], late["id"]}
    assert len(core.snapshot(host["id"])["participants"]) == 61
    await core.leave(late["id"])
    stored = {e["seq"]: e["visibility"] for e in await store.session_events(core.session_id)}
    assert "staff" in stored.values()


async def test_a_viewers_long_poll_sleeps_through_what_it_does_not_see(env):
    """A staff-only event wakes the staff's long-polls, not the viewers': with 1,000 viewers,
    each join past 50 would otherwise send 1,000 polls round the gateway for nothing."""
    store, team, clock = env
    core = await new_session(store, team, clock, capacity=80)
    host = await core.join(identity="host", name="Host", role="moderator")
    viewers = [await core.join(identity=f"v{i}", name=f"V{i}", role="subscriber") for i in range(55)]
    me = viewers[0]
    seq = core.last_seq
    viewer_poll = asyncio.create_task(core.wait_events(me["id"], seq, 1.0, me["connection_id"]))
    host_poll = asyncio.create_task(core.wait_events(host["id"], seq, 1.0, host["connection_id"]))
    await asyncio.sleep(0.05)
    late = await core.join(identity="late", name="Late", role="subscriber")  # past 50: staff only
    got = await asyncio.wait_for(host_poll, 0.5)
    assert late["id"] in {e["participant_id"] for e in got["events"]}
    await asyncio.sleep(0.1)
    assert not viewer_poll.done()  # still asleep: nothing in it for a viewer
    await core.chat(host["id"], "welcome")  # something everyone sees wakes it
    got = await asyncio.wait_for(viewer_poll, 0.5)
    assert [e["type"] for e in got["events"]] == ["chat"]
    # Polling on from last_seq skips what it was not meant to see (no poll answers at once forever).
    await core.join(identity="later", name="Later", role="subscriber")
    quiet = await core.wait_events(me["id"], got["last_seq"], 0.05, me["connection_id"])
    assert quiet["events"] == [] and quiet["last_seq"] == core.last_seq > got["last_seq"]


async def test_an_auto_room_can_go_back_to_direct_when_two_remain(env):
    """With auto_back_to_direct (off by default): routed from the third, direct again at two."""
    store, team, clock = env
    core = await new_session(store, team, clock, media_mode="auto")
    core.auto_back_to_direct = True
    await core.join(identity="a", name="A", role="moderator")
    await core.join(identity="b", name="B", role="publisher")
    assert core.media_mode == "relayed"
    c = await core.join(identity="c", name="C", role="publisher")
    assert core.media_mode == "routed"
    await core.leave(c["id"])
    assert core.media_mode == "relayed"
    assert (await reloaded(core)).media_mode == "relayed"
    changes = [(e["data"]["mode"], e["data"]["reason"]) for e in await store.session_events(core.session_id)
               if e["type"] == "media_mode_changed"]
    assert changes == [("routed", "more_than_two"), ("relayed", "two_or_fewer")]
    # Off (the default): it stays routed.
    core2 = await new_session(store, team, clock, media_mode="auto")
    for i in range(3):
        await core2.join(identity=f"p{i}", name=f"P{i}", role="publisher")
    await core2.leave(next(iter(core2.participants)))
    assert core2.media_mode == "routed"
