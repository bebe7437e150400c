"""Every limit the store checks holds under a burst of requests arriving together, on SQLite and
on PostgreSQL: registrations for a slot, a host's and an event's session allowances,
overlapping slots, a team's live sessions, the uses of an invite link and upvotes.

Each burst runs through several ``Store`` objects in threads of their own (as gateways and
session hosts are processes of their own), all released at once.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mediaserver.errors import MediaserverError
from mediaserver.store import SessionChange, Store, new_session_row

ROOM = {
    "name": "Burst", "type": "adhoc", "media_mode": "routed", "archive_mode": "manual", "encryption": "server",
    "location_hint": None, "capacity": 50, "comment": None, "starts_at": None, "ends_at": None,
}
BURST = 16


class Stores:
    """Several stores on one database, each in a thread of its own with its own event loop (as
    gateways and session hosts are separate processes): a burst from them really is concurrent,
    on SQLite too, where one thread's statements never interleave."""

    def __init__(self, url: str, n: int = 4):
        self.url = url
        self.n = n

    def __getitem__(self, i: int) -> "StoreProxy":
        return StoreProxy(self.url)


class StoreProxy:
    """A store for set-up steps: each call opens a store, runs, and closes it."""

    def __init__(self, url: str):
        self.url = url

    def __getattr__(self, name: str):
        async def call(*args, **kwargs):
            s = Store(self.url)
            try:
                return await getattr(s, name)(*args, **kwargs)
            finally:
                await s.close()

        return call


@pytest.fixture
def stores(store_url):
    return Stores(store_url)


async def burst(stores: Stores, calls) -> tuple[list, list[str]]:
    """Run every call (a function of a store) at once, spread over the threads; (results, refusal codes)."""
    barrier = threading.Barrier(stores.n)
    shares = [calls[i::stores.n] for i in range(stores.n)]

    def run(share):
        async def go():
            s = Store(stores.url)
            try:
                await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
                return await asyncio.gather(*(c(s) for c in share), return_exceptions=True)
            finally:
                await s.close()

        return asyncio.run(go())

    done = [d for share in await asyncio.gather(*(asyncio.to_thread(run, sh) for sh in shares)) for d in share]
    unexpected = [d for d in done if isinstance(d, BaseException) and not isinstance(d, MediaserverError)]
    assert not unexpected, unexpected
    return [d for d in done if not isinstance(d, BaseException)], sorted(d.code for d in done if isinstance(d, MediaserverError))


def host(identity: str, **extra) -> dict:
    now = time.time()
    return {
        "identity": identity, "name": identity, "max_sessions": 5, "spots": 3, "duration": 1800.0,
        "timeframes": [[now, now + 86400]], **extra,
    }


async def make_event(store: Store, hosts: list[dict], max_sessions: int | None = None) -> tuple[dict, dict]:
    team = await store.ensure_team("events")
    now = time.time()
    event = await store.create_event(team["id"], "Fair", now, now + 86400, hosts, max_sessions)
    return team, event


async def test_registrations_never_exceed_the_spots(stores):
    _, event = await make_event(stores[0], [host("acme", spots=3)])
    slot = await stores[0].add_slot(event, event["hosts"][0], time.time() + 600, {**ROOM})
    ok, refused = await burst(stores, [lambda s, i=i: s.register(slot["id"], f"p{i}", f"P {i}") for i in range(BURST)])
    assert len(ok) == 3 and refused == ["slot_full"] * (BURST - 3)
    again = await stores[0].get_event(event["id"])
    assert len(again["slots"][0]["registrations"]) == 3


async def test_the_same_identity_registers_once(stores):
    _, event = await make_event(stores[0], [host("acme", spots=10)])
    slot = await stores[0].add_slot(event, event["hosts"][0], time.time() + 600, {**ROOM})
    ok, refused = await burst(stores, [lambda s: s.register(slot["id"], "ann", "Ann") for _ in range(8)])
    assert len(ok) == 1 and refused == ["already_registered"] * 7


