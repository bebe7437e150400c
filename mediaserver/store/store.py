"""The store: every durable fact of mediaserver, behind one async class.

SQLAlchemy Core over aiosqlite (default, WAL) or asyncpg; the same statements
run on both. Each public method is one transaction, so a failure leaves
nothing half-written.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from mediaserver.errors import MediaserverError
from mediaserver.ids import new_id, new_secret
from mediaserver.store.archive_store import ArchiveStore
from mediaserver.store.event_store import EventStore
from mediaserver.store.inloop import InLoopConnection, InLoopEngine
from mediaserver.store.locking import lock_row
from mediaserver.store.people_store import PeopleStore
from mediaserver.store.schema import (
    api_keys,
    chat_messages,
    event_slots,
    events,
    fixed,
    media_nodes,
    participants,
    question_votes,
    questions,
    rooms,
    server_state,
    sessions,
    teams,
)

MIGRATIONS = Path(__file__).with_name("migrations")
WRITE_OPTION = "mediaserver_write"
BUSY_TIMEOUT_MS = 30000  # what a read (WAL: rarely) waits on a lock in SQLite; writes wait on the loop


@dataclass
class SessionChange:
    """Everything one session operation writes, applied in one transaction."""

    session_id: str
    session: dict[str, Any] = field(default_factory=dict)  # column -> new value
    new_participants: list[dict[str, Any]] = field(default_factory=list)
    participant_updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # full rows, seq included
    chat: list[dict[str, Any]] = field(default_factory=list)  # new chat_messages rows
    new_questions: list[dict[str, Any]] = field(default_factory=list)
    question_updates: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    votes: list[dict[str, Any]] = field(default_factory=list)  # new question_votes rows
    # The session comes back to life (someone connected to an ending-soon session): check the
    # team's live-session limit in the same transaction, with this as the server's default limit.
    live_limit: int | None = None
    # The session opens with this operation (its first join): its row, inserted first. The team's
    # limit is checked (``live_limit``) and the room's one unended session is the index's to keep.
    opens: dict[str, Any] | None = None


def new_session_row(room: dict, now: float, placement: dict | None = None) -> dict:
    """A room's new session as its row reads: live, nothing happened yet, placed as ``placement``
    says (``id``, ``host``, ``media_worker``)."""
    return {
        "id": new_id("sess"), "room_id": room["id"], "team_id": room["team_id"], "status": "live", "started_at": now,
        "empty_since": None, "ended_at": None, "end_reason": None, "last_seq": 0, "host": None, "media_worker": None,
        **(placement or {}),
    }


def _opened_elsewhere() -> MediaserverError:
    return MediaserverError(
        "session_opened_elsewhere", "another join opened this room's session at the same moment; join again to enter it"
    )


def _matches(q: str, *columns: Any) -> Any:
    """Case-insensitive substring search over columns; LIKE wildcards in ``q`` are literal."""
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    pattern = f"%{escaped.lower()}%"
    return sa.or_(*(sa.func.lower(sa.func.coalesce(c, "")).like(pattern, escape="\\") for c in columns))


@functools.cache
def _insert(table: sa.Table) -> Any:
    return table.insert()


@functools.cache
def _reads() -> dict[str, Any]:
    """The reads a session host makes to load (or wake) a session, built once: building and
    keying a statement costs more than SQLite takes to run it."""
    by_session = sa.bindparam("session_id")
    events_after = sa.select(events).where(events.c.session_id == by_session, events.c.seq > sa.bindparam("after_seq"))
    return {
        "room": sa.select(rooms).where(rooms.c.id == sa.bindparam("id")),
        "session": (
            sa.select(sessions, rooms.c.name.label("room_name"), rooms.c.encryption.label("room_encryption"))
            .join(rooms, rooms.c.id == sessions.c.room_id)
            .where(sessions.c.id == sa.bindparam("id"))
        ),
        "participants": sa.select(participants).where(participants.c.session_id == by_session).order_by(participants.c.joined_at),
        "events": events_after.order_by(events.c.seq).limit(sa.bindparam("limit")),
        # (what participants are sent: room events are filtered per participant)
        "broadcast_events": events_after.where(events.c.visibility.in_(("broadcast", "room", "staff")))
        .order_by(events.c.seq).limit(sa.bindparam("limit")),
        "questions": sa.select(questions).where(questions.c.session_id == by_session).order_by(questions.c.asked_at),
        "votes": (
            sa.select(question_votes.c.question_id, question_votes.c.participant_id)
            .join(questions, questions.c.id == question_votes.c.question_id)
            .where(questions.c.session_id == by_session)
        ),
    }


@functools.cache
def _chat_history(named: int, main: bool) -> Any:
    """``Store.chat_history``'s read for ``named`` breakout rooms (``room0``...), and the main room
    if ``main``, built once per shape (a join reads it: its room's and everyone's messages)."""
    where = chat_messages.c.breakout_id.in_([sa.bindparam(f"room{i}") for i in range(named)]) if named else sa.false()
    if main:
        where = sa.or_(where, chat_messages.c.breakout_id.is_(None))
    return (
        sa.select(chat_messages)
        .where(chat_messages.c.session_id == sa.bindparam("session_id"), where)
        .order_by(chat_messages.c.seq.desc())
        .limit(sa.bindparam("limit"))
    )


# (name, label in the join's row) per table, plain strings: a column's name is a str subclass
# that costs a ``__reduce__`` each time a row travels to a session host.
_JOIN_COLUMNS = tuple(
    tuple((str(c.name), f"{prefix}{c.name}") for c in table.c)
    for table, prefix in ((api_keys, "k_"), (rooms, ""), (sessions, "s_"), (event_slots, "e_"))
)


@functools.cache
def _join_lookup() -> Any:
    """``Store.join_lookup``'s statement, built once (building and keying a statement of this
    size costs more than SQLite takes to run it)."""
    return (
        sa.select(*[c.label(f"k_{c.name}") for c in api_keys.c], rooms,
                  *[c.label(f"s_{c.name}") for c in sessions.c], *[c.label(f"e_{c.name}") for c in event_slots.c])
        .select_from(
            api_keys.outerjoin(rooms, rooms.c.id == sa.bindparam("room_id"))
            .outerjoin(sessions, sa.and_(sessions.c.room_id == rooms.c.id, sessions.c.status != fixed("ended")))
            .outerjoin(event_slots, event_slots.c.room_id == rooms.c.id)
        )
        .where(api_keys.c.id == sa.bindparam("key_id"), api_keys.c.revoked_at.is_(None))
    )


@functools.cache
def _team_of_session() -> Any:
    """(A session coming back to live, which counts against its team's limit again: a wake's join.)"""
    return sa.select(sessions.c.team_id).where(sessions.c.id == sa.bindparam("id"))


@functools.cache
def _update_by_id(table: sa.Table) -> Any:
    """An UPDATE of one row by its ID (parameter ``_id``), the columns it sets given with it."""
    return table.update().where(table.c.id == sa.bindparam("_id"))


async def _run(conn: Any, stmt: Any, params: dict[str, Any] | list[dict[str, Any]]) -> list[Any] | None:
    """A statement built once, in a write transaction: on SQLite straight on its cursor
    (``InLoopConnection.run``), elsewhere through SQLAlchemy. A SELECT's rows, else None."""
    if isinstance(conn, InLoopConnection):
        return conn.run(stmt, params)
    result = await conn.execute(stmt, params)
    return result.all() if result.returns_rows else None


