"""A session host holding many sessions, without Ray: real SQLite store, a real media worker
in-process, a clock the test moves. Isolation (one session's failure stays its own), sleep
and waking (a session nobody is connected to keeps only its rows), timers of sleeping
sessions, a session nobody has joined yet, and a restarted host taking its sessions back."""

from __future__ import annotations

import asyncio
import json

import pytest

from mediaserver.control.batch import Batcher, run_batch, run_polls
from mediaserver.control.directory import DirectoryCore
from mediaserver.control.host import SessionHost, brand_new
from mediaserver.errors import MediaserverError
from mediaserver.media.service import WorkerService
from mediaserver.store import Store

GRACE = 10.0
ROOM = {
    "name": "r", "type": "adhoc", "media_mode": "routed", "archive_mode": "manual", "encryption": "server",
    "location_hint": None, "capacity": 50, "comment": None, "starts_at": None, "ends_at": None,
}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
async def env(tmp_path):
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await store.migrate()
    team = await store.ensure_team("t")
    worker = WorkerService(bind_host="127.0.0.1", port=0, advertised_host=None, allowed_networks=["127.0.0.0/8"])
    await worker.start()
    clock = Clock()
    cfg = {"grace_seconds": GRACE, "stale_seconds": 1e6, "tick_seconds": 3600, "default_max_live_sessions": 100,
           "quality_seconds": 3600}
    hosts = []

    class OnePlace:
        """One media worker, in-process, always there."""

        def worker(self, name):
            return worker

        async def usable(self, name):
            return name == "media:test:0"

        async def place(self, session_id, current, avoid, *, write=True):
            if not write:
                return "media:test:0"
            return (await store.move_media(session_id, to="media:test:0", only_if=current))["media_worker"]

        async def extra(self, session_id, using):
            raise AssertionError("one worker is enough here")

        def leg_keys(self, a, b):
            raise AssertionError("no legs with one worker")

    def new_host() -> SessionHost:
        h = SessionHost("host:test:0", store, cfg, OnePlace(), clock=clock)
        hosts.append(h)
        return h

    directory = DirectoryCore(store, default_max_live_sessions=100, hosts=lambda: ["host:test:0"], clock=clock)
    yield store, team, clock, new_host, directory
    for h in hosts:
        await h.stop()
    worker.worker.close()
    await store.close()


async def open_session(store: Store, team: dict, directory: DirectoryCore) -> str:
    room = await store.create_room(team["id"], dict(ROOM))
    return (await directory.open_session(room))["id"]


async def test_an_unwritten_session_is_written_by_its_first_join_or_gives_way(env, monkeypatch):
    """A gateway that read "no session" only places one (``DirectoryCore.plan``): the first
    join writes it on its host, reading nothing first. A second opener of the same room, and an
    opener past the team's limit, write nothing and leave no unit behind; the first learns that
    the room's session is elsewhere, so its gateway joins that one."""
    store, team, clock, new_host, directory = env
    host = new_host()
    await host.start()
    room = await store.create_room(team["id"], {**ROOM, "name": "first"})
    planned = await directory.plan(room)
    assert await store.get_session(planned["id"]) is None
    reads = []
    for name in ("get_session", "get_room", "slot_for_room", "unended_session"):
        real = getattr(store, name)

        async def counted(*args, real=real, name=name, **kwargs):
            reads.append(name)
            return await real(*args, **kwargs)

        monkeypatch.setattr(store, name, counted)
    joined = await host.call(planned["id"], "join", "mod", "Mod", "moderator", new=brand_new(planned, room, None, unwritten=True))
    assert reads == []
    monkeypatch.undo()
    row = await store.get_session(planned["id"])
    assert (row["status"], row["room_id"], row["host"], row["last_seq"]) == ("live", room["id"], "host:test:0", 1)
    assert [p["id"] for p in await store.list_participants(planned["id"])] == [joined["participant"]["id"]]
    assert not host.units[planned["id"]].core.unwritten

    # Another gateway planned the same room at the same moment: its join gives way.
    late = await directory.plan(room)
    with pytest.raises(MediaserverError) as e:
        await host.call(late["id"], "join", "sub", "Sub", "subscriber", new=brand_new(late, room, None, unwritten=True))
    assert e.value.code == "session_opened_elsewhere"
    assert late["id"] not in host.units and await store.get_session(late["id"]) is None
    assert (await store.unended_session(room["id"]))["id"] == planned["id"]
    assert len(await store.list_participants(planned["id"])) == 1

    # A team at its limit: refused, nothing written, no unit left.
    limited = await store.ensure_team("one only", max_live_sessions=1)
    rooms = [await store.create_room(limited["id"], {**ROOM, "name": f"l{i}"}) for i in range(2)]
    first = await directory.plan(rooms[0])
    await host.call(first["id"], "join", "a", "A", "moderator", new=brand_new(first, rooms[0], None, unwritten=True))
    over = await directory.plan(rooms[1])
    with pytest.raises(MediaserverError) as e:
        await host.call(over["id"], "join", "b", "B", "moderator", new=brand_new(over, rooms[1], None, unwritten=True))
    assert e.value.code == "session_limit_reached"
    assert over["id"] not in host.units and await store.unended_session(rooms[1]["id"]) is None


