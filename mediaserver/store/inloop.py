"""SQLite used from the event loop's own thread, behind the async engine's interface.

Through SQLAlchemy's async engine every SQLite statement hops to a worker thread and back
(aiosqlite), about 1 ms of CPU for a statement that takes microseconds in SQLite itself. Here
statements run in the calling thread instead: in WAL mode a read never waits for a writer, and
a write transaction holds the database's lock for well under a millisecond, because nothing in
a transaction's body yields to the loop (each ``await conn.execute`` completes at once), so no
other task runs in the middle of one. PostgreSQL keeps the async engine (asyncpg).

Several processes share the file (gateways, session hosts), and SQLite has one write lock: a
write transaction that finds it held must wait, and a wait inside SQLite (its busy handler)
would stop this thread's event loop with it, every other connection of the process waiting
too. So a write transaction's ``BEGIN IMMEDIATE`` does not wait in SQLite (the store sets the
busy timeout to 0 for it): the lock being held, it fails at once, and ``begin`` sleeps on the
event loop and tries again (from 0.5 ms, doubling up to 20 ms, for up to 30 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any, AsyncIterator, Callable, NamedTuple

import sqlalchemy as sa

WAIT_FIRST, WAIT_MAX, WAIT_TOTAL = 0.0005, 0.02, 30.0  # seconds: a held write lock is tried again after...


class InLoopConnection:
    """The async connection methods the store uses, over a sync connection."""

    def __init__(self, conn: sa.Connection, engine: "InLoopEngine"):
        self.sync_connection = conn
        self._engine = engine

    def run(self, stmt: Any, params: dict[str, Any] | list[dict[str, Any]]) -> list[tuple] | None:
        """Run a statement built once (it keys a cache) in this connection's transaction, on
        SQLite's cursor: SQLAlchemy compiles it and converts the values (its types' bind
        processors) once per statement and set of columns given. For a session host's writes
        (a join: a count, three INSERTs), SQLAlchemy's execution layers cost 8-10 times what
        SQLite takes. ``params``: one row, or several (``executemany``). A SELECT's rows as
        they come (no result processing: counts and ids); None for the others. A database
        error is SQLAlchemy's, as from ``execute`` (an ``IntegrityError`` is one)."""
        many = isinstance(params, list)
        first = params[0] if many else params
        if many and any(row.keys() != first.keys() for row in params):
            self.sync_connection.execute(stmt, params)  # (rows setting different columns: SQLAlchemy sorts it out)
            return None
        prepared = self._engine.prepared(stmt, first)
        raw = self.sync_connection.connection.driver_connection
        try:
            if many:
                raw.executemany(prepared.sql, [prepared.bind(row) for row in params])
                return None
            cursor = raw.execute(prepared.sql, prepared.bind(first))
            try:
                return cursor.fetchall() if cursor.description is not None else None
            finally:
                cursor.close()
        except sqlite3.Error as e:
            raise sa.exc.DBAPIError.instance(prepared.sql, params, e, sqlite3.Error) from e

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.sync_connection.execute(*args, **kwargs)

    async def exec_driver_sql(self, *args: Any, **kwargs: Any) -> Any:
        return self.sync_connection.exec_driver_sql(*args, **kwargs)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.sync_connection, *args, **kwargs)


class Prepared(NamedTuple):
    """A statement as SQLite gets it (values written in, ``literal_execute``, lists expanded),
    its parameters in order, the constants among them (an IN's values, a default OFFSET), and
    which need converting (position, SQLAlchemy's bind processor: JSON, floats)."""

    sql: str
    order: list[str]
    constants: dict[str, Any]
    processors: list[tuple[int, Any]]

    def bind(self, params: dict[str, Any]) -> list[Any]:
        out = [params[k] if k in params else self.constants[k] for k in self.order]
        for i, convert in self.processors:
            out[i] = convert(out[i])
        return out