async def test_a_host_allowance_holds_when_it_picks_many_slots_at_once(stores):
    _, event = await make_event(stores[0], [host("acme", max_sessions=2)])
    h, start = event["hosts"][0], time.time() + 600
    picks = [lambda s, i=i: s.add_slot(event, h, start + i * 3600, {**ROOM}) for i in range(5)]
    ok, refused = await burst(stores, picks)
    assert len(ok) == 2 and refused == ["host_session_limit"] * 3
    assert len((await stores[0].get_event(event["id"]))["slots"]) == 2


async def test_overlapping_slots_picked_at_once_leave_one(stores):
    _, event = await make_event(stores[0], [host("acme", max_sessions=5)])
    h, start = event["hosts"][0], time.time() + 600
    picks = [lambda s, i=i: s.add_slot(event, h, start + i * 60, {**ROOM}) for i in range(5)]
    ok, refused = await burst(stores, picks)
    assert len(ok) == 1 and refused == ["slot_overlap"] * 4


async def test_the_event_wide_allowance_holds_across_hosts(stores):
    _, event = await make_event(stores[0], [host(f"h{i}", max_sessions=3) for i in range(4)], max_sessions=5)
    start = time.time() + 600
    picks = [
        lambda s, h=h, j=j: s.add_slot(event, h, start + j * 3600, {**ROOM})
        for h in event["hosts"] for j in range(3)
    ]
    ok, refused = await burst(stores, picks)
    assert len(ok) == 5 and refused == ["event_session_limit"] * 7
    assert len((await stores[0].get_event(event["id"]))["slots"]) == 5


async def test_a_team_limit_holds_when_many_rooms_open_at_once(stores):
    team = await stores[0].ensure_team("limited", max_live_sessions=3)
    rooms = [await stores[0].create_room(team["id"], {**ROOM, "name": f"r{i}"}) for i in range(BURST)]
    ok, refused = await burst(stores, [lambda s, r=r: s.open_session(r, time.time(), default_limit=10) for r in rooms])
    assert len(ok) == 3 and refused == ["session_limit_reached"] * (BURST - 3)
    assert await stores[0].count_live_sessions(team["id"]) == 3


async def test_many_first_joins_of_one_room_open_one_session(stores):
    team = await stores[0].ensure_team("one room")
    room = await stores[0].create_room(team["id"], {**ROOM})
    ok, refused = await burst(stores, [lambda s: s.open_session(room, time.time(), default_limit=10) for _ in range(BURST)])
    assert not refused and len({session["id"] for session, _ in ok}) == 1
    assert sum(created for _, created in ok) == 1


async def test_first_joins_that_all_saw_no_session_open_one(stores):
    """A gateway that has just read "no session" skips reading it again in the transaction:
    the one-per-room index still makes every concurrent opener end up in the same session."""
    team = await stores[0].ensure_team("seen none")
    room = await stores[0].create_room(team["id"], {**ROOM})
    ok, refused = await burst(
        stores, [lambda s: s.open_session(room, time.time(), default_limit=10, none_seen=True) for _ in range(BURST)]
    )
    assert not refused and len({session["id"] for session, _ in ok}) == 1
    assert sum(created for _, created in ok) == 1


async def test_first_joins_of_a_room_at_the_team_limit_join_the_session_one_of_them_opened(stores):
    """The team has room for one more session and a burst opens the same room: one opens it,
    the others join it rather than being refused for the session it became."""
    team = await stores[0].ensure_team("one more", max_live_sessions=2)
    await stores[0].open_session(await stores[0].create_room(team["id"], {**ROOM, "name": "other"}), time.time(), default_limit=10)
    room = await stores[0].create_room(team["id"], {**ROOM, "name": "last"})
    ok, refused = await burst(
        stores, [lambda s: s.open_session(room, time.time(), default_limit=10, none_seen=True) for _ in range(BURST)]
    )
    assert not refused and len({session["id"] for session, _ in ok}) == 1
    assert await stores[0].count_live_sessions(team["id"]) == 2
    third = await stores[0].create_room(team["id"], {**ROOM, "name": "third"})
    with pytest.raises(MediaserverError) as e:
        await stores[0].open_session(third, time.time(), default_limit=10, none_seen=True)
    assert e.value.code == "session_limit_reached"