async def test_a_failure_in_one_session_leaves_its_neighbours_untouched(env):
    store, team, clock, new_host, directory = env
    host = new_host()
    await host.start()
    sids = [await open_session(store, team, directory) for _ in range(3)]
    people = {}
    for sid in sids:
        p = (await host.call(sid, "join", "mod", "Mod", "moderator"))["participant"]
        people[sid] = p["id"]
        await host.call(sid, "chat", p["id"], "before")
    broken, *others = sids
    neighbours = {sid: host.units[sid] for sid in others}

    async def fails(*_args, **_kw):
        raise RuntimeError("a bug in this session's handling")

    old = host.units[broken]
    old.core.chat = fails
    with pytest.raises(MediaserverError) as e:
        await host.call(broken, "chat", people[broken], "boom")
    assert e.value.code == "internal"
    assert broken not in host.units and host.faults == 1
    # A call still under way on the dropped unit writes nothing: only its successor does.
    with pytest.raises(MediaserverError) as e:
        await old.core.ask(people[broken], "from the old one?")
    assert e.value.code == "unavailable"
    for sid in others:  # the same units, never reloaded, still answering
        assert host.units[sid] is neighbours[sid]
        assert (await host.call(sid, "chat", people[sid], "after"))["text"] == "after"
    # The failed session is rebuilt from the store on its next call, with its history.
    said = await host.call(broken, "chat", people[broken], "again")
    assert said["text"] == "again"
    history = [m["text"] for m in await host.call(broken, "chat_history", people[broken])]
    assert history == ["before", "again"]
    # Its participant's media starts over (a new owner cannot know its peer connections).
    assert host.units[broken].media.outbox[people[broken]][0]["type"] == "media_reset"


