"""A session host: one process owning many sessions (and their breakout rooms), without Ray.

Each session is a ``SessionUnit`` with its own locks and its own failures: a call that fails
unexpectedly fails that call, and the unit is dropped and rebuilt from the store on its next
call (its participants start media over); the units beside it never notice. The host runs the
timers of every unit it holds, puts to sleep the sessions nobody is connected to (they keep only
their rows in the store, and wake when someone comes back or a timer is due), and watches the
media workers its sessions use: a worker's death is seen at once (a call to it that never
returns fails) and every session on it is told to start media over.

On start (and when restarted after a crash) the host finds the sessions placed on it in the
store: those with participants connected are loaded at once (their media starts over), the
others sleep until a call or a timer wakes them.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from typing import Any, Callable, Protocol

from mediaserver.control import archive
from mediaserver.control.media import Worker
from mediaserver.control.unit import SessionUnit
from mediaserver.errors import MediaserverError
from mediaserver.store import Store

log = logging.getLogger(__name__)

ENDED_LINGER = 10.0  # an ended unit stays this long, so long-polls under way see the end
RECONCILE_SECONDS = 5.0  # how often the host looks in the store for sessions placed on it
SUCCESSOR_WAIT = 2.0  # a dead worker's successor normally listens within a second; longer, its node may be gone
UNIT_METHODS = {
    "join", "resume", "ready", "publish", "subscribe_answer", "set_subscribed", "set_video_quality", "set_muted", "publisher_video", "disconnect", "leave",
    "set_role", "end", "wait_events", "start_session", "request_stage", "cancel_stage_request",
    "answer_stage_request", "leave_stage", "remove_from_stage", "remove", "peer_publish", "signal", "client_quality", "direct_failed", "chat", "chat_history", "ask", "upvote",
    "settle_question", "questions", "breakouts", "breakout_info", "start_archive", "stop_archive",
}


RELEASE_AFTER = 50  # sessions put to sleep in one tick, after which freed memory goes back to the OS


def release_memory() -> None:
    """Hand memory freed by sleeping sessions back to the operating system (glibc keeps it
    otherwise, and the process would stay as large as its busiest moment)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


class MediaPlaces(Protocol):
    """Where a host's sessions find their media workers (the cluster, for the Ray shell)."""

    def worker(self, name: str) -> Worker: ...  # the client of a media worker, by name
    async def usable(self, name: str) -> bool: ...  # it exists and its node is up (and not draining)
    async def place(self, session_id: str, current: str | None, avoid: str | None, *, write: bool = True) -> str: ...
    # ^ a media worker for a session whose worker is unusable, or, ``avoid``, on another node
    # than the one it is on (written to the store unless ``write`` is false, for a session its
    # first join has yet to write; the name it stands on is returned)
    async def extra(self, session_id: str, using: list[str]) -> str: ...  # one more worker for its receivers
    def leg_keys(self, a: str, b: str) -> tuple[str, str]: ...  # the keys of the leg from worker a to b
    def recorder(self, worker: str) -> Any: ...  # the recorder on a media worker's node (archives)


def brand_new(session: dict, room: dict, slot: dict | None, *, unwritten: bool = False) -> dict:
    """What the creator of a session hands its host with the first call (``SessionHost.call``'s
    ``new``): the row it inserted (or, ``unwritten``, the row for the first join to insert), as
    ``Store.get_session`` would read it, the room and the room's event slot as it read them just
    before."""
    row = {**session, "room_name": room["name"], "room_encryption": room["encryption"]}
    return {"session": row, "room": room, "slot": slot, "unwritten": unwritten}