async def first_join(s: Store, room: dict, identity: str = "first") -> str:
    """What a session host writes for the first join of a session the gateway only placed
    (``SessionChange.opens``): the session, its participant and its event, in one transaction."""
    row = new_session_row(room, time.time(), {"host": "host:test:0", "media_worker": "media:test:0"})
    pid = f"part_{identity}_{row['id']}"
    await s.apply(SessionChange(
        row["id"], session={"last_seq": 1}, opens=row, live_limit=10,
        new_participants=[{
            "id": pid, "session_id": row["id"], "identity": identity, "name": identity, "role": "publisher",
            "state": "connected", "joined_at": row["started_at"], "disconnected_at": None, "left_at": None,
            "left_reason": None, "on_stage": False, "stage_requested_at": None, "breakout_id": None,
        }],
        events=[{"session_id": row["id"], "seq": 1, "participant_id": pid, "type": "joined", "visibility": "broadcast",
                 "data": {}, "at": row["started_at"]}],
    ))
    return row["id"]


async def test_first_joins_written_by_hosts_open_one_session_per_room(stores):
    """Every gateway saw no session and placed one of its own: the hosts' first joins write
    them, one wins, and every other gives way (``session_opened_elsewhere``) writing nothing."""
    team = await stores[0].ensure_team("hosts open")
    room = await stores[0].create_room(team["id"], {**ROOM})
    ok, refused = await burst(stores, [lambda s: first_join(s, room) for _ in range(BURST)])
    assert len(ok) == 1 and refused == ["session_opened_elsewhere"] * (BURST - 1)
    assert (await stores[0].unended_session(room["id"]))["id"] == ok[0]
    assert len(await stores[0].list_participants(ok[0])) == 1


async def test_first_joins_written_by_hosts_keep_the_team_limit(stores):
    team = await stores[0].ensure_team("hosts limited", max_live_sessions=3)
    rooms = [await stores[0].create_room(team["id"], {**ROOM, "name": f"h{i}"}) for i in range(BURST)]
    ok, refused = await burst(stores, [lambda s, r=r: first_join(s, r) for r in rooms])
    assert len(ok) == 3 and refused == ["session_limit_reached"] * (BURST - 3)
    assert await stores[0].count_live_sessions(team["id"]) == 3


async def test_first_joins_written_by_hosts_at_the_limit_give_way_to_the_one_that_opened(stores):
    """One session short of the limit, a burst of first joins of one room: the one that opened
    it is in, and the others are told to join it, not that the team is at its limit."""
    team = await stores[0].ensure_team("hosts one more", max_live_sessions=2)
    await first_join(stores[0], await stores[0].create_room(team["id"], {**ROOM, "name": "other"}))
    room = await stores[0].create_room(team["id"], {**ROOM, "name": "last"})
    ok, refused = await burst(stores, [lambda s: first_join(s, room) for _ in range(BURST)])
    assert len(ok) == 1 and refused == ["session_opened_elsewhere"] * (BURST - 1)
    assert await stores[0].count_live_sessions(team["id"]) == 2