async def test_calls_and_long_polls_batched_to_a_host_keep_to_their_own_sessions(env):
    """What a gateway sends a host a turn at a time: one session's failing call in a batch fails
    alone, and a batch of long polls over several sessions hands each participant its own
    events, none lost or given twice, the ones not answered sent again unnoticed."""
    store, team, clock, new_host, directory = env
    host = new_host()
    await host.start()

    async def run(sid, method, args, new=None):
        return await host.call(sid, method, *args, new=new)

    calls = Batcher(lambda batch: run_batch(run, batch))
    polls = Batcher(lambda batch: run_polls(run, batch))
    sids = [await open_session(store, team, directory) for _ in range(3)]
    joined = await asyncio.gather(*(calls.call(sid, "join", ("mod", "Mod", "moderator")) for sid in sids))
    assert calls.batches == 1 and calls.calls == 3
    people = {sid: j["participant"]["id"] for sid, j in zip(sids, joined)}
    seq = {sid: j["last_seq"] for sid, j in zip(sids, joined)}
    broken = sids[0]

    async def fails(*_args, **_kw):
        raise RuntimeError("a bug in this session's handling")

    host.units[broken].core.chat = fails
    said = await asyncio.gather(*(calls.call(sid, "chat", (people[sid], f"hi {i}")) for i, sid in enumerate(sids)), return_exceptions=True)
    assert calls.batches == 2
    assert isinstance(said[0], MediaserverError) and said[0].code == "internal"
    assert [s["text"] for s in said[1:]] == ["hi 1", "hi 2"]

    got: dict[str, list[str]] = {sid: [] for sid in sids}

    async def listen(sid: str, until: str) -> None:
        while True:
            res = await polls.call(sid, "wait_events", (people[sid], seq[sid], 30.0, None))
            for ev in res["events"]:
                if ev["type"] == "chat":
                    got[sid].append(ev["data"]["message"]["text"])
            seq[sid] = max(seq[sid], res["last_seq"])
            if until in got[sid]:
                return

    listeners = [asyncio.ensure_future(listen(sid, "last")) for sid in sids]
    await asyncio.sleep(0.05)
    for i, sid in enumerate(sids):
        await calls.call(sid, "chat", (people[sid], "last"))
        await asyncio.sleep(0.05)
        if i < 2:  # the later sessions' polls are still waiting, sent again
            assert not listeners[2].done()
    await asyncio.wait_for(asyncio.gather(*listeners), 5)
    assert got[sids[1]] == ["hi 1", "last"] and got[sids[2]] == ["hi 2", "last"]
    assert got[broken] == ["last"]  # rebuilt from the store, it answered the call after the failure
    assert polls.batches >= 3 and polls.calls > len(sids)  # (a poll sent again counts again)


async def test_a_brand_new_session_starts_from_what_its_creator_read_and_matches_the_store(env, monkeypatch):
    """The gateway that creates a session hands its host the row, room and slot it has just
    read (``brand_new``): the host reads none of them again, and ends up where a host loading
    the session from the store does. Once loaded, what a later caller hands it is ignored."""
    store, team, clock, new_host, directory = env
    room = await store.create_room(team["id"], {**ROOM, "name": "fresh"})
    session, created = await directory.open(room, existing=None)
    assert created
    reads = []
    for name in ("get_session", "get_room", "slot_for_room"):
        real = getattr(store, name)

        async def counted(*args, real=real, name=name, **kwargs):
            reads.append(name)
            return await real(*args, **kwargs)

        monkeypatch.setattr(store, name, counted)
    host = new_host()
    await host.start()
    reads.clear()  # (starting reads what the host owns: not this session)
    joined = await host.call(session["id"], "join", "mod", "Mod", "moderator", new=brand_new(session, room, None))
    assert reads == []
    monkeypatch.undo()
    unit = host.units[session["id"]]
    other = new_host()  # a second host, as after a restart: everything from the store
    from_store = await other._unit(session["id"])
    assert unit.core.room == from_store.core.room and unit.core.event == from_store.core.event is None
    assert {k: v for k, v in unit.core.session.items() if k != "last_seq"} == {
        k: v for k, v in from_store.core.session.items() if k != "last_seq"
    }
    assert list(from_store.core.participants) == [joined["participant"]["id"]]
    # Handed again to a unit already loaded (a stale view): ignored.
    stale = brand_new({**session, "status": "ended"}, {**room, "name": "stale"}, None)
    again = await host.call(session["id"], "join", "sub", "Sub", "subscriber", new=stale)
    assert again["session"]["status"] == "live" and host.units[session["id"]].core.room["name"] == "fresh"


