"""The store on SQLite always, and on PostgreSQL when one can be started."""

from __future__ import annotations

import asyncio
import json

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from mediaserver.config import Settings
from mediaserver.store import SessionChange, Store, new_session_row
from mediaserver.store.schema import participants

ROOM = {
    "name": "Weekly sync",
    "type": "group",
    "media_mode": "routed",
    "archive_mode": "manual",
    "encryption": "server",
    "location_hint": None,
    "capacity": 10,
    "comment": "Agenda: 100% about_us",
    "starts_at": None,
    "ends_at": None,
}


async def test_migrate_is_repeatable(store: Store):
    await store.migrate()  # already at head: nothing to do, no error
    async with store.engine.connect() as conn:
        version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).scalar_one()
    assert version == "0008"


async def test_migrations_build_exactly_the_schema_module(store: Store):
    """The tables the migrations make are the ones schema.py describes (nothing forgotten in a revision)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from mediaserver.store.schema import metadata

    def diff(conn):
        return compare_metadata(MigrationContext.configure(conn), metadata)

    async with store.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    # Types that SQLite reflects loosely (JSON, Boolean) are not compared by default; anything else shows up.
    assert changes == [], changes


async def test_server_values_are_made_once(store: Store):
    made = []

    def make() -> str:
        made.append(1)
        return f"secret-{len(made)}"

    first, second = await store.server_value("k", make), await store.server_value("k", make)
    assert first == second == "secret-1" and len(made) == 1


async def test_teams_and_keys(store: Store):
    team = await store.ensure_team("acme", max_live_sessions=3)
    again = await store.ensure_team("acme")
    assert again["id"] == team["id"] and again["max_live_sessions"] == 3
    key = await store.create_api_key(team["id"], "ci")
    assert (await store.get_api_key(key["id"]))["secret"] == key["secret"]
    assert await store.revoke_api_key(key["id"])
    assert await store.get_api_key(key["id"]) is None
    assert not await store.revoke_api_key(key["id"])  # already revoked


async def test_rooms_crud_and_search(store: Store):
    team = await store.ensure_team("acme")
    other = await store.ensure_team("other")
    room = await store.create_room(team["id"], ROOM)
    await store.create_room(team["id"], {**ROOM, "name": "Standup", "comment": None})
    await store.create_room(other["id"], {**ROOM, "name": "Weekly sync of other"})
    assert (await store.get_room(room["id"], team["id"]))["name"] == "Weekly sync"
    assert await store.get_room(room["id"], other["id"]) is None  # teams do not see each other's rooms
    assert [r["name"] for r in await store.list_rooms(team["id"], q="weekly")] == ["Weekly sync"]
    # LIKE wildcards in the query are literal text
    assert [r["name"] for r in await store.list_rooms(team["id"], q="100%")] == ["Weekly sync"]
    assert [r["name"] for r in await store.list_rooms(team["id"], q="y_s")] == []  # "_" would match the space in "Weekly sync"
    assert [r["name"] for r in await store.list_rooms(team["id"], q="about_us")] == ["Weekly sync"]
    updated = await store.update_room(room["id"], team["id"], {"name": "Renamed", "capacity": 5})
    assert updated["name"] == "Renamed" and updated["capacity"] == 5 and updated["updated_at"] >= room["updated_at"]
    assert await store.update_room(room["id"], other["id"], {"name": "x"}) is None


async def test_one_unended_session_per_room(store: Store):
    team = await store.ensure_team("acme")
    room = await store.create_room(team["id"], ROOM)
    first, created = await store.open_session(room, 100.0)
    second, created_again = await store.open_session(room, 101.0)
    assert created and not created_again and second["id"] == first["id"]
    await store.apply(SessionChange(first["id"], session={"status": "ended", "ended_at": 102.0}))
    third, created = await store.open_session(room, 103.0)
    assert created and third["id"] != first["id"]


async def test_apply_is_all_or_nothing(store: Store):
    team = await store.ensure_team("acme")
    room = await store.create_room(team["id"], ROOM)
    session, _ = await store.open_session(room, 100.0)
    part = {
        "id": "part_1", "session_id": session["id"], "identity": "a", "name": "A", "role": "publisher",
        "state": "connected", "joined_at": 100.0, "disconnected_at": None, "left_at": None, "left_reason": None,
    }
    ev = {"session_id": session["id"], "seq": 1, "participant_id": "part_1", "type": "joined",
          "visibility": "broadcast", "data": {}, "at": 100.0}
    await store.apply(SessionChange(session["id"], session={"last_seq": 1}, new_participants=[part], events=[ev]))
    # A second change reusing seq 1 violates the unique (session, seq): none of it may land.
    bad = SessionChange(
        session["id"],
        session={"last_seq": 2},
        new_participants=[{**part, "id": "part_2", "identity": "b"}],
        events=[{**ev, "participant_id": "part_2"}],
    )
    with pytest.raises(IntegrityError):
        await store.apply(bad)
    assert [p["id"] for p in await store.list_participants(session["id"])] == ["part_1"]
    assert (await store.get_session(session["id"]))["last_seq"] == 1
    assert len(await store.session_events(session["id"])) == 1


async def test_changes_applied_together_each_get_their_own_outcome(store: Store):
    """Changes applied in the same turn of the event loop (on SQLite, one transaction) land or
    fail each on its own: one refused does not take the others with it, and one whose caller
    was cancelled before it was written is not written."""
    team = await store.ensure_team("acme")
    rooms = [await store.create_room(team["id"], {**ROOM, "name": f"r{i}"}) for i in range(4)]
    a, _ = await store.open_session(rooms[0], 100.0)
    b, _ = await store.open_session(rooms[1], 100.0)

    def joined(session_id: str, seq: int, pid: str) -> SessionChange:
        part = {
            "id": pid, "session_id": session_id, "identity": pid, "name": pid, "role": "publisher",
            "state": "connected", "joined_at": 100.0, "disconnected_at": None, "left_at": None, "left_reason": None,
        }
        ev = {"session_id": session_id, "seq": seq, "participant_id": pid, "type": "joined",
              "visibility": "broadcast", "data": {}, "at": 100.0}
        return SessionChange(session_id, session={"last_seq": seq}, new_participants=[part], events=[ev])

    await store.apply(joined(b["id"], 1, "b1"))
    c = new_session_row(rooms[2], 100.0)
    opens_c = joined(c["id"], 1, "c1")
    opens_c.opens = c
    outcomes = await asyncio.gather(
        store.apply(joined(a["id"], 1, "a1")), store.apply(joined(b["id"], 1, "b2")), store.apply(opens_c),
        return_exceptions=True,
    )
    assert outcomes[0] is None and isinstance(outcomes[1], IntegrityError) and outcomes[2] is None
    assert [p["id"] for p in await store.list_participants(a["id"])] == ["a1"]
    assert [p["id"] for p in await store.list_participants(b["id"])] == ["b1"]
    assert (await store.unended_session(rooms[2]["id"]))["id"] == c["id"]

    kept = asyncio.ensure_future(store.apply(joined(a["id"], 2, "a2")))
    dropped = asyncio.ensure_future(store.apply(joined(b["id"], 2, "b3")))
    await asyncio.sleep(0)  # (both are waiting for this turn's write)
    dropped.cancel()
    await kept
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert [p["id"] for p in await store.list_participants(a["id"])] == ["a1", "a2"]
    assert [p["id"] for p in await store.list_participants(b["id"])] == ["b1"]
    assert (await store.get_session(b["id"]))["last_seq"] == 1

    # One that fails unexpectedly (a value the database cannot take) fails alone too.
    broken = joined(a["id"], 3, "a-broken")
    broken.events[0]["data"] = object()
    outcomes = await asyncio.gather(store.apply(broken), store.apply(joined(b["id"], 2, "b5")), return_exceptions=True)
    assert isinstance(outcomes[0], Exception) and outcomes[1] is None
    assert [p["id"] for p in await store.list_participants(b["id"])] == ["b1", "b5"]
    assert [p["id"] for p in await store.list_participants(a["id"])] == ["a1", "a2"]

    # Two that both land: one transaction on SQLite.
    writes = []
    real = store.write

    def counted():
        writes.append(1)
        return real()

    store.write = counted
    await asyncio.gather(store.apply(joined(a["id"], 3, "a3")), store.apply(joined(b["id"], 3, "b4")))
    assert len(writes) == (1 if store.is_sqlite else 2)
    assert (await store.get_session(a["id"]))["last_seq"] == 3 and (await store.get_session(b["id"]))["last_seq"] == 3


async def test_list_sessions_filters_and_search(store: Store):
    team = await store.ensure_team("acme")
    a = await store.create_room(team["id"], {**ROOM, "name": "Design review"})
    b = await store.create_room(team["id"], {**ROOM, "name": "Standup", "comment": "daily"})
    sa_, _ = await store.open_session(a, 100.0)
    await store.apply(SessionChange(sa_["id"], session={"status": "ended", "ended_at": 150.0}))
    sb, _ = await store.open_session(b, 200.0)
    await store.apply(
        SessionChange(sb["id"], new_participants=[{
            "id": "part_x", "session_id": sb["id"], "identity": "x", "name": "X", "role": "moderator",
            "state": "connected", "joined_at": 200.0, "disconnected_at": None, "left_at": None, "left_reason": None,
        }])
    )
    live = await store.list_sessions(team["id"], status=["live"])
    assert [s["id"] for s in live] == [sb["id"]] and live[0]["participant_count"] == 1
    assert [s["id"] for s in await store.list_sessions(team["id"], status=["ended"])] == [sa_["id"]]
    assert [s["id"] for s in await store.list_sessions(team["id"], q="design")] == [sa_["id"]]
    assert [s["id"] for s in await store.list_sessions(team["id"], q=sb["id"][-6:].upper())] == [sb["id"]]
    assert [s["id"] for s in await store.list_sessions(team["id"], q="DAILY")] == [sb["id"]]
    assert [s["id"] for s in await store.list_sessions(team["id"], room_id=a["id"])] == [sa_["id"]]
    assert await store.count_live_sessions(team["id"]) == 1
    assert await store.count_live_sessions(team["id"], exclude_session_id=sb["id"]) == 0


async def test_events_order_and_participant_log(store: Store):
    team = await store.ensure_team("acme")
    room = await store.create_room(team["id"], ROOM)
    s, _ = await store.open_session(room, 1.0)
    rows = [
        {"session_id": s["id"], "seq": i, "participant_id": pid, "type": t, "visibility": vis, "data": {"i": i}, "at": float(i)}
        for i, (pid, t, vis) in enumerate(
            [("p1", "joined", "broadcast"), ("p2", "joined", "broadcast"), ("p1", "session_ended", "log"), (None, "session_ended", "broadcast")],
            start=1,
        )
    ]
    await store.apply(SessionChange(s["id"], events=rows))
    assert [e["seq"] for e in await store.session_events(s["id"], after_seq=1, broadcast_only=True)] == [2, 4]
    log = await store.participant_events("p1")
    assert [(e["type"], e["data"]) for e in log] == [("joined", {"i": 1}), ("session_ended", {"i": 3})]
    async with store.engine.connect() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(participants))).scalar_one() == 0


async def test_a_write_waiting_for_another_processes_lock_does_not_stop_the_event_loop(tmp_path):
    """SQLite has one write lock, which another process (a session host, another gateway) may
    hold: a write transaction waits for it on the event loop, not inside SQLite, so the
    process's other work goes on meanwhile; and it goes through once the lock is free."""
    import asyncio
    import sqlite3

    path = tmp_path / "shared.db"
    store = Store(f"sqlite:///{path}")
    await store.migrate()
    other = sqlite3.connect(path, isolation_level=None)  # (another process's connection)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    writer = asyncio.create_task(store.ensure_team("waiting"))
    await asyncio.sleep(0.3)
    assert not writer.done() and ticks >= 20, ticks  # the write waits; the loop does not
    other.execute("ROLLBACK")
    team = await asyncio.wait_for(writer, 5)
    assert team["name"] == "waiting" and (await store.ensure_team("waiting"))["id"] == team["id"]
    ticker.cancel()
    other.close()
    await store.close()