async def test_ending_soon_sessions_coming_back_count_against_the_limit(stores):
    """Sessions with nobody connected do not count; bringing several back at once is checked in
    the writes that bring them back."""
    team = await stores[0].ensure_team("comeback", max_live_sessions=2)
    sessions = []
    for i in range(6):
        room = await stores[0].create_room(team["id"], {**ROOM, "name": f"c{i}"})
        session, _ = await stores[0].open_session(room, time.time(), default_limit=10)
        await stores[0].apply(SessionChange(session["id"], session={"status": "ending_soon", "empty_since": time.time()}))
        sessions.append(session)

    def revive(session):
        return lambda s: s.apply(SessionChange(session["id"], session={"status": "live", "empty_since": None}, live_limit=10))

    ok, refused = await burst(stores, [revive(x) for x in sessions])
    assert len(ok) == 2 and refused == ["session_limit_reached"] * 4
    assert await stores[0].count_live_sessions(team["id"]) == 2


async def test_an_invite_link_is_used_at_most_its_uses(stores):
    team = await stores[0].ensure_team("guests")
    key = await stores[0].create_api_key(team["id"])
    room = await stores[0].create_room(team["id"], {**ROOM})
    invite = await stores[0].create_invite(room["id"], key["id"], "publisher", 3600, max_uses=4)
    ok, refused = await burst(stores, [lambda s: s.use_invite(invite["id"]) for _ in range(BURST)])
    assert len(ok) == 4 and refused == ["invite_used_up"] * (BURST - 4)
    assert (await stores[0].get_invite(invite["id"]))["uses"] == 4
    unlimited = await stores[0].create_invite(room["id"], key["id"], "publisher", 3600)
    ok, refused = await burst(stores, [lambda s: s.use_invite(unlimited["id"]) for _ in range(BURST)])
    assert len(ok) == BURST and not refused
    await stores[0].revoke_invite(room["id"], unlimited["id"])
    with pytest.raises(MediaserverError) as e:
        await stores[0].use_invite(unlimited["id"])
    assert e.value.code == "invite_revoked"


async def test_a_vote_is_stored_once(stores):
    """The session's owner serializes votes; the primary key is the database's own guard."""
    from sqlalchemy.exc import IntegrityError

    team = await stores[0].ensure_team("votes")
    room = await stores[0].create_room(team["id"], {**ROOM})
    session, _ = await stores[0].open_session(room, time.time())
    q = {
        "id": "q_1", "session_id": session["id"], "participant_id": "part_a", "name": "A", "text": "?",
        "status": "open", "answer": None, "answered_by": None, "votes": 0, "asked_at": 1.0, "updated_at": 1.0,
    }
    await stores[0].apply(SessionChange(session["id"], new_questions=[q]))
    vote = {"question_id": "q_1", "participant_id": "part_b", "at": 2.0}
    results: list = []

    async def vote_once(s):
        try:
            await s.apply(SessionChange(session["id"], votes=[vote]))
            results.append(None)
        except IntegrityError as e:
            results.append(e)

    await burst(stores, [vote_once for _ in range(8)])
    assert sum(r is None for r in results) == 1
    assert all(isinstance(r, IntegrityError) for r in results if r is not None)
    assert (await stores[0].session_questions(session["id"]))[0]["voters"] == ["part_b"]


async def test_one_archive_records_a_session_and_it_stops_once(stores):
    team = await stores[0].ensure_team("archives")
    room = await stores[0].create_room(team["id"], {**ROOM})
    session, _ = await stores[0].open_session(room, time.time())
    ok, refused = await burst(stores, [lambda s, i=i: s.create_archive(session, f"take {i}", "individual", None)
                                       for i in range(BURST)])
    assert len(ok) == 1 and refused == ["archive_already_recording"] * (BURST - 1)
    archive = ok[0]
    results: list = []

    async def stop(s):
        results.append(await s.finish_archive(archive["id"], frm="recording", to="processing", stop_reason="api"))

    await burst(stores, [stop for _ in range(8)])
    assert sum(r is not None for r in results) == 1  # one stop wins; the others see it stopped
    assert [a["status"] for a in await stores[0].list_archives(team["id"], session_id=session["id"])] == ["processing"]
    again, _ = await burst(stores, [lambda s: s.create_archive(session, "next", "both", None)])
    assert len(again) == 1  # a stopped archive no longer counts: the next may record