async def test_a_session_nobody_is_connected_to_sleeps_and_wakes_with_its_state(env):
    store, team, clock, new_host, directory = env
    host = new_host()
    await host.start()
    sid = await open_session(store, team, directory)
    mod = (await host.call(sid, "join", "mod", "Mod", "moderator"))["participant"]
    sub = (await host.call(sid, "join", "sub", "Sub", "subscriber"))["participant"]
    await host.call(sid, "set_role", mod["id"], sub["id"], "publisher")
    await host.call(sid, "chat", mod["id"], "hello")
    await host.call(sid, "breakouts", "create_breakouts", mod["id"], ["Blue"])
    await host.call(sid, "disconnect", mod["id"], mod["connection_id"])
    await host.tick()
    assert sid in host.units  # someone is still connected
    clock.t += 2
    await host.call(sid, "disconnect", sub["id"], sub["connection_id"])
    await host.tick()
    assert sid not in host.units and host.asleep[sid] == mod["joined_at"] + GRACE  # mod dropped first
    # Someone comes back: the session wakes with everything it had. Its media was closed when it
    # went to sleep, so the worker is not asked to close it again.
    worker = host.places.worker("media:test:0")
    closed = []
    real_close = worker.close_participants

    async def close_participants(pids):
        closed.append(list(pids))
        return await real_close(pids)

    worker.close_participants = close_participants
    back = await host.call(sid, "resume", sub["id"])
    assert back["participant"]["role"] == "publisher" and back["participant"]["state"] == "connected"
    assert [m["text"] for m in back["chat"]] == ["hello"]
    assert [r["name"] for r in back["breakouts"]["rooms"]] == ["Blue"]
    assert sid in host.units and sid not in host.asleep
    assert closed == []
    # A new host (after a restart) cannot know that: it closes what the worker may still hold.
    other = new_host()
    await other._unit(sid)
    assert len(closed) == 1 and sorted(closed[0]) == sorted([mod["id"], sub["id"]])


async def test_a_sleeping_session_wakes_for_its_timers(env):
    store, team, clock, new_host, directory = env
    host = new_host()
    await host.start()
    sid = await open_session(store, team, directory)
    a = (await host.call(sid, "join", "a", "A", "publisher"))["participant"]
    await host.call(sid, "disconnect", a["id"], a["connection_id"])
    await host.tick()
    assert sid in host.asleep
    clock.t += GRACE - 1
    await host.tick()
    assert sid in host.asleep  # not due yet
    clock.t += 1
    await host.tick()  # due: woken, its timers applied
    await host.tick()
    session = await store.get_session(sid)
    assert session["status"] == "ended" and session["end_reason"] == "grace_timeout"
    assert (await store.get_participant(a["id"]))["left_reason"] in ("grace_timeout", "session_ended")


async def test_a_new_session_is_not_ended_before_its_first_join(env):
    """However short the grace period and however slow the first join: the grace clock starts
    when the last participant leaves, never before the first one is in."""
    store, team, clock, new_host, directory = env
    host = new_host()
    host.cfg = {**host.cfg, "grace_seconds": 0.001}
    await host.start()
    sid = await open_session(store, team, directory)
    clock.t += 5  # the session row is old by now: its first join was slow to arrive
    gate = asyncio.Event()
    unit = await host._unit(sid)
    original = unit.core._admit_to_event

    async def slow_admission(*args):
        await gate.wait()
        return await original(*args)

    unit.core._admit_to_event = slow_admission
    join = asyncio.ensure_future(host.call(sid, "join", "a", "A", "publisher"))
    await asyncio.sleep(0.05)
    clock.t += 5
    ticking = asyncio.ensure_future(host.tick())  # waits on the session's lock behind the join
    await asyncio.sleep(0.05)
    gate.set()
    joined = await join
    await ticking
    assert joined["session"]["status"] == "live"
    assert (await store.get_session(sid))["status"] == "live"


async def test_a_session_whose_first_join_never_came_ends(env):
    store, team, clock, new_host, directory = env
    host = new_host()
    await host.start()
    sid = await open_session(store, team, directory)
    await host._reconcile()  # finds it in the store, placed here
    await asyncio.sleep(0.05)
    assert sid in host.units
    clock.t += GRACE
    await host.tick()
    session = await store.get_session(sid)
    assert session["status"] == "ended" and session["end_reason"] == "grace_timeout"