async def test_a_joins_lookup_reads_what_sqlalchemy_reads(store: Store):
    """On SQLite the join's lookup runs on SQLite's cursor (``InLoopEngine.rows``): the same
    rows, values and types as the statement run through SQLAlchemy, in every case a join meets."""
    import time

    from mediaserver.store.store import _join_lookup

    team = await store.ensure_team("acme")
    key = await store.create_api_key(team["id"], "k")
    plain = await store.create_room(team["id"], {**ROOM, "name": "plain"})
    live = await store.create_room(team["id"], {**ROOM, "name": "live"})
    session, _ = await store.open_session(live, 100.0)
    await store.apply(SessionChange(session["id"], session={"meeting": {"started": True, "plan": {"p": "b"}}}))
    now = time.time()
    event = await store.create_event(team["id"], "Fair", now, now + 7200, [{
        "identity": "acme", "name": "ACME", "max_sessions": 2, "spots": 3, "duration": 1800.0, "timeframes": [[now, now + 7200]],
    }])
    slot = await store.add_slot(event, event["hosts"][0], now + 600, {**ROOM, "name": "slot", "type": "adhoc"})
    for key_id, room_id in [
        (key["id"], plain["id"]), (key["id"], live["id"]), (key["id"], slot["room_id"]), (key["id"], "room_none"),
        ("AK_none", plain["id"]),
    ]:
        async with store.engine.connect() as conn:
            row = (await conn.execute(_join_lookup(), {"key_id": key_id, "room_id": room_id})).mappings().first()
        looked = await store.join_lookup(key_id, room_id)
        if row is None:
            assert looked == (None, None, None, None)
            continue
        k, room, sess, sl = looked
        assert k == {c: row[f"k_{c}"] for c in k}
        assert (room is None) == (room_id == "room_none") and (room is None or room == {c: row[c] for c in room})
        if room_id == live["id"]:
            assert sess["meeting"] == {"started": True, "plan": {"p": "b"}} and sess["id"] == session["id"]
            assert sess == {c: row[f"s_{c}"] for c in sess}
        else:
            assert sess is None
        assert (sl is not None) == (room_id == slot["room_id"])
        if sl is not None:
            assert sl == {c: row[f"e_{c}"] for c in sl} and sl["spots"] == 3 and isinstance(sl["starts_at"], float)
        for d in (k, room, sess, sl):
            assert d is None or all(type(c) is str for c in d)  # (plain names: cheap to send to a host)


