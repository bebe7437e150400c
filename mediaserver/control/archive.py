"""A session's archives: the rules for starting and stopping them, always mode and the time limit.

A plain class each ``SessionUnit`` owns. The store holds the record (one archive recording per
session at most: the database checks it) and the recorder writes the files (see
``mediaserver/media/recorder.py``); the unit's ``MediaSession`` sends the tracks there.

- Only routed media reaches the server: a relayed room refuses (``archive_requires_routed``),
  an automatic one goes routed for good; end-to-end encrypted media cannot be read by the
  server (``archive_not_allowed_e2ee``).
- ``archive_mode: always``: an archive starts with the session's first participant and stops
  when the session ends; one that reaches ``max_seconds`` stops and, in always mode, the next
  begins at once.
- On stop the recorder finishes the track files and writes ``manifest.json``; with a composed
  output the archive stays ``processing`` until the composed MP4 is built, then is ``ready``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from mediaserver.control.media import Recording
from mediaserver.errors import MediaserverError
from mediaserver.media.legs import leg_keys

log = logging.getLogger(__name__)

OUTPUTS = ("individual", "composed", "both")
E2EE = ("session_key", "passphrase")


def public(row: dict) -> dict:
    """An archive as the API shows it."""
    keys = ("id", "session_id", "room_id", "name", "output", "status", "started_at", "started_by", "stopped_at",
            "stop_reason", "files", "size", "error")
    return {k: row.get(k) for k in keys}


FINISHING: set[str] = set()  # archives this process is finishing (a host that died left its own unfinished)


class Archiver:
    def __init__(self, unit: Any, recorder: Callable[[str], Any], *, max_seconds: float = 4 * 3600,
                 clock: Callable[[], float], keys: Callable[[str], tuple[str, str]] | None = None):
        self.unit = unit  # the SessionUnit (its core, media and media lock)
        self.recorder = recorder  # media worker name -> the recorder client on that worker's node
        # archive -> its leg's keys: derived, so an owner that restarts reaches the same recorder
        self.keys = keys or (lambda archive_id: leg_keys())
        self.max_seconds = max_seconds
        self.clock = clock
        self.current: dict | None = None  # the archive recording now (its row)
        self._finishing: set[asyncio.Task] = set()
        self._watcher: asyncio.Task | None = None  # waits on the recorder's death

    @property
    def core(self) -> Any:
        return self.unit.core

    def _recording(self, row: dict) -> Recording:
        core = self.core
        return Recording(row["id"], self.recorder(self.unit.media_home), self.keys(row["id"]),
                         name_of=lambda pid: (core.participants.get(pid) or {}).get("name") or "",
                         started_at=row["started_at"])

    # Supervision: a recorder that dies is replaced, and the archive records on in the new one.

    def _watch(self, archive_id: str) -> None:
        self.close()
        self._watcher = asyncio.ensure_future(self._watch_recorder(archive_id))

    def close(self) -> None:
        """Stop watching the recorder (the archive stopped, or its unit goes to sleep)."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    def _recording_now(self, archive_id: str) -> Recording | None:
        rec = getattr(self.unit.media, "recording", None)
        live = not self.unit.broken and not self.core.ended and self.current is not None and self.current["id"] == archive_id
        return rec if live and rec is not None and rec.archive_id == archive_id else None

    async def _watch_recorder(self, archive_id: str) -> None:
        delay = 0.1
        while (rec := self._recording_now(archive_id)) is not None:
            try:
                await rec.recorder.watch()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("archive %s: its recorder is gone (%r); recording on in a new one", archive_id, e)
            await asyncio.sleep(delay)
            try:
                async with self.unit._media_lock:
                    if self._recording_now(archive_id) is not None:
                        await self.unit.media.restart_recording()
                delay = 0.1
            except Exception as e:
                log.warning("archive %s: no recorder yet (%r)", archive_id, e)
                delay = min(delay * 2, 5.0)

    async def adopt(self) -> None:
        """On loading: an archive the store says is recording goes on (the recorder keeps its
        files; tracks published from now on start new segments), or stops if the session ended."""
        row = await self.core.store.recording_archive(self.unit.session_id)
        if row is None:
            return
        self.current = row
        if self.core.ended:
            await self.on_end()
            return
        try:
            async with self.unit._media_lock:
                await self.unit.media.record(self._recording(row))
        except Exception as e:
            log.warning("archive %s of %s not taken up again: %r", row["id"], self.unit.session_id, e)
            await self.stop(None, row["id"], reason="failed", error=f"the recorder was lost: {e}"[:500])
            return
        self._watch(row["id"])

    def refusal(self) -> MediaserverError | None:
        room = self.core.room
        if room.get("encryption") in E2EE:
            return MediaserverError(
                "archive_not_allowed_e2ee",
                "this room's media is end-to-end encrypted: the server cannot read it, so it cannot archive it",
            )
        if room.get("media_mode") == "relayed":
            return MediaserverError(
                "archive_requires_routed",
                "this room connects participants directly (relayed): only routed or auto rooms can be archived",
            )
        return None

    async def start(self, by: str | None, name: str | None, output: str) -> dict:
        core = self.core
        core.require_live()
        if by is not None:
            core._require_moderator(by)
        if output not in OUTPUTS:
            raise MediaserverError("invalid_request", f"output must be one of {', '.join(OUTPUTS)}")
        refusal = self.refusal()
        if refusal is not None:
            raise refusal
        if core.media_mode == "relayed":  # an auto room: media through the server from now on
            await core.go_routed("archive_started")
            await self.unit._sync_media_mode()
        name = (name or f"{core.room.get('name') or 'Session'} archive").strip()[:100]
        row = await core.store.create_archive(core.session, name, output, by, now=self.clock())
        try:
            async with self.unit._media_lock:
                await self.unit.media.record(self._recording(row))
        except Exception as e:
            log.warning("archive %s of %s did not start: %r", row["id"], self.unit.session_id, e)
            await core.store.finish_archive(row["id"], frm="recording", to="failed", stopped_at=self.clock(),
                                            stop_reason="failed", error=f"the recorder did not start: {e}"[:500])
            raise MediaserverError("unavailable", "the recorder could not start; try again") from None
        self.current = row
        self._watch(row["id"])
        await core.record(by, "archive_started", archive_id=row["id"], name=name, output=output)
        return public(row)

    async def stop(self, by: str | None, archive_id: str | None, *, reason: str, error: str | None = None) -> dict:
        core = self.core
        if by is not None:
            core._require_moderator(by)
        current = self.current or await core.store.recording_archive(self.unit.session_id)
        if current is None or (archive_id is not None and current["id"] != archive_id):
            row = await core.store.get_archive(archive_id) if archive_id else None
            if archive_id and (row is None or row["session_id"] != self.unit.session_id):
                raise MediaserverError("archive_not_found", f"no archive {archive_id} in this session")
            raise MediaserverError("archive_not_recording", "no archive of this session is recording now")
        FINISHING.add(current["id"])  # (before it reads processing: the host's sweep must leave it to us)
        try:
            row = await core.store.finish_archive(current["id"], frm="recording", to="processing",
                                                  stopped_at=self.clock(), stop_reason=reason, error=error)
            if row is None:
                raise MediaserverError("archive_not_recording", "this archive has stopped already")
            self.current = None
            self.close()
            async with self.unit._media_lock:
                media = self.unit.media
                recording = getattr(media, "recording", None)
                ours = recording is not None and recording.archive_id == row["id"]
                # (the recorder that has its files: the one it was sent to, else the one beside home)
                recorder = recording.recorder if ours else self.recorder(self.unit.media_home)
                try:
                    result = await media.stop_recording() if ours else await recorder.stop_archive(row["id"])
                except Exception as e:
                    result = {"segments": [], "skipped": [], "error": repr(e)}
            if not core.ended:
                await core.record(by, "archive_stopped", archive_id=row["id"], reason=reason)
        except BaseException:
            FINISHING.discard(current["id"])  # (not stopped here, or the host's sweep finishes it)
            raise
        task = asyncio.ensure_future(self._finish(row, result, recorder))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return public(row)

    async def _finish(self, row: dict, result: dict, recorder: Any) -> dict:
        try:
            done = await finish(self.core.store, row, result, recorder)
        finally:
            FINISHING.discard(row["id"])
        if done is not None and not self.core.ended:
            try:
                await self.core.record(None, "archive_ready" if done["status"] == "ready" else "archive_failed",
                                       visibility="log", archive_id=row["id"], size=done["size"])
            except MediaserverError:
                pass
        return done or row

    async def wait_finished(self) -> None:
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    # Always mode and the time limit -------------------------------------------------------------

    async def on_join(self) -> None:
        if self.core.room.get("archive_mode") == "always" and self.current is None and self.refusal() is None:
            try:
                await self.start(None, None, "both")
            except MediaserverError as e:
                if e.code != "archive_already_recording":  # (another join started it)
                    log.warning("always-mode archive of %s not started: %s", self.unit.session_id, e)

    async def on_end(self) -> None:
        if self.current is not None:
            try:
                await self.stop(None, self.current["id"], reason="session_ended")
            except MediaserverError:
                pass

    def due(self) -> float | None:
        return None if self.current is None else self.current["started_at"] + self.max_seconds

    async def tick(self, now: float) -> None:
        due = self.due()
        if due is not None and now >= due and not self.core.ended:
            await self.stop(None, self.current["id"], reason="max_duration")
            if self.core.room.get("archive_mode") == "always":
                await self.start(None, None, "both")