async def test_a_restarted_host_takes_its_sessions_back(env):
    store, team, clock, new_host, directory = env
    first = new_host()
    await first.start()
    live = await open_session(store, team, directory)
    idle = await open_session(store, team, directory)
    a = (await first.call(live, "join", "a", "A", "moderator"))["participant"]
    await first.call(live, "chat", a["id"], "kept")
    b = (await first.call(idle, "join", "b", "B", "publisher"))["participant"]
    await first.call(idle, "disconnect", b["id"], b["connection_id"])
    await first.stop()  # as if its process died: nothing in memory survives
    second = new_host()
    await second.start()
    await asyncio.sleep(0.1)
    assert live in second.units and idle in second.asleep
    unit = second.units[live]
    assert unit.media.outbox[a["id"]] == [{"type": "media_reset", "reason": "the session was restored after a fault"}]
    assert [m["text"] for m in await second.call(live, "chat_history", a["id"])] == ["kept"]
    assert (await second.call(live, "chat", a["id"], "more"))["text"] == "more"


async def test_an_auto_room_is_direct_for_two_and_routed_from_the_third(env):
    """Auto rooms: peer to peer while two are in, through the server once a third joins (every
    participant told, their direct tracks gone, the server's tracks from then on); the choice
    survives a host that died, and stays when people leave (no flapping)."""
    store, team, clock, new_host, directory = env
    room = await store.create_room(team["id"], {**ROOM, "media_mode": "auto"})
    sid = (await directory.open_session(room))["id"]
    host = new_host()
    a = await host.call(sid, "join", "a", "A", "moderator")
    b = await host.call(sid, "join", "b", "B", "publisher")
    assert a["media_mode"] == b["media_mode"] == "relayed"
    pa = a["participant"]
    await host.call(sid, "peer_publish", pa["id"], [{"name": "video0", "kind": "video"}])
    with pytest.raises(MediaserverError) as e:
        await host.call(sid, "publish", pa["id"], "v=0")
    assert e.value.code == "relayed_media"

    c = await host.call(sid, "join", "c", "C", "publisher")
    assert c["media_mode"] == "routed" and c["tracks"] == []
    seen = await host.call(sid, "wait_events", pa["id"], a["last_seq"], 0.05, pa["connection_id"])
    changes = [e["data"] for e in seen["events"] if e["type"] == "media_mode_changed"]
    assert changes == [{"mode": "routed", "reason": "more_than_two"}]
    assert any(e["type"] == "track_unpublished" and e["data"]["reason"] == "media_mode_changed" for e in seen["events"])
    with pytest.raises(MediaserverError) as e:
        await host.call(sid, "peer_publish", pa["id"], [])
    assert e.value.code == "routed_media"

    # Its host dies: the session comes back routed; two leave, it stays routed.
    await host.stop()
    second = new_host()
    await second.call(sid, "leave", c["participant"]["id"])
    again = await second.call(sid, "resume", pa["id"])
    assert again["media_mode"] == "routed"
    with pytest.raises(MediaserverError) as e:
        await second.call(sid, "signal", pa["id"], b["participant"]["id"], pa["id"], {"kind": "candidate", "candidate": ""})
    assert e.value.code == "routed_media"


async def test_an_auto_room_whose_peers_cannot_connect_goes_routed(env):
    store, team, clock, new_host, directory = env
    room = await store.create_room(team["id"], {**ROOM, "media_mode": "auto"})
    sid = (await directory.open_session(room))["id"]
    host = new_host()
    a = (await host.call(sid, "join", "a", "A", "moderator"))["participant"]
    await host.call(sid, "join", "b", "B", "publisher")
    await host.call(sid, "direct_failed", a["id"])
    assert (await host.call(sid, "join", "b", "B", "publisher"))["media_mode"] == "routed"  # (b again: replaced)
    events = await store.session_events(sid)
    assert [e["data"]["reason"] for e in events if e["type"] == "media_mode_changed"] == ["direct_connection_failed"]
    # A routed or relayed room does not change its mode.
    routed = (await directory.open_session(await store.create_room(team["id"], dict(ROOM))))["id"]
    r = (await host.call(routed, "join", "a", "A", "moderator"))["participant"]
    with pytest.raises(MediaserverError) as e:
        await host.call(routed, "direct_failed", r["id"])
    assert e.value.code == "invalid_request"


