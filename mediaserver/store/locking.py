"""Row locks for rules checked inside a write transaction (see ``Store.write``)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa


async def lock_row(conn: Any, table: sa.Table, row_id: str) -> dict | None:
    """Read a row and lock it until the transaction ends. PostgreSQL: ``FOR UPDATE``, so two
    transactions checking a rule about this row's children run one after the other. SQLite has
    no row locks and SQLAlchemy leaves the clause out: there the write transaction holds the
    database's one write lock from ``BEGIN IMMEDIATE`` on."""
    row = (await conn.execute(sa.select(table).where(table.c.id == row_id).with_for_update())).mappings().first()
    return dict(row) if row else None