async def finish(store: Any, row: dict, result: dict, recorder: Any) -> dict | None:
    """Write the manifest of a stopped archive (``processing``), compose if asked, and mark it
    ready (or failed); its row then (None: someone else finished it first). A composed file
    that cannot be made fails an archive that asked only for it; with ``both`` the track
    files stay, ready, and ``error`` says why there is no composed one."""
    problems = [f"track {t['track_id']} not recorded: {t['error']}" for t in result.get("lost", [])]
    if result.get("error"):
        problems.append(f"the recorder did not finish: {result['error']}")
    try:
        manifest = {
            "archive_id": row["id"], "session_id": row["session_id"], "room_id": row["room_id"],
            "name": row["name"], "started_at": row["started_at"], "stopped_at": row["stopped_at"],
            "segments": result.get("segments", []), "not_recorded": result.get("skipped", []),
        }
        files = await recorder.write_manifest(row["id"], manifest)
        if row["output"] in ("composed", "both"):
            try:
                files = await recorder.compose(row["id"])
            except MediaserverError as e:
                if row["output"] == "composed":
                    raise
                problems.append(f"no composed file: {e.message}")
        if row["output"] == "composed":
            files = [f for f in files if f["kind"] != "track"]
        done = await store.finish_archive(row["id"], frm="processing", to="ready", files=files,
                                          size=sum(f["size"] for f in files),
                                          error="; ".join(problems)[:500] or row.get("error"))
    except Exception as e:
        log.warning("archive %s not finished: %r", row["id"], e)
        done = await store.finish_archive(row["id"], frm="processing", to="failed", error=str(e)[:500])
    return done