async def test_archive_timers_always_mode_sleep_and_a_new_host(env, tmp_path):
    """Always mode: recording from the first join; at the time limit one archive stops and the
    next begins; it goes on while the session sleeps, and a new host takes it up; the session's
    end stops it."""
    from mediaserver.media.recorder import RecorderService

    store, team, clock, new_host, directory = env
    recorder = RecorderService(host="127.0.0.1", archive_dir=str(tmp_path / "archives"))

    def host_with_recorder() -> SessionHost:
        h = new_host()
        h.places.recorder = lambda worker: recorder
        h.places.leg_keys = lambda a, b: ("11" * 28, "22" * 28)
        h.cfg["archive_max_seconds"] = 60.0
        return h

    host = host_with_recorder()
    await host.start()
    room = await store.create_room(team["id"], {**ROOM, "archive_mode": "always"})
    sid = (await directory.open_session(room))["id"]
    mod = (await host.call(sid, "join", "mod", "Mod", "moderator"))["participant"]
    first = await store.recording_archive(sid)
    assert first is not None and first["output"] == "both" and first["started_by"] is None
    assert list(recorder.recorders) == [first["id"]]
    clock.t += 61
    await host.tick()
    second = await store.recording_archive(sid)
    assert second is not None and second["id"] != first["id"]
    await host.units[sid].archives.wait_finished()
    done = await store.get_archive(first["id"])
    assert done["status"] == "ready" and done["stop_reason"] == "max_duration", done
    assert {f["name"] for f in done["files"]} == {"manifest.json", "composed.mp4"}

    # Nobody connected: the session sleeps, its archive records on (nothing to record).
    await host.call(sid, "disconnect", mod["id"], mod["connection_id"])
    await host.tick()
    assert sid not in host.units and (await store.recording_archive(sid))["id"] == second["id"]
    # A new host (the old one died) wakes it when someone comes back: the same archive goes on.
    await host.stop()
    host = host_with_recorder()
    await host.start()
    back = await host.call(sid, "resume", mod["id"])
    assert back["archive"]["id"] == second["id"]
    assert host.units[sid].media.recording.archive_id == second["id"]
    # Its end stops it.
    await host.call(sid, "end", "api")
    await host.units[sid].archives.wait_finished()
    done = await store.get_archive(second["id"])
    assert done["status"] == "ready" and done["stop_reason"] == "session_ended"
    assert await store.recording_archive(sid) is None and recorder.recorders == {}


async def test_an_archive_without_ffmpeg_keeps_its_track_files(env, tmp_path, monkeypatch):
    """``both`` without a composed file is still ready, saying why; ``composed`` alone fails."""
    from mediaserver.media import compose
    from mediaserver.media.recorder import RecorderService

    def missing() -> str:
        raise RuntimeError("ffmpeg is not installed on this node")

    monkeypatch.setattr(compose, "ffmpeg_path", missing)
    store, team, clock, new_host, directory = env
    recorder = RecorderService(host="127.0.0.1", archive_dir=str(tmp_path / "archives"))
    host = new_host()
    host.places.recorder = lambda worker: recorder
    host.places.leg_keys = lambda a, b: ("11" * 28, "22" * 28)
    await host.start()
    sid = await open_session(store, team, directory)
    mod = (await host.call(sid, "join", "mod", "Mod", "moderator"))["participant"]
    for output, status in (("both", "ready"), ("composed", "failed")):
        started = await host.call(sid, "start_archive", mod["id"], None, output)
        await host.call(sid, "stop_archive", mod["id"], started["id"])
        await host.units[sid].archives.wait_finished()
        done = await store.get_archive(started["id"])
        assert done["status"] == status and "ffmpeg is not installed" in done["error"], done
        if status == "ready":
            assert [f["name"] for f in done["files"]] == ["manifest.json"]