async def test_a_hosts_loading_reads_what_sqlalchemy_reads(store: Store):
    """The reads a host loads (or wakes) a session with (``_reads``, ``_chat_history``) run on
    SQLite's cursor: the same rows, in the same order, with the same values and types as
    through SQLAlchemy; and the store's methods built on them answer as they should."""
    import time

    from mediaserver.store.archive_store import _recording
    from mediaserver.store.event_store import _registered, _slot
    from mediaserver.store.store import _chat_history, _reads

    team = await store.ensure_team("acme")
    room = await store.create_room(team["id"], ROOM)
    session, _ = await store.open_session(room, 100.0)
    parts = [{
        "id": f"part_{i}", "session_id": session["id"], "identity": f"p{i}", "name": f"P {i}", "role": "publisher",
        "state": "connected", "joined_at": 100.0 + i, "disconnected_at": None, "left_at": None, "left_reason": None,
        "on_stage": i == 1,
    } for i in range(3)]
    evs = [{"session_id": session["id"], "seq": i + 1, "participant_id": f"part_{i % 3}", "type": "joined",
            "visibility": ("broadcast", "private", "staff", "room")[i % 4], "data": {"n": i, "nested": [i, {"x": None}]},
            "at": 100.0 + i} for i in range(7)]
    qs = [{"id": f"q{i}", "session_id": session["id"], "participant_id": "part_0", "name": "P 0", "text": f"why {i}?",
           "status": "open", "answer": None, "votes": 1, "asked_at": 110.0 + i, "updated_at": 110.0 + i} for i in range(2)]
    # Chat in the main room (None), in two breakout rooms, and to every room ("*").
    chat = [{"id": f"m{i}", "session_id": session["id"], "participant_id": "part_0", "name": "P 0",
             "breakout_id": (None, "b1", "b2", "*")[i % 4], "text": f"line {i}", "at": 120.0 + i, "seq": 8 + i}
            for i in range(9)]
    await store.apply(SessionChange(
        session["id"], session={"last_seq": 16, "meeting": {"started": True}}, new_participants=parts, events=evs,
        new_questions=qs, votes=[{"question_id": "q1", "participant_id": "part_2", "at": 115.0}], chat=chat,
    ))
    now = time.time()
    event = await store.create_event(team["id"], "Fair", now, now + 7200, [{
        "identity": "acme", "name": "ACME", "max_sessions": 2, "spots": 3, "duration": 1800.0, "timeframes": [[now, now + 7200]],
    }])
    slot = await store.add_slot(event, event["hosts"][0], now + 600, {**ROOM, "name": "slot", "type": "adhoc"})
    for who in ("ann", "bob"):
        await store.register(slot["id"], who, who.title())
    archive = await store.create_archive(session, "rec", "composed", None, now=130.0)
    cases = [
        ("room", {"id": room["id"]}), ("room", {"id": "room_none"}), ("session", {"id": session["id"]}),
        ("participants", {"session_id": session["id"]}), ("events", {"session_id": session["id"], "after_seq": 2, "limit": 3}),
        ("broadcast_events", {"session_id": session["id"], "after_seq": 0, "limit": 100}),
        ("questions", {"session_id": session["id"]}), ("votes", {"session_id": session["id"]}),
        ("slot", {"room_id": slot["room_id"]}), ("slot", {"room_id": room["id"]}), ("registered", {"slot_id": slot["id"]}),
        ("recording", {"session_id": session["id"]}), ("recording", {"session_id": "sess_none"}),
    ]
    statements = {**_reads(), "slot": _slot(), "registered": _registered(), "recording": _recording()}
    for shape, params in [((0, True), {}), ((1, True), {"room0": "*"}), ((2, False), {"room0": "b1", "room1": "*"})]:
        cases.append((shape, {"session_id": session["id"], "limit": 3, **params}))
        statements[shape] = _chat_history(*shape)
    for name, params in cases:
        async with store.engine.connect() as conn:
            expected = [dict(r) for r in (await conn.execute(statements[name], params)).mappings()]
        got = await store._rows(statements[name], params)
        assert got == expected, name
        assert [[type(v) for v in r.values()] for r in got] == [[type(v) for v in r.values()] for r in expected], name
    texts = [[m["text"] for m in await store.chat_history(session["id"], rooms, limit=4)] for rooms in ([None, "*"], ["b1", "*"], ["b2"])]
    assert texts == [["line 3", "line 4", "line 7", "line 8"], ["line 1", "line 3", "line 5", "line 7"], ["line 2", "line 6"]]
    assert await store.slot_for_room(room["id"]) is None
    found = await store.slot_for_room(slot["room_id"])
    assert found["id"] == slot["id"] and sorted(found["registered"]) == ["ann", "bob"]
    assert (await store.recording_archive(session["id"]))["id"] == archive["id"]
    assert await store.recording_archive("sess_none") is None
    assert [e["seq"] for e in await store.session_events(session["id"], after_seq=2, limit=3)] == [3, 4, 5]
    assert [e["visibility"] for e in await store.session_events(session["id"], broadcast_only=True)] == [
        "broadcast", "staff", "room", "broadcast", "staff"]
    assert (await store.get_session(session["id"]))["meeting"] == {"started": True}
    assert [p["on_stage"] for p in await store.list_participants(session["id"])] == [False, True, False]
    assert [q["voters"] for q in await store.session_questions(session["id"])] == [[], ["part_2"]]