class SessionHost:
    def __init__(
        self, name: str, store: Store, cfg: dict, places: MediaPlaces, *, clock: Callable[[], float] = time.time,
    ):
        self.name = name
        self.store = store
        self.cfg = cfg
        self.places = places
        self.clock = clock
        self.units: dict[str, SessionUnit] = {}
        self.asleep: dict[str, float | None] = {}  # session -> when its timers are due (None: none)
        self._released: set[str] = set()  # asleep, their media released by this host (``_sleep``)
        self._worker_of: dict[str, str] = {}  # session -> its media worker
        self._loading: dict[str, asyncio.Future] = {}
        self._ended_at: dict[str, float] = {}
        self._watched: set[str] = set()
        self._tasks: list[asyncio.Task] = []
        self._started: asyncio.Task | None = None
        self._quality_at = 0.0
        self.faults = 0  # units dropped after an unexpected failure

    # Starting ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Take on the sessions placed here and start the timers (once; later calls wait for it)."""
        if self._started is None or (self._started.done() and self._started.exception() is not None):
            self._started = asyncio.ensure_future(self._start())  # (a failed start is tried again)
        await asyncio.shield(self._started)

    @property
    def started(self) -> bool:
        return self._started is not None and self._started.done() and self._started.exception() is None

    async def _start(self) -> None:
        await self._reconcile()
        self._tasks.append(asyncio.ensure_future(self._run()))

    async def _reconcile(self) -> None:
        """Sessions placed here that this host does not hold yet: the ones with someone connected
        (or nobody ever in) are loaded now; the rest sleep until their timers are due. And
        archives of its sessions that were stopped but never finished (the host finishing them
        died) are finished."""
        await self._finish_orphaned_archives()
        for row in await self.store.host_sessions(self.name):
            sid = row["id"]
            if sid in self.units or sid in self._loading or sid in self.asleep:
                continue
            if row["connected"] or row["last_seq"] == 0:
                asyncio.ensure_future(self._load_quietly(sid))
            else:
                due = [t + self.cfg["grace_seconds"] for t in (row["empty_since"], row["first_disconnected_at"]) if t is not None]
                self.asleep[sid] = min(due) if due else None

    async def _finish_orphaned_archives(self) -> None:
        for row in await self.store.unfinished_archives(self.name):
            if row["id"] not in archive.FINISHING:
                archive.FINISHING.add(row["id"])
                self._tasks.append(asyncio.ensure_future(self._finish_archive(row)))
        self._tasks = [t for t in self._tasks if not t.done()]

    async def _finish_archive(self, row: dict) -> None:
        """Finish an archive whose finisher died: its recorder stops it if it still records it,
        else reads what it wrote (segments a dead recorder left open included); then the manifest
        and the composed file, as ``Archiver.stop`` would have. A failure is tried again at the
        next look."""
        try:
            recorder = self.places.recorder(row["media_worker"])
            result = await recorder.stop_archive(row["id"])
            done = await archive.finish(self.store, row, result, recorder)
            log.info("archive %s, left unfinished, is %s", row["id"], done["status"] if done else "finished elsewhere")
        except Exception as e:
            log.warning("archive %s not finished yet (%r); trying again", row["id"], e)
        finally:
            archive.FINISHING.discard(row["id"])

    async def _load_quietly(self, sid: str) -> None:
        try:
            await self._unit(sid)
        except Exception as e:  # it is tried again on its next call or reconcile
            log.warning("session %s not loaded: %s", sid, e)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # Calls --------------------------------------------------------------------------------

    async def call(self, session_id: str, method: str, *args: Any, new: dict | None = None) -> Any:
        """Run one operation of a session's unit, loading (or waking) the unit first.

        ``new``: the caller has just created the session, and this is what it wrote and read
        (``session``, ``room``, ``slot``): a unit not loaded yet starts from it instead of
        reading the store, since a session nobody has joined has nothing else to read. With
        ``unwritten`` the caller only chose the session's id and place: its first join writes it."""
        if method not in UNIT_METHODS:
            raise MediaserverError("invalid_request", f"no session operation {method!r}")
        unit = await self._unit(session_id, new)
        unit.calls += 1
        try:
            result = getattr(unit, method)(*args)
            return await result if asyncio.iscoroutine(result) else result
        except MediaserverError:
            if unit.core.unwritten and self.units.get(session_id) is unit:
                # Its first join did not open it (another opened the room's session, or the team is
                # at its limit): there is no such session, so no unit either (a call still waiting
                # on it writes nothing: it is tried again).
                self._let_go(session_id, unit)
                self._worker_of.pop(session_id, None)
            raise
        except Exception:
            log.exception("session %s failed on %s; it is rebuilt from the store", session_id, method)
            self._drop_broken(session_id, unit)
            raise MediaserverError("internal", f"the session failed on {method}; try again") from None
        finally:
            unit.calls -= 1

    async def _unit(self, sid: str, new: dict | None = None) -> SessionUnit:
        unit = self.units.get(sid)
        if unit is not None:
            return unit
        task = self._loading.get(sid)
        if task is None and new is not None and new.get("unwritten"):
            # Placed a moment ago and not written yet: nothing of it exists anywhere to load, or to
            # leave half-loaded if its caller is cancelled, so it loads in its caller (a task of its
            # own waits two turns of the event loop, behind a whole burst's other calls).
            loading = self._loading[sid] = asyncio.get_running_loop().create_future()
            try:
                unit = await self._load(sid, new)
            except BaseException as e:
                loading.set_exception(MediaserverError("unavailable", f"session {sid} was not loaded ({type(e).__name__}); retry"))
                loading.exception()  # (nobody else may be waiting: retrieved)
                raise
            else:
                loading.set_result(unit)
            finally:
                self._loading.pop(sid, None)
            return unit
        if task is None:
            task = self._loading[sid] = asyncio.ensure_future(self._load(sid, new))
            task.add_done_callback(lambda _t, sid=sid: self._loading.pop(sid, None))
        return await asyncio.shield(task)

    async def _load(self, sid: str, new: dict | None = None) -> SessionUnit:
        if new and new["session"]["id"] != sid:
            new = None  # (another session's: not to be trusted for this one)
        row = new["session"] if new else await self.store.get_session(sid)
        if row is None:
            raise MediaserverError("session_not_found", f"no session {sid}")
        worker = row.get("media_worker")
        if row["status"] != "ended" and (worker is None or not await self.places.usable(worker)):
            # its worker's node is gone (or it has none yet)
            worker = await self.places.place(sid, worker, None, write=not (new and new.get("unwritten")))
            row = {**row, "media_worker": worker}  # (as the store now has it)
        unit = SessionUnit(
            self.store, sid, self.places.worker(worker), grace=self.cfg["grace_seconds"], stale=self.cfg["stale_seconds"],
            live_limit=self.cfg.get("default_max_live_sessions"), quality_seconds=self.cfg.get("quality_seconds", 10.0),
            clock=self.clock, home=worker, receivers_per_worker=self.cfg.get("session_receivers_per_worker"),
            more=lambda using, sid=sid: self._more(sid, using), leg_keys=self.places.leg_keys,
            relayed_max=self.cfg.get("relayed_max_participants", 4), auto_back_to_direct=self.cfg.get("auto_back_to_direct", False),
            recorder=getattr(self.places, "recorder", None), archive_max_seconds=self.cfg.get("archive_max_seconds", 4 * 3600),
        )
        await unit.load(row, new, released=sid in self._released)
        self.asleep.pop(sid, None)
        self._released.discard(sid)
        self.units[sid] = unit
        self._worker_of[sid] = worker
        if not unit.ended:
            self._watch(worker)
        return unit

    async def _more(self, sid: str, using: list[str]) -> tuple[str, Worker]:
        """One more worker for a session whose receivers fill the ones it has."""
        name = await self.places.extra(sid, using)
        self._watch(name)
        return name, self.places.worker(name)

    def _drop_broken(self, sid: str, unit: SessionUnit) -> None:
        """Forget a unit that failed unexpectedly; the next call rebuilds it from the store (its
        participants' media starts over), and calls still waiting on it are let go."""
        self.faults += 1
        unit.broken = True
        self._let_go(sid, unit)
        asyncio.ensure_future(unit.core.notify())

    def _let_go(self, sid: str, unit: SessionUnit) -> None:
        """Forget a unit; calls still under way on it write nothing now (its successor does)."""
        if self.units.get(sid) is unit:
            del self.units[sid]
        unit.archives.close()
        unit.core.retired = True

    # Timers --------------------------------------------------------------------------------

    async def _run(self) -> None:
        reconciled = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg["tick_seconds"])
            try:
                await self.tick()
                if time.monotonic() - reconciled >= RECONCILE_SECONDS:
                    reconciled = time.monotonic()
                    await self._reconcile()
            except Exception:
                log.exception("host %s: tick failed", self.name)

    async def tick(self) -> None:
        """Every unit's timers, their media's states and quality, sleep and waking."""
        now = self.clock()
        units = [(sid, u) for sid, u in self.units.items() if u.next_timer() <= now or u.core.departed]
        results = await asyncio.gather(*(u.tick() for _, u in units), return_exceptions=True)
        for (sid, unit), res in zip(units, results):
            if isinstance(res, Exception) and not isinstance(res, MediaserverError):
                log.error("session %s: timers failed (%r); it is rebuilt from the store", sid, res)
                self._drop_broken(sid, unit)
        await self._media_reports()
        now, mono = self.clock(), time.monotonic()
        slept = 0
        for sid, unit in list(self.units.items()):
            if unit.ended:
                first = self._ended_at.setdefault(sid, mono)
                if mono - first >= ENDED_LINGER and unit.calls == 0:
                    del self.units[sid]
                    self._ended_at.pop(sid, None)
                    self._worker_of.pop(sid, None)
            elif unit.calls == 0 and unit.connected() == 0 and (unit.core.participants or unit.core.last_seq):
                await self._sleep(sid, unit)  # (a session nobody has joined yet stays: its own timer ends it)
                slept += 1
        if slept >= RELEASE_AFTER:
            release_memory()
        for sid, due in list(self.asleep.items()):
            if due is not None and due <= now:
                await self._load_quietly(sid)  # its tick applies the timers

    async def _sleep(self, sid: str, unit: SessionUnit) -> None:
        """Nobody is connected: let go of its media and its memory; the store keeps the rest."""
        await unit.release_media()
        if unit.calls or unit.connected():  # someone came back meanwhile
            return
        self.units.pop(sid, None)
        self._worker_of.pop(sid, None)
        self.asleep[sid] = unit.wake_at()
        self._released.add(sid)

    async def _media_reports(self) -> None:
        """Connection states and adaptation events every tick, quality every ``quality_seconds``:
        one call per worker."""
        by_worker: dict[str, list[SessionUnit]] = {}
        for sid, unit in self.units.items():
            if not unit.ended and unit.has_media():
                for name in unit.media.worker_names():
                    by_worker.setdefault(name, []).append(unit)
        now = time.monotonic()
        quality_due = now - self._quality_at >= self.cfg.get("quality_seconds", 10.0)
        if quality_due:
            self._quality_at = now
        for name, units in by_worker.items():
            worker = self.places.worker(name)
            tids = [tid for u in units for tid in u.transports(name)]
            try:
                got = await worker.reports(tids, quality_due)
            except MediaserverError:
                continue  # restarting: the watch deals with it
            states, adapted, quality = got["states"], got["events"], got["quality"]
            for u in units:
                mine = u.transports(name)
                await u.record_states({t: s for t, s in states.items() if t in mine})
                if adapted:
                    # (a subscriber's video paused or back; of a publisher, that it speaks or stopped)
                    await u.record_adaptation([e for e in adapted if e["publisher" if e["type"] == "speaking" else "subscriber"] in mine])
                if quality_due:
                    await u.record_quality({t: q for t, q in quality.items() if t in mine}, self.clock())

    # Media workers ---------------------------------------------------------------------------

    def _watch(self, name: str) -> None:
        if name not in self._watched:
            self._watched.add(name)
            self._tasks.append(asyncio.ensure_future(self._watch_worker(name)))

    async def _watch_worker(self, name: str) -> None:
        """A call to the worker that returns only if it dies: then every session on it starts
        its media over, at once (on its successor; on a worker elsewhere if its node is gone),
        and the watch goes on with the successor."""
        worker = self.places.worker(name)
        while any(name in u.media.worker_names() for u in self.units.values()) or name in self._worker_of.values():
            try:
                await worker.watch()
            except MediaserverError as e:
                if e.code != "unavailable":
                    await asyncio.sleep(1.0)
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(1.0)
                continue
            log.warning("host %s: media worker %s is gone; its sessions start media over", self.name, name)
            # Sessions that sent only some receivers there: those start over, the rest goes on.
            await asyncio.gather(*(u.lose_worker(name, "the media server restarted") for sid, u in list(self.units.items())
                                   if self._worker_of.get(sid) != name and name in u.media.worker_names()),
                                 return_exceptions=True)
            while True:
                sids = [sid for sid, w in self._worker_of.items() if w == name]
                if not await self.places.usable(name):  # its node is gone: the sessions move to workers that are not
                    await asyncio.gather(*(self.move_media(s, "the media server's node went away") for s in sids),
                                         return_exceptions=True)
                    break
                try:
                    # Participants are told once the worker listens again: what they send before would be lost.
                    await asyncio.wait_for(self._wait_for_worker(worker), SUCCESSOR_WAIT)
                except asyncio.TimeoutError:
                    continue  # no successor yet: is its node still there?
                await asyncio.gather(*(self.units[s].media_lost("the media server restarted") for s in sids if s in self.units),
                                     return_exceptions=True)
                break
        self._watched.discard(name)

    async def move_media(self, session_id: str, reason: str = "the media server moved", avoid: str | None = None) -> str:
        """Put a session's media on another worker (its own is gone, or its node is draining:
        ``avoid``) and have its participants start media over there."""
        unit = await self._unit(session_id)
        current = self._worker_of.get(session_id)
        target = await self.places.place(session_id, current, avoid)
        if target != current:
            await unit.use_worker(target, self.places.worker(target), reason)
            self._worker_of[session_id] = target
            self._watch(target)
        return target

    @staticmethod
    async def _wait_for_worker(worker: Worker) -> None:
        """Until the worker (its successor, after a death) listens. A call to a worker being
        created waits for it, so retries only bridge the moment the dead one is still named."""
        delay = 0.02
        while True:
            try:
                await worker.start()
                return
            except MediaserverError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)

    # Figures ------------------------------------------------------------------------------------

    def summary(self) -> dict:
        return {
            "name": self.name, "units": len(self.units), "asleep": len(self.asleep), "faults": self.faults,
            "participants": sum(len(u.core.participants) for u in self.units.values()),
        }