async def test_an_archive_whose_finishing_host_died_is_finished_by_the_next(env, tmp_path):
    """The host finishing a stopped archive (manifest, composition) dies before it is done: the
    archive does not stay ``processing``. The host that takes the session on finishes it, from
    what the recorder wrote, even though the session has ended and nobody will load it again."""
    from mediaserver.control import archive
    from mediaserver.media.recorder import RecorderService

    store, team, clock, new_host, directory = env
    recorder = RecorderService(host="127.0.0.1", archive_dir=str(tmp_path / "archives"))
    stuck = asyncio.Event()
    composing = recorder.compose

    async def compose_never_ends(archive_id):
        stuck.set()
        await asyncio.Event().wait()

    def host_with_recorder() -> SessionHost:
        h = new_host()
        h.places.recorder = lambda worker: recorder
        h.places.leg_keys = lambda a, b: ("11" * 28, "22" * 28)
        return h

    host = host_with_recorder()
    await host.start()
    sid = await open_session(store, team, directory)
    mod = (await host.call(sid, "join", "mod", "Mod", "moderator"))["participant"]
    started = await host.call(sid, "start_archive", mod["id"], "the talk", "both")
    recorder.compose = compose_never_ends
    await host.call(sid, "end", "api")  # (the session's end stops the archive)
    await asyncio.wait_for(stuck.wait(), 5)
    assert (await store.get_archive(started["id"]))["status"] == "processing"
    # The host dies: its tasks go with it, and so does what its process knew it was finishing.
    for task in list(host.units[sid].archives._finishing):
        task.cancel()
    await host.stop()
    assert started["id"] not in archive.FINISHING
    recorder.compose = composing

    host = host_with_recorder()
    await host.start()

    async def finished():
        row = await store.get_archive(started["id"])
        return row if row["status"] != "processing" else None

    for _ in range(100):
        if done := await finished():
            break
        await asyncio.sleep(0.05)
    assert done and done["status"] == "ready", done
    assert {f["name"] for f in done["files"]} == {"manifest.json", "composed.mp4"}
    manifest = json.loads((tmp_path / "archives" / started["id"] / "manifest.json").read_text())
    assert manifest["archive_id"] == started["id"] and manifest["stopped_at"] == done["stopped_at"]
    assert sid not in host.units and started["id"] not in archive.FINISHING


async def test_polls_stopped_as_their_time_runs_out_leave_the_session_whole(env):
    """A batch of long polls is answered once one is, and the rest are stopped on the host: a
    poll stopped just as its own time runs out must not break its session (with ``wait_for``
    around the condition's wait, the lock was left released and the unit was dropped as faulty)."""
    store, team, clock, new_host, directory = env
    host = new_host()
    await host.start()
    sids = [await open_session(store, team, directory) for _ in range(4)]
    people = {sid: (await host.call(sid, "join", "mod", "Mod", "moderator"))["participant"] for sid in sids}
    units = dict(host.units)

    async def run(sid, method, args, new=None):
        return await host.call(sid, method, *args, new=new)

    async def rounds() -> None:
        for round_ in range(60):
            polls = [(sid, "wait_events", (people[sid]["id"], 10**9, 0.002 + 0.0005 * (i % 5), people[sid]["connection_id"]), None)
                     for i, sid in enumerate(sids * 10)]
            outcomes = await run_polls(run, polls, linger=0.0005 * (round_ % 4))
            assert all(o[0] in ("ok", "again") for o in outcomes), outcomes

    await asyncio.wait_for(rounds(), 30)  # (with the lock left released, a poll could wait for ever)
    assert host.faults == 0 and host.units == units