@functools.cache
def _live_count() -> Any:
    """A team's limit on live sessions and its live sessions but one, its row locked."""
    live = (
        sa.select(sa.func.count()).select_from(sessions)
        .where(sessions.c.team_id == teams.c.id, sessions.c.status == fixed("live"), sessions.c.id != sa.bindparam("session_id"))
        .scalar_subquery()
    )
    return sa.select(teams.c.max_live_sessions, live).where(teams.c.id == sa.bindparam("team_id")).with_for_update(of=teams)


class Store(EventStore, PeopleStore, ArchiveStore):
    def __init__(self, url: str, *, echo: bool = False):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {"echo": echo}
        self.engine: AsyncEngine | InLoopEngine
        if self.is_sqlite:
            path = url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # Several processes (gateway, hosts) share the file: wait for locks rather than fail.
            kwargs["connect_args"] = {"timeout": 30}
            self.engine = InLoopEngine(sa.create_engine(url.replace("+aiosqlite", "", 1), **kwargs))
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        else:
            kwargs["pool_size"] = 5
            kwargs["pool_pre_ping"] = True
            self.engine = create_async_engine(url, **kwargs)
        # Write transactions go through this engine: on SQLite they start with BEGIN IMMEDIATE.
        self._writer = self.engine.execution_options(**{WRITE_OPTION: True})
        self._group: list[tuple[SessionChange, asyncio.Future]] = []  # (``apply``: this turn's, committed together)
        self._tasks: set[asyncio.Future] = set()

    async def _rows(self, stmt: Any, params: dict[str, Any]) -> list[dict]:
        """A prebuilt SELECT's rows: on SQLite's cursor (``InLoopEngine.rows``), else as usual."""
        if isinstance(self.engine, InLoopEngine):
            return self.engine.rows(stmt, params)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt, params)).mappings()]

    def write(self) -> Any:
        """A write transaction. A rule checked by reading before writing holds under concurrency
        only if no other writer runs in between: SQLite takes its one write lock at BEGIN
        IMMEDIATE (a deferred BEGIN would let two such transactions read the same state);
        PostgreSQL takes row locks, which the rule's code asks for (``lock_row``)."""
        return self._writer.begin()

    async def close(self) -> None:
        await self.engine.dispose()

    # Schema -------------------------------------------------------------

    async def migrate(self) -> None:
        """Bring the database to the newest Alembic revision."""

        from alembic import command  # only here: session hosts never migrate, and need not load it
        from alembic.config import Config

        def upgrade(conn: sa.Connection) -> None:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

        async with self.write() as conn:
            await conn.run_sync(upgrade)

    # Deployment-wide values ---------------------------------------------------

    async def server_value(self, key: str, make: Any) -> str:
        """The stored value of ``key``, set to ``make()`` by whoever asks first."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(server_state.c.value).where(server_state.c.key == key))).first()
        if row:
            return row[0]
        try:
            async with self.write() as conn:
                await conn.execute(server_state.insert().values(key=key, value=make()))
        except IntegrityError:
            pass  # another gateway won the race; use its value
        async with self.engine.connect() as conn:
            return (await conn.execute(sa.select(server_state.c.value).where(server_state.c.key == key))).scalar_one()

    # Teams and API keys --------------------------------------------------

    async def ensure_team(self, name: str, *, max_live_sessions: int | None = None) -> dict:
        async with self.write() as conn:
            row = (await conn.execute(sa.select(teams).where(teams.c.name == name))).mappings().first()
            if row:
                if max_live_sessions is not None and row["max_live_sessions"] != max_live_sessions:
                    await conn.execute(
                        teams.update().where(teams.c.id == row["id"]).values(max_live_sessions=max_live_sessions)
                    )
                    return {**row, "max_live_sessions": max_live_sessions}
                return dict(row)
            team = {
                "id": new_id("team"),
                "name": name,
                "max_live_sessions": max_live_sessions,
                "created_at": time.time(),
            }
            await conn.execute(teams.insert().values(**team))
            return team

    async def get_team(self, team_id: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(teams).where(teams.c.id == team_id))).mappings().first()
            return dict(row) if row else None

    async def create_api_key(self, team_id: str, name: str = "default") -> dict:
        key = {
            "id": new_id("AK"),
            "team_id": team_id,
            "secret": new_secret(),
            "name": name,
            "created_at": time.time(),
            "revoked_at": None,
        }
        async with self.write() as conn:
            await conn.execute(api_keys.insert().values(**key))
        return key

    async def get_api_key(self, key_id: str) -> dict | None:
        """A key that exists and is not revoked."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                )
            ).mappings().first()
            return dict(row) if row else None

    async def list_api_keys(self, team_id: str | None = None) -> list[dict]:
        q = sa.select(api_keys, teams.c.name.label("team_name")).join(teams).order_by(api_keys.c.created_at)
        if team_id:
            q = q.where(api_keys.c.team_id == team_id)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def revoke_api_key(self, key_id: str) -> bool:
        async with self.write() as conn:
            res = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            return res.rowcount == 1

    # Rooms -----------------------------------------------------------------

    async def create_room(self, team_id: str, fields: dict[str, Any]) -> dict:
        now = time.time()
        room = {"id": new_id("room"), "team_id": team_id, "created_at": now, "updated_at": now, **fields}
        async with self.write() as conn:
            await conn.execute(rooms.insert().values(**room))
        return room

    async def get_room(self, room_id: str, team_id: str | None = None) -> dict | None:
        if team_id is None:  # (a session's host loading it: prebuilt)
            found = await self._rows(_reads()["room"], {"id": room_id})
            return found[0] if found else None
        q = sa.select(rooms).where(rooms.c.id == room_id, rooms.c.team_id == team_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).mappings().first()
            return dict(row) if row else None

    async def room_for_join(self, room_id: str) -> tuple[dict | None, dict | None, dict | None]:
        """A room with its unended session and its event slot (each None when there is none),
        read together in one statement: a join needs all three."""
        s_cols = [c.label(f"s_{c.name}") for c in sessions.c]
        e_cols = [c.label(f"e_{c.name}") for c in event_slots.c]
        q = (
            sa.select(rooms, *s_cols, *e_cols)
            .select_from(
                rooms.outerjoin(sessions, sa.and_(sessions.c.room_id == rooms.c.id, sessions.c.status != fixed("ended")))
                .outerjoin(event_slots, event_slots.c.room_id == rooms.c.id)
            )
            .where(rooms.c.id == room_id)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).mappings().first()
        if row is None:
            return None, None, None
        room = {c.name: row[c.name] for c in rooms.c}
        session = {c.name: row[f"s_{c.name}"] for c in sessions.c} if row["s_id"] is not None else None
        slot = {c.name: row[f"e_{c.name}"] for c in event_slots.c} if row["e_id"] is not None else None
        return room, session, slot

    async def join_lookup(self, key_id: str, room_id: str) -> tuple[dict | None, dict | None, dict | None, dict | None]:
        """What a join reads, in one statement: the API key (not revoked) that signed its token,
        the room, the room's unended session and its event slot (each None when there is none;
        all None without the key)."""
        found = await self._rows(_join_lookup(), {"key_id": key_id, "room_id": room_id})  # (one row at most)
        if not found:
            return None, None, None, None
        row = found[0]
        key, room, session, slot = _JOIN_COLUMNS
        if row["id"] is None:
            return {n: row[label] for n, label in key}, None, None, None
        return ({n: row[label] for n, label in key}, {n: row[label] for n, label in room},
                {n: row[label] for n, label in session} if row["s_id"] is not None else None,
                {n: row[label] for n, label in slot} if row["e_id"] is not None else None)

    async def update_room(self, room_id: str, team_id: str, fields: dict[str, Any]) -> dict | None:
        async with self.write() as conn:
            res = await conn.execute(
                rooms.update()
                .where(rooms.c.id == room_id, rooms.c.team_id == team_id)
                .values(**fields, updated_at=time.time())
            )
            if res.rowcount != 1:
                return None
            row = (await conn.execute(sa.select(rooms).where(rooms.c.id == room_id))).mappings().one()
            return dict(row)

    async def list_rooms(self, team_id: str, *, q: str | None = None, limit: int = 50, offset: int = 0) -> list[dict]:
        stmt = sa.select(rooms).where(rooms.c.team_id == team_id)
        if q:
            stmt = stmt.where(_matches(q, rooms.c.id, rooms.c.name, rooms.c.comment))
        stmt = stmt.order_by(rooms.c.created_at.desc(), rooms.c.id).limit(limit).offset(offset)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]

    # Sessions ----------------------------------------------------------------

    async def open_session(
        self, room: dict, now: float, *, default_limit: int | None = None, placement: dict | None = None,
        none_seen: bool = False,
    ) -> tuple[dict, bool]:
        """The room's unended session, or a new one placed as ``placement`` says (``host``,
        ``media_worker``). Returns (session, created).

        With ``default_limit`` the team's limit on live sessions (its own, else this default)
        is checked in the same write transaction, with the team's row locked: a new session,
        or an ending-soon one about to come back to life, is refused with
        ``session_limit_reached`` when the team's other live sessions already reach it.
        ``none_seen``: the caller has just read that the room has no unended session, so it
        is not read again first; one opened since then makes the insert fail on the one-per-room
        index, and that one is returned.
        """
        try:
            async with self.write() as conn:
                if default_limit is None:
                    await lock_row(conn, teams, room["team_id"])
                existing = None if none_seen else await self._unended_session(conn, room["id"])
                if existing and existing["status"] == "live":
                    return existing, False
                if default_limit is not None:
                    try:
                        await self._check_live_limit(conn, room["team_id"], default_limit, existing["id"] if existing else None)
                    except MediaserverError:
                        opened = await self._unended_session(conn, room["id"]) if none_seen else None
                        if opened and opened["status"] == "live":
                            return opened, False  # (opened since the caller looked: join it; the limit counted it)
                        raise
                if existing:
                    return existing, False
                session = new_session_row(room, now, placement)
                await conn.execute(sessions.insert(), session)
                return session, True
        except IntegrityError:  # another process opened it between our read and write
            async with self.engine.connect() as conn:
                existing = await self._unended_session(conn, room["id"])
            if existing is None:
                raise MediaserverError("conflict", "the room's session changed while opening it; try again")
            return existing, False

    async def _check_live_limit(self, conn: Any, team_id: str, default_limit: int, session_id: str | None) -> None:
        """Refuse when the team's live sessions other than ``session_id`` reach its limit, the
        team's row locked, so two transactions checking the rule run one after the other and the
        count cannot go stale. SQLite's write transaction holds its one lock already: one
        statement reads the limit and the count. PostgreSQL takes the row lock first, in a
        statement of its own: a statement that waited for the lock still counts from the
        snapshot it started with (READ COMMITTED), which would miss the sessions the lock's
        holder just opened."""
        if not self.is_sqlite:
            await lock_row(conn, teams, team_id)
        found = await _run(conn, _live_count(), {"team_id": team_id, "session_id": session_id or ""})
        row = found[0] if found else None
        if row is None:  # (no team row: none of its sessions count)
            limit, live = default_limit, 0
        else:
            limit = row[0] if row[0] is not None else default_limit
            live = int(row[1])
        if live >= limit:
            raise MediaserverError(
                "session_limit_reached",
                f"the team already has {live} live sessions, its limit; end one or raise the limit",
            )

    async def _unended_session(self, conn: Any, room_id: str) -> dict | None:
        row = (
            await conn.execute(sa.select(sessions).where(sessions.c.room_id == room_id, sessions.c.status != fixed("ended")))
        ).mappings().first()
        return dict(row) if row else None

    async def unended_session(self, room_id: str) -> dict | None:
        async with self.engine.connect() as conn:
            return await self._unended_session(conn, room_id)

    async def count_live_sessions(self, team_id: str, *, exclude_session_id: str | None = None) -> int:
        """Sessions of a team that count against its limit: live, not ending soon."""
        q = sa.select(sa.func.count()).select_from(sessions).where(
            sessions.c.team_id == team_id, sessions.c.status == fixed("live")
        )
        if exclude_session_id:
            q = q.where(sessions.c.id != exclude_session_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(q)).scalar_one())

    async def place_session(self, session_id: str, *, host: str, only_if_host: str | None) -> dict | None:
        """Move an unended session to ``host`` if it is still where the caller saw it
        (``only_if_host``; None: not placed yet), so concurrent movers agree on one place.
        Returns the session as it stands."""
        async with self.write() as conn:
            cond = sessions.c.host.is_(None) if only_if_host is None else sessions.c.host == only_if_host
            await conn.execute(
                sessions.update().where(sessions.c.id == session_id, sessions.c.status != fixed("ended"), cond).values(host=host)
            )
            row = (await conn.execute(sa.select(sessions).where(sessions.c.id == session_id))).mappings().first()
        return dict(row) if row else None

    async def host_sessions(self, host: str) -> list[dict]:
        """The unended sessions placed on a host: id, status, empty_since, how many participants
        are connected and when the earliest disconnected one dropped (for its timers)."""
        connected = sa.func.sum(sa.case((participants.c.state == "connected", 1), else_=0))
        dropped = sa.func.min(sa.case((participants.c.state == "disconnected", participants.c.disconnected_at), else_=None))
        q = (
            sa.select(sessions.c.id, sessions.c.status, sessions.c.empty_since, sessions.c.started_at, sessions.c.last_seq,
                      sa.func.coalesce(connected, 0).label("connected"), dropped.label("first_disconnected_at"))
            .select_from(sessions.outerjoin(participants, participants.c.session_id == sessions.c.id))
            .where(sessions.c.host == host, sessions.c.status != fixed("ended"))
            .group_by(sessions.c.id, sessions.c.status, sessions.c.empty_since, sessions.c.started_at, sessions.c.last_seq)
        )
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def worker_sessions(self, since: float | None = None) -> dict[str, int]:
        """Unended sessions per media worker (``since``: only those started since then)."""
        q = sa.select(sessions.c.media_worker, sa.func.count()).where(sessions.c.status != fixed("ended")).group_by(sessions.c.media_worker)
        if since is not None:
            q = q.where(sessions.c.started_at >= since)
        async with self.engine.connect() as conn:
            return {w: n for w, n in await conn.execute(q) if w is not None}

    async def sessions_on_workers(self, workers: Iterable[str]) -> list[dict]:
        """Unended sessions whose media goes through these workers (id, host, media_worker)."""
        q = (sa.select(sessions.c.id, sessions.c.host, sessions.c.media_worker)
             .where(sessions.c.media_worker.in_(list(workers)), sessions.c.status != fixed("ended")).order_by(sessions.c.started_at))
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def node_states(self) -> dict[str, str]:
        async with self.engine.connect() as conn:
            return {n: st for n, st in await conn.execute(sa.select(media_nodes.c.node, media_nodes.c.state))}

    async def set_node_state(self, node: str, state: str) -> None:
        async with self.write() as conn:
            done = await conn.execute(media_nodes.update().where(media_nodes.c.node == node).values(state=state, updated_at=time.time()))
            if done.rowcount == 0:
                await conn.execute(media_nodes.insert().values(node=node, state=state, updated_at=time.time()))

    async def move_media(self, session_id: str, *, to: str, only_if: str | None) -> dict | None:
        """Point an unended session at another media worker if it is still on ``only_if`` (so
        hosts moving it at the same time agree on one). Returns the session as it stands."""
        async with self.write() as conn:
            cond = sessions.c.media_worker.is_(None) if only_if is None else sessions.c.media_worker == only_if
            await conn.execute(
                sessions.update().where(sessions.c.id == session_id, sessions.c.status != fixed("ended"), cond).values(media_worker=to)
            )
            row = (await conn.execute(sa.select(sessions).where(sessions.c.id == session_id))).mappings().first()
        return dict(row) if row else None

    async def host_loads(self) -> dict[str, int]:
        """Unended sessions per host."""
        q = sa.select(sessions.c.host, sa.func.count()).where(sessions.c.status != fixed("ended")).group_by(sessions.c.host)
        async with self.engine.connect() as conn:
            return {host: n for host, n in await conn.execute(q) if host is not None}

    async def unended_session_ids(self) -> list[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(sa.select(sessions.c.id).where(sessions.c.status != fixed("ended")))
            return [r[0] for r in rows]

    async def get_session(self, session_id: str, team_id: str | None = None) -> dict | None:
        q = _reads()["session"]
        if team_id is not None:
            q = q.where(sessions.c.team_id == team_id)
            async with self.engine.connect() as conn:
                row = (await conn.execute(q, {"id": session_id})).mappings().first()
                return dict(row) if row else None
        found = await self._rows(q, {"id": session_id})
        return found[0] if found else None

    async def list_sessions(
        self,
        team_id: str,
        *,
        status: Iterable[str] | None = None,
        room_id: str | None = None,
        q: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict]:
        counts = (
            sa.select(participants.c.session_id, sa.func.count().label("n"))
            .where(participants.c.state != "left")
            .group_by(participants.c.session_id)
            .subquery()
        )
        stmt = (
            sa.select(
                sessions,
                rooms.c.name.label("room_name"),
                rooms.c.encryption.label("room_encryption"),
                sa.func.coalesce(counts.c.n, 0).label("participant_count"),
            )
            .join(rooms, rooms.c.id == sessions.c.room_id)
            .outerjoin(counts, counts.c.session_id == sessions.c.id)
            .where(sessions.c.team_id == team_id)
        )
        if status:
            stmt = stmt.where(sessions.c.status.in_(list(status)))
        if room_id:
            stmt = stmt.where(sessions.c.room_id == room_id)
        if q:
            stmt = stmt.where(_matches(q, sessions.c.id, rooms.c.id, rooms.c.name, rooms.c.comment))
        stmt = stmt.order_by(sessions.c.started_at.desc(), sessions.c.id).limit(limit).offset(offset)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt)).mappings()]

    async def live_figures(self) -> dict:
        """Unended sessions by status, and connected participants, across all teams (for metrics)."""
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(sessions.c.status, sa.func.count()).where(sessions.c.status != fixed("ended")).group_by(sessions.c.status)
            )
            by_status = {status: n for status, n in rows}
            connected = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(participants.join(sessions, sessions.c.id == participants.c.session_id))
                    .where(participants.c.state == "connected", sessions.c.status != fixed("ended"))
                )
            ).scalar_one()
        return {"sessions": {s: by_status.get(s, 0) for s in ("live", "ending_soon")}, "participants": int(connected)}

    async def list_participants(self, session_id: str) -> list[dict]:
        return await self._rows(_reads()["participants"], {"session_id": session_id})

    async def get_participant(self, participant_id: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(participants).where(participants.c.id == participant_id))
            ).mappings().first()
            return dict(row) if row else None

    async def participant_events(self, participant_id: str) -> list[dict]:
        q = sa.select(events).where(events.c.participant_id == participant_id).order_by(events.c.seq)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def session_events(
        self, session_id: str, *, after_seq: int = 0, broadcast_only: bool = False, limit: int = 1000
    ) -> list[dict]:
        q = _reads()["broadcast_events" if broadcast_only else "events"]
        return await self._rows(q, {"session_id": session_id, "after_seq": after_seq, "limit": limit})

    async def apply(self, change: SessionChange) -> None:
        """Write one session operation's rows atomically.

        An operation that opens its session (``change.opens``) is refused with
        ``session_opened_elsewhere`` when the room has an unended session already (another join
        opened it first, or this one's earlier attempt did): its caller joins that one instead.
        That includes a refusal by the team's limit once the room's session counts in it.

        On SQLite the operations applied in one turn of the event loop (a host's burst of joins,
        each of its own session) are committed together, in one transaction: a commit costs more
        than the rows it writes (about 0.2 ms of WAL writing here). Each caller still gets its own
        outcome: if any of them is refused, the transaction is rolled back and each is applied
        on its own. (PostgreSQL: one transaction each, as its row locks could deadlock a group.)"""
        if not self.is_sqlite:
            return await self._apply_alone(change)
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._group.append((change, fut))
        if len(self._group) == 1:
            # (its first step comes after every callback ready now: the turn's other changes join it)
            self._tasks.add(asyncio.ensure_future(self._commit_group()))
        try:
            await fut
        except asyncio.CancelledError:
            if not fut.done() or fut.cancelled() or fut.exception() is not None:
                raise  # (not written)
            # Written, but its caller was cancelled on the way back: it must still learn that it
            # was (its memory follows the store); the cancellation comes at its next wait.
            asyncio.current_task().cancel()

    async def _commit_group(self) -> None:
        group, self._group = self._group, []
        try:
            if len(group) > 1:
                try:
                    async with self.write() as conn:
                        # (From here to the commit nothing waits: no caller is cancelled meanwhile.)
                        group = [(c, f) for c, f in group if not f.cancelled()]
                        for change, _ in group:
                            await self._apply_in(conn, change)
                except Exception:
                    # One of them is refused (or fails): each on its own, below, so that only its
                    # caller hears of it (one session's failure must not fail its neighbours).
                    pass
                else:
                    for _, f in group:
                        f.set_result(None)
                    return
            for change, f in group:
                if f.cancelled():
                    continue
                try:
                    await self._apply_alone(change)
                except Exception as e:
                    if not f.done():
                        f.set_exception(e)
                else:
                    if not f.done():
                        f.set_result(None)
        except BaseException as e:  # (the store closing, the loop stopping): nobody is left waiting
            for _, f in group:
                if not f.done():
                    f.set_exception(e if isinstance(e, Exception) else MediaserverError("unavailable", "the store is closing"))
            if not isinstance(e, Exception):
                raise
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _apply_alone(self, change: SessionChange) -> None:
        try:
            async with self.write() as conn:
                await self._apply_in(conn, change)
        except IntegrityError:
            if change.opens is None:
                raise
            raise _opened_elsewhere() from None
        except MediaserverError as e:
            if change.opens is None or e.code != "session_limit_reached":
                raise
            opened = await self.unended_session(change.opens["room_id"])
            if opened is None or opened["status"] != "live":
                raise
            raise _opened_elsewhere() from None

    async def _apply_in(self, conn: Any, change: SessionChange) -> None:
        if change.live_limit is not None:
            if change.opens is not None:
                team_id = change.opens["team_id"]
            else:
                found = await _run(conn, _team_of_session(), {"id": change.session_id})
                team_id = found[0][0] if found else ""
            await self._check_live_limit(conn, team_id, change.live_limit, change.session_id)
        # (Statements built once, their columns set by the parameters: a statement built per
        # call costs more than SQLite takes to run it.)
        if change.opens is not None:
            row = {**change.opens, **change.session}
            await _run(conn, _insert(sessions), {c.name: row[c.name] for c in sessions.c if c.name in row})
        elif change.session:
            await _run(conn, _update_by_id(sessions), {**change.session, "_id": change.session_id})
        if change.new_participants:
            await _run(conn, _insert(participants), change.new_participants)
        for pid, values in change.participant_updates:
            await _run(conn, _update_by_id(participants), {**values, "_id": pid})
        if change.events:
            await _run(conn, _insert(events), change.events)
        if change.chat:
            await _run(conn, _insert(chat_messages), change.chat)
        if change.new_questions:
            await _run(conn, _insert(questions), change.new_questions)
        for qid, values in change.question_updates:
            await _run(conn, _update_by_id(questions), {**values, "_id": qid})
        if change.votes:
            await _run(conn, _insert(question_votes), change.votes)

    # Chat and Q&A ---------------------------------------------------------------------

    async def chat_history(self, session_id: str, rooms_: Iterable[str | None], limit: int = 100) -> list[dict]:
        """The latest ``limit`` messages said in any of these rooms (None: the main room), oldest first."""
        rooms_ = list(rooms_)
        named = [r for r in rooms_ if r is not None]
        params = {"session_id": session_id, "limit": limit, **{f"room{i}": r for i, r in enumerate(named)}}
        return list(reversed(await self._rows(_chat_history(len(named), None in rooms_), params)))

    async def session_chat(self, session_id: str) -> list[dict]:
        q = sa.select(chat_messages).where(chat_messages.c.session_id == session_id).order_by(chat_messages.c.seq)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def session_questions(self, session_id: str) -> list[dict]:
        """A session's questions with who voted for each."""
        qs = await self._rows(_reads()["questions"], {"session_id": session_id})
        voters: dict[str, list[str]] = {}
        for vote in await self._rows(_reads()["votes"], {"session_id": session_id}):
            voters.setdefault(vote["question_id"], []).append(vote["participant_id"])
        for q in qs:
            q["voters"] = voters.get(q["id"], [])
        return qs

    async def latest_quality(self, session_id: str) -> dict[str, dict]:
        """Each participant's latest "quality" record (what its receiver reports said)."""
        q = (
            sa.select(events.c.participant_id, events.c.data, events.c.seq)
            .where(events.c.session_id == session_id, events.c.type == "quality")
            .order_by(events.c.seq)
        )
        async with self.engine.connect() as conn:
            return {pid: data for pid, data, _ in await conn.execute(q)}

    async def participant_counts(self, session_id: str) -> dict[str, dict[str, int]]:
        """Per participant: chat messages sent, questions asked, upvotes given."""
        out: dict[str, dict[str, int]] = {}
        async with self.engine.connect() as conn:
            for key, stmt in (
                ("chat_messages", sa.select(chat_messages.c.participant_id, sa.func.count())
                    .where(chat_messages.c.session_id == session_id).group_by(chat_messages.c.participant_id)),
                ("questions", sa.select(questions.c.participant_id, sa.func.count())
                    .where(questions.c.session_id == session_id).group_by(questions.c.participant_id)),
                ("upvotes", sa.select(question_votes.c.participant_id, sa.func.count())
                    .join(questions, questions.c.id == question_votes.c.question_id)
                    .where(questions.c.session_id == session_id).group_by(question_votes.c.participant_id)),
            ):
                for pid, n in await conn.execute(stmt):
                    out.setdefault(pid, {"chat_messages": 0, "questions": 0, "upvotes": 0})[key] = n
        return out


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own BEGIN is deferred and
    # comes only before the first write, so reads before it ran outside any transaction).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.close()


def _sqlite_begin(conn: Any) -> None:
    if not conn.get_execution_options().get(WRITE_OPTION):
        conn.exec_driver_sql("BEGIN")
        return
    # A held write lock fails at once, and InLoopEngine.begin waits for it on the event loop
    # (see mediaserver.store.inloop) instead of in SQLite, which would stop the loop.
    raw = conn.connection.dbapi_connection
    raw.execute("PRAGMA busy_timeout=0")
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

