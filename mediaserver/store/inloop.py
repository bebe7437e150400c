"""SQLite used from the event loop's own thread, behind the async engine's interface.

Through SQLAlchemy's async engine every SQLite statement hops to a worker thread and back
(aiosqlite), about 1 ms of CPU for a statement that takes microseconds in SQLite itself. Here
statements run in the calling thread instead: in WAL mode a read never waits for a writer, and
a write transaction holds the database's lock for well under a millisecond, because nothing in
a transaction's body yields to the loop (each ``await conn.execute`` completes at once), so no
other task runs in the middle of one. PostgreSQL keeps the async engine (asyncpg).
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator, Callable

import sqlalchemy as sa


class InLoopConnection:
    """The async connection methods the store uses, over a sync connection."""

    def __init__(self, conn: sa.Connection):
        self.sync_connection = conn

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.sync_connection.execute(*args, **kwargs)

    async def exec_driver_sql(self, *args: Any, **kwargs: Any) -> Any:
        return self.sync_connection.exec_driver_sql(*args, **kwargs)

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.sync_connection, *args, **kwargs)


class InLoopEngine:
    def __init__(self, engine: sa.Engine):
        self.sync_engine = engine

    @contextlib.asynccontextmanager
    async def connect(self) -> AsyncIterator[InLoopConnection]:
        with self.sync_engine.connect() as conn:
            yield InLoopConnection(conn)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[InLoopConnection]:
        with self.sync_engine.begin() as conn:
            yield InLoopConnection(conn)

    def execution_options(self, **options: Any) -> "InLoopEngine":
        return InLoopEngine(self.sync_engine.execution_options(**options))

    async def dispose(self) -> None:
        self.sync_engine.dispose()
