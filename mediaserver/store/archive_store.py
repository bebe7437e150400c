"""Archives in the store. The one-recording-per-session rule is a partial unique index
(``ux_archives_one_recording_per_session``), and every change of status is a conditional
update on the status it comes from, so two moderators starting or stopping at the same
instant leave one archive, stopped once."""

from __future__ import annotations

import functools
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from mediaserver.errors import MediaserverError
from mediaserver.ids import new_id
from mediaserver.store.schema import archives, fixed, sessions


@functools.cache
def _recording() -> Any:
    """``recording_archive``'s read, built once (a session's wake reads it)."""
    return sa.select(archives).where(archives.c.session_id == sa.bindparam("session_id"), archives.c.status == fixed("recording"))


class ArchiveStore:
    engine: Any
    _rows: Any  # (Store's: a statement built once, run on SQLite's cursor there)

    async def create_archive(self, session: dict, name: str, output: str, started_by: str | None,
                             now: float | None = None) -> dict:
        now = time.time() if now is None else now
        row = {
            "id": new_id("arc"), "team_id": session["team_id"], "session_id": session["id"], "room_id": session["room_id"],
            "name": name, "output": output, "status": "recording", "started_at": now, "started_by": started_by,
            "files": [], "size": 0, "updated_at": now,
        }
        try:
            async with self.write() as conn:
                await conn.execute(archives.insert().values(**row))
        except IntegrityError:
            raise MediaserverError(
                "archive_already_recording", "this session is being archived already: stop that archive first"
            ) from None
        return row

    async def finish_archive(self, archive_id: str, *, frm: str, to: str, now: float | None = None, **fields: Any) -> dict | None:
        """Move an archive from status ``frm`` to ``to`` (with ``fields``); None if it was not
        in ``frm`` (someone else moved it first)."""
        async with self.write() as conn:
            res = await conn.execute(
                archives.update().where(archives.c.id == archive_id, archives.c.status == fixed(frm))
                .values(status=to, updated_at=time.time() if now is None else now, **fields)
            )
        return await self.get_archive(archive_id) if res.rowcount else None

    async def unfinished_archives(self, host: str) -> list[dict]:
        """Stopped archives not finished yet (``processing``) of the sessions placed on ``host``,
        each with its session's media worker (``media_worker``: where its recorder is)."""
        q = (
            sa.select(archives, sessions.c.media_worker)
            .select_from(archives.join(sessions, sessions.c.id == archives.c.session_id))
            .where(sessions.c.host == host, archives.c.status == fixed("processing"))
        )
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def get_archive(self, archive_id: str, team_id: str | None = None) -> dict | None:
        q = sa.select(archives).where(archives.c.id == archive_id)
        if team_id is not None:
            q = q.where(archives.c.team_id == team_id)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).mappings().first()
        return dict(row) if row else None

    async def recording_archive(self, session_id: str) -> dict | None:
        """The session's archive being recorded, if any (read each time a session wakes)."""
        rows = await self._rows(_recording(), {"session_id": session_id})
        return rows[0] if rows else None

    async def list_archives(
        self, team_id: str, *, session_id: str | None = None, room_id: str | None = None, status: str | None = None,
        limit: int = 100,
    ) -> list[dict]:
        q = sa.select(archives).where(archives.c.team_id == team_id)
        for col, value in ((archives.c.session_id, session_id), (archives.c.room_id, room_id), (archives.c.status, status)):
            if value is not None:
                q = q.where(col == value)
        q = q.order_by(archives.c.started_at.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def delete_archive(self, archive_id: str, team_id: str) -> dict:
        """Forget a finished archive (its files are the caller's to remove)."""
        async with self.write() as conn:
            res = await conn.execute(
                archives.delete().where(archives.c.id == archive_id, archives.c.team_id == team_id,
                                        archives.c.status.in_(("ready", "failed")))
            )
        if not res.rowcount:
            row = await self.get_archive(archive_id, team_id)
            if row is None:
                raise MediaserverError("archive_not_found", f"no archive {archive_id}")
            raise MediaserverError("archive_in_progress", f"archive {archive_id} is {row['status']}: stop it and wait until it is ready")
        return {"id": archive_id, "deleted": True}