def bind_processors(compiled: Any, dialect: sa.Dialect) -> dict[str, Any]:
    """A compiled statement's parameters that need converting on the way in (JSON, floats), by
    name, with their types' converters: what SQLAlchemy's execution context applies, through
    its public API (``SQLCompiler.binds``, ``TypeEngine.bind_processor``)."""
    out = {}
    for name, bind in compiled.binds.items():
        convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if convert is not None:
            out[name] = convert
    return out


class InLoopEngine:
    def __init__(self, engine: sa.Engine):
        self.sync_engine = engine
        self._reader: Any = None  # (``rows``'s own connection)
        self._prepared: dict[tuple[Any, tuple[str, ...]], Prepared] = {}
        self._columns: dict[Any, list[tuple[str, Any]]] = {}  # a SELECT's result keys and processors

    def prepared(self, stmt: Any, params: dict[str, Any]) -> Prepared:
        """``stmt`` compiled by SQLAlchemy for these parameters' names (an INSERT's or UPDATE's
        columns are the ones given), once per statement and set of names: ``stmt`` must be
        built once (it keys the cache)."""
        key = (stmt, tuple(params))
        prepared = self._prepared.get(key)
        if prepared is None:
            compiled = stmt.compile(dialect=self.sync_engine.dialect, column_keys=list(params))
            state = compiled.construct_expanded_state(params)
            order = list(state.positiontup or ())
            # (the expanded state lists only its expanded parameters' processors: the others are
            # the compiled statement's, as its execution context takes them)
            convert = {**bind_processors(compiled, self.sync_engine.dialect), **state.processors}
            prepared = self._prepared[key] = Prepared(
                state.statement, order, {k: state.parameters[k] for k in order if k not in params},
                [(i, convert[k]) for i, k in enumerate(order) if convert.get(k) is not None],
            )
        return prepared

    def rows(self, stmt: sa.Select, params: dict[str, Any]) -> list[dict[str, Any]]:
        """A SELECT's rows, by column key: SQLAlchemy compiles the statement and processes the
        values (its own types' processors), but the statement runs on SQLite's cursor. For the
        hottest reads (a join's lookup, a host loading a session), SQLAlchemy's execution layers
        cost 260 us where SQLite takes 20. ``stmt`` must be built once (it keys the cache)."""
        prepared = self.prepared(stmt, params)
        columns = self._columns.get(stmt)
        if columns is None:
            dialect = self.sync_engine.dialect
            columns = self._columns[stmt] = [
                (str(c.key), c.type.dialect_impl(dialect).result_processor(dialect, None)) for c in stmt.selected_columns
            ]
        if self._reader is None:
            # Its own pooled connection, kept (the pool's connect event set it up as every other).
            self._reader = self.sync_engine.raw_connection()
        cursor = self._reader.driver_connection.execute(prepared.sql, prepared.bind(params))
        try:
            found = cursor.fetchall()
        finally:
            cursor.close()  # (its statement done: no read snapshot held open, no checkpoint held up)
        return [
            {key: (convert(v) if convert is not None and v is not None else v) for (key, convert), v in zip(columns, row)}
            for row in found
        ]

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[InLoopConnection]:
        with self.sync_engine.connect() as conn:
            yield InLoopConnection(conn, self)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[InLoopConnection]:
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + WAIT_TOTAL, WAIT_FIRST
        with contextlib.ExitStack() as stack:
            while True:
                try:
                    conn = stack.enter_context(self.sync_engine.begin())
                    break
                except sa.exc.OperationalError as e:
                    if getattr(e.orig, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY or loop.time() + delay > deadline:
                        raise
                await asyncio.sleep(delay)  # (another process writes: the loop goes on meanwhile)
                delay = min(delay * 2, WAIT_MAX)
            yield InLoopConnection(conn, self)

    def execution_options(self, **options: Any) -> "InLoopEngine":
        return InLoopEngine(self.sync_engine.execution_options(**options))

    async def dispose(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.sync_engine.dispose()