def test_the_cursor_path_converts_values_as_sqlalchemys_execution_does():
    """The statements run on SQLite's cursor convert their parameters (JSON, floats) with
    converters found through SQLAlchemy's public API: the same ones, for the same names, as
    SQLAlchemy's execution context takes from the compiled statement (a private attribute)."""
    from sqlalchemy.dialects import sqlite

    from mediaserver.store.inloop import bind_processors
    from mediaserver.store.schema import chat_messages, events, sessions
    from mediaserver.store.store import _chat_history, _insert, _join_lookup, _reads, _update_by_id

    dialect = sqlite.dialect()
    compiled = [s.compile(dialect=dialect) for s in [*_reads().values(), _join_lookup(), _chat_history(2, True)]]
    compiled += [_insert(t).compile(dialect=dialect, column_keys=[c.name for c in t.c]) for t in (sessions, events, chat_messages)]
    compiled.append(_update_by_id(sessions).compile(dialect=dialect, column_keys=["meeting", "empty_since", "_id"]))
    samples = {"JSON": ({"nested": [1, {"x": None}]}, lambda v: json.loads(v) == {"nested": [1, {"x": None}]}),
               "Float": (7, lambda v: type(v) is float and v == 7.0)}
    converted = 0
    for c in compiled:
        ours = bind_processors(c, dialect)
        theirs = getattr(c, "_bind_processors", None)  # (SQLAlchemy's own, where this release has it)
        assert theirs is None or ours.keys() == theirs.keys(), c
        for name, convert in ours.items():
            value, stored = samples[type(c.binds[name].type).__name__]
            assert stored(convert(value)), (name, convert(value))
            assert theirs is None or convert(value) == theirs[name](value)
            converted += 1
    assert converted >= 5  # (JSON and float columns among them)


def test_the_join_statements_write_the_session_status_in_instead_of_binding_it():
    """SQLite prepares a statement again, every time it runs, when a value bound to it is
    compared with a column that a partial index's WHERE names (``sessions.status``): a join's
    lookup cost six times what it does with the status written into the statement."""
    from sqlalchemy.sql import visitors
    from sqlalchemy.sql.elements import BindParameter

    from mediaserver.store.store import _join_lookup, _live_count

    for stmt in (_join_lookup(), _live_count()):
        statuses = [b for b in visitors.iterate(stmt) if isinstance(b, BindParameter) and b.value in ("ended", "live")]
        assert statuses and all(b.literal_execute for b in statuses), statuses
