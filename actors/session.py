"""SessionActor: one per live session, a shell over ``SessionCore``.

It also owns the session's BreakoutRoomActors: it creates them and retires
them when the session ends.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from actors import cluster, names
from actors.breakout import BreakoutRoomActor
from actors.media import MediaWorkerActor
from mediaserver.control.media import MediaSession, worker_index
from mediaserver.control.meeting import START_EARLY
from mediaserver.control.session import SessionCore
from mediaserver.errors import MediaserverError
from mediaserver.store import Store

QUALITY_EVERY = 10.0  # seconds between looks at each receiving participant's quality
QUALITY_REPEAT = 6  # an unchanged grade is logged again after this many looks

BREAKOUT_OPERATIONS = {
    "create_breakouts", "rename_breakout", "delete_breakout", "assign_breakout", "auto_assign_breakouts",
    "open_breakouts", "close_breakouts", "visit_breakout",
}


class RemoteWorker:
    """The ``mediaserver.control.media.Worker`` calls, made on a MediaWorkerActor."""

    def __init__(self, handle: Any):
        self._handle = handle

    def __getattr__(self, method: str) -> Any:
        async def call(*args: Any) -> Any:
            return await cluster.call(self._handle, method, *args)

        return call


class SessionActor:
    def __init__(self, session_id: str, cfg: dict):
        self.session_id = session_id
        self.cfg = cfg
        self.core = SessionCore(
            Store(cfg["db_url"]), session_id, grace=cfg["grace_seconds"], stale=cfg["stale_seconds"],
            live_limit=cfg["default_max_live_sessions"],
        )
        self.breakouts: dict[str, Any] = {}  # breakout id -> its actor
        self.media: MediaSession | None = None
        self._media_lock = asyncio.Lock()  # media operations change shared tables across awaits
        self._media_init_lock = asyncio.Lock()
        self._worker: Any = None
        self._incarnation: str | None = None
        self._states: dict[str, str] = {}  # transport -> the last connection state recorded
        self._quality_at = 0.0
        self._quality: dict[str, tuple[str, float]] = {}  # participant -> (grade, when) last logged

    async def ready(self) -> dict:
        await self.core.ensure_loaded()
        return self.core.snapshot()

    async def join(self, identity: str, name: str, role: str) -> dict:
        await self.core.ensure_loaded()
        participant = await self.core.join(identity=identity, name=name, role=role)
        await self._release_departed()
        media = await self._media()
        async with self._media_lock:
            await media.join(participant["id"])
        await self.core.notify()
        return await self._welcome(participant, media)

    async def _welcome(self, participant: dict, media: MediaSession) -> dict:
        """What a (re)joining participant needs: the session, who is here, tracks, chat, Q&A, rooms."""
        return {
            "participant": participant, **self.core.snapshot(), "tracks": media.track_list(),
            "chat": await self.core.chat_history(participant["id"]),
            "questions": self.core.question_list(),
            "breakouts": self.core.breakout_view(),
            "event": None if self.core.event is None else {
                **self.core.event, "started": bool(self.core.meeting.get("started")),
                "start_from": self.core.event["starts_at"] - START_EARLY,
            },
        }

    async def resume(self, participant_id: str) -> dict:
        await self.core.ensure_loaded()
        participant = await self.core.resume(participant_id)
        media = await self._media()
        async with self._media_lock:
            # The old peer connections went with the old connection: start media afresh
            # (the client publishes again; its subscriptions are offered again).
            gone = await media.restart(participant_id, "reconnected")
        await self._record_unpublished(participant_id, gone)
        await self.core.notify()
        return await self._welcome(participant, media)

    # Media -----------------------------------------------------------------------

    async def _media(self) -> MediaSession:
        # Under a lock: joins arrive concurrently, and two MediaSessions would split the session.
        async with self._media_init_lock:
            if self.media is None:
                index = worker_index(self.session_id, self.cfg["media_workers"])
                handle = cluster.get_or_create(MediaWorkerActor, names.media_worker(index), self.cfg, index)
                self._incarnation = (await cluster.call(handle, "start"))["incarnation"]
                self._worker = handle
                self.media = MediaSession(RemoteWorker(handle), room_of=self.core.room_of)
                restored = [pid for pid in self.core.restored if pid in self.core.participants]
                self.core.restored = []
                if restored:
                    await self._adopt_media(restored)
        return self.media

    async def _adopt_media(self, pids: list[str]) -> None:
        """A restarted actor knows the participants it loaded from the store but not their peer
        connections: close what the worker still has of them and have them start media over."""
        await cluster.call(self._worker, "close_participants", pids)
        async with self._media_lock:
            for pid in pids:
                await self.media.join(pid)
            self.media.reset("the session was restored after a fault")
        await self.core.notify()

    async def _check_worker(self) -> None:
        """If the media worker restarted, every transport went with it: start media over."""
        if self._worker is None or self.core.ended:
            return
        try:
            incarnation = (await cluster.call(self._worker, "start"))["incarnation"]
        except MediaserverError:
            return  # restarting right now; the next tick looks again
        if incarnation == self._incarnation:
            return
        self._incarnation = incarnation
        async with self._media_lock:
            gone = self.media.reset("the media server restarted")
        for t in gone:
            await self.core.record(t.participant_id, "track_unpublished", track_id=t.id, reason="media_reset")
        await self.core.notify()

    def _publisher(self, participant_id: str) -> dict:
        p = self.core.participants.get(participant_id)
        if p is None:
            raise MediaserverError("not_joined", "this participant is not in the session")
        return p

    async def publish(self, participant_id: str, offer: str) -> str:
        await self.core.ensure_loaded()
        self.core.require_live()
        p = self._publisher(participant_id)
        if p["role"] == "subscriber":
            raise MediaserverError(
                "publish_not_allowed", "your role (subscriber) may not publish: ask to enable mic & camera first"
            )
        if self.core.room.get("media_mode") == "relayed":
            raise MediaserverError("media_unavailable", "this room relays media peer to peer, which is not available yet")
        media = await self._media()
        async with self._media_lock:
            seated = await self.core.take_stage(participant_id)  # on screen: 4 speakers, 6 others at most
            try:
                answer, added, removed = await media.publish(participant_id, offer)
            except Exception:
                if seated:  # the publication failed: give the seat back
                    await self.core.leave_stage(participant_id)
                raise
        for t in added:
            await self.core.record(participant_id, "track_published", track_id=t.id, kind=t.kind, codec=t.codec["name"])
        await self._record_unpublished(participant_id, removed)
        await self.core.notify()
        return answer

    async def subscribe_answer(self, participant_id: str, answer: str) -> None:
        await self.core.ensure_loaded()
        self._publisher(participant_id)
        media = await self._media()
        async with self._media_lock:
            await media.subscribe_answer(participant_id, answer)
            tracks = [s.track_id for s in media.subscribers[participant_id].slots if s.track_id]
        await self.core.record(participant_id, "subscribed", visibility="log", track_ids=tracks)
        await self.core.notify()

    async def set_subscribed(self, participant_id: str, track_id: str, subscribed: bool) -> None:
        await self.core.ensure_loaded()
        self._publisher(participant_id)
        media = await self._media()
        async with self._media_lock:
            await media.set_subscribed(participant_id, track_id, subscribed)
        await self.core.record(
            participant_id, "resubscribed" if subscribed else "unsubscribed", visibility="log", track_id=track_id
        )
        await self.core.notify()

    async def set_muted(self, participant_id: str, track_id: str, muted: bool) -> None:
        await self.core.ensure_loaded()
        self._publisher(participant_id)
        media = await self._media()
        async with self._media_lock:
            await media.set_muted(participant_id, track_id, muted)
        await self.core.record(participant_id, "muted" if muted else "unmuted", track_id=track_id)

    async def _record_connection_states(self) -> None:
        """Put media connection changes (checking, connected, failed) in the participants' logs."""
        if self.media is None or self.core.ended:
            return
        owners = self.media.transports()
        if not owners:
            self._states.clear()
            return
        try:
            states = await cluster.call(self._worker, "transport_states", list(owners))
        except MediaserverError:
            return
        for tid, state in states.items():
            if self._states.get(tid) != state and tid in owners:
                pid, role = owners[tid]
                if pid in self.core.participants:
                    await self.core.record(pid, "connection_state", visibility="log", pc=role, state=state)
                self._states[tid] = state
        self._states = {tid: st for tid, st in self._states.items() if tid in owners}

    async def _record_quality(self) -> None:
        """Every ``quality_seconds`` (QUALITY_EVERY by default), each receiving participant's connection quality goes in its
        log (from its receiver reports): the session's record shows it, and the dashboard."""
        now = time.monotonic()
        if self.media is None or self.core.ended or now - self._quality_at < self.cfg.get("quality_seconds", QUALITY_EVERY):
            return
        self._quality_at = now
        owners = {tid: pid for tid, (pid, role) in self.media.transports().items() if role == "subscribe"}
        if not owners:
            return
        try:
            quality = await cluster.call(self._worker, "quality", list(owners))
        except MediaserverError:
            return
        for tid, q in quality.items():
            pid = owners.get(tid)
            if pid in self.core.participants:
                loss = round(q["fraction_lost"] * 100, 1)
                jitter_ms = round(q["jitter"] / 90, 1)  # video clock (90 kHz); audio's 48 kHz reads lower
                grade = "good" if loss < 2 and jitter_ms < 30 else "fair" if loss < 8 else "poor"
                last = self._quality.get(pid)
                # A change of grade is logged at once; an unchanged one every QUALITY_REPEAT intervals.
                if last and last[0] == grade and now - last[1] < QUALITY_REPEAT * self.cfg.get("quality_seconds", QUALITY_EVERY):
                    continue
                self._quality[pid] = (grade, now)
                await self.core.record(pid, "quality", visibility="log", loss_percent=loss, jitter_ms=jitter_ms, grade=grade)

    async def _record_unpublished(self, participant_id: str, tracks: list) -> None:
        if self.core.ended:
            return
        for t in tracks:
            await self.core.record(participant_id, "track_unpublished", track_id=t.id)

    async def _release_departed(self) -> None:
        """Free the media of participants who left (by leaving, grace timeout, replacement or the end)."""
        if not self.core.departed or self.media is None:
            self.core.departed.clear()
            return
        departed, self.core.departed = self.core.departed, []
        for pid in departed:
            async with self._media_lock:
                gone = await self.media.leave(pid)
            await self._record_unpublished(pid, gone)
        await self.core.notify()

    async def disconnect(self, participant_id: str, connection_id: str | None = None) -> None:
        await self.core.ensure_loaded()
        await self.core.disconnect(participant_id, connection_id)

    async def leave(self, participant_id: str, reason: str = "left") -> None:
        await self.core.ensure_loaded()
        await self.core.leave(participant_id, reason)
        await self._release_departed()

    async def set_role(self, by: str | None, participant_id: str, role: str) -> dict:
        await self.core.ensure_loaded()
        before = self.core.participants.get(participant_id, {}).get("on_stage")
        row = await self.core.set_role(by, participant_id, role)
        if before and not row.get("on_stage"):
            await self._unpublish(participant_id)
        return row

    # Stage, chat, Q&A (rules in mediaserver.control.meeting) -------------------------

    async def _unpublish(self, participant_id: str) -> None:
        """Off the stage: stop forwarding its media now; its client closes its publish connection."""
        if self.media is None:
            return
        async with self._media_lock:
            gone = await self.media.unpublish(participant_id)
        for t in gone:
            await self.core.record(participant_id, "track_unpublished", track_id=t.id, reason="off_stage")
        await self.core.notify()

    async def start_session(self, by: str) -> dict:
        await self.core.ensure_loaded()
        return await self.core.start_session(by)

    async def request_stage(self, participant_id: str) -> None:
        await self.core.ensure_loaded()
        await self.core.request_stage(participant_id)

    async def cancel_stage_request(self, participant_id: str) -> None:
        await self.core.ensure_loaded()
        await self.core.cancel_stage_request(participant_id)

    async def answer_stage_request(self, by: str, participant_id: str, approve: bool) -> None:
        await self.core.ensure_loaded()
        await self.core.answer_stage_request(by, participant_id, approve)

    async def leave_stage(self, participant_id: str) -> None:
        await self.core.ensure_loaded()
        await self.core.leave_stage(participant_id)
        await self._unpublish(participant_id)

    async def remove_from_stage(self, by: str, participant_id: str) -> None:
        await self.core.ensure_loaded()
        await self.core.remove_from_stage(by, participant_id)
        await self._unpublish(participant_id)

    async def remove(self, by: str, participant_id: str) -> None:
        await self.core.ensure_loaded()
        await self.core.remove(by, participant_id)
        await self._release_departed()

    async def chat(self, participant_id: str, text: str, all_rooms: bool = False) -> dict:
        await self.core.ensure_loaded()
        return await self.core.chat(participant_id, text, all_rooms=all_rooms)

    async def chat_history(self, participant_id: str, limit: int = 100) -> list[dict]:
        await self.core.ensure_loaded()
        self._publisher(participant_id)
        return await self.core.chat_history(participant_id, limit)

    async def ask(self, participant_id: str, text: str) -> dict:
        await self.core.ensure_loaded()
        return await self.core.ask(participant_id, text)

    async def upvote(self, participant_id: str, question_id: str) -> dict:
        await self.core.ensure_loaded()
        return await self.core.upvote(participant_id, question_id)

    async def settle_question(self, by: str, question_id: str, status: str, answer: str | None = None) -> dict:
        await self.core.ensure_loaded()
        return await self.core.settle_question(by, question_id, status, answer)

    async def questions(self, participant_id: str) -> list[dict]:
        await self.core.ensure_loaded()
        p = self._publisher(participant_id)
        return self.core.question_list(include_dismissed=p["role"] == "moderator")

    # Breakout rooms -------------------------------------------------------------------

    async def breakouts(self, method: str, by: str, *args: Any) -> dict:
        """Run one breakout-room operation of ``SessionCore`` (create_breakouts, rename_breakout,
        delete_breakout, assign_breakout, auto_assign_breakouts, open_breakouts, close_breakouts,
        visit_breakout), then bring the rooms' actors and everyone's media in line."""
        if method not in BREAKOUT_OPERATIONS:
            raise MediaserverError("invalid_request", f"no breakout operation {method!r}")
        await self.core.ensure_loaded()
        view = await getattr(self.core, method)(by, *args)
        await self._sync_breakouts()
        return view
    async def end(self, reason: str, by: str | None = None) -> dict:
        await self.core.ensure_loaded()
        session = await self.core.end(reason=reason, by=by)
        self._retire_breakouts()
        await self._release_departed()
        return session

    async def tick(self) -> str:
        await self.core.ensure_loaded()
        await self.core.tick()
        if self.media is None and self.core.restored and not self.core.ended:
            await self._media()  # restarted with participants: adopt them now, not at the next join
        await self._release_departed()
        await self._check_worker()
        await self._record_connection_states()
        await self._record_quality()
        if self.core.ended:
            self._retire_breakouts()
        return self.core.session["status"]

    async def wait_events(
        self, participant_id: str, after_seq: int, timeout: float, connection_id: str | None = None
    ) -> dict:
        await self.core.ensure_loaded()
        media = self.media
        result = await self.core.wait_events(
            participant_id, after_seq, timeout, connection_id,
            ready=lambda: bool(media is not None and media.outbox.get(participant_id)),
        )
        superseded = result.get("superseded")
        result["messages"] = [] if superseded or media is None else media.take_outbox(participant_id)
        return result

    async def _sync_breakouts(self) -> None:
        """One BreakoutRoomActor per open room, knowing its name and members; none while closed.
        Media follows the rooms: a participant receives only its own room's tracks."""
        view = self.core.breakout_view()
        wanted = {r["id"]: r["name"] for r in view["rooms"]} if view["open"] and not self.core.ended else {}
        for breakout_id in [b for b in self.breakouts if b not in wanted]:
            cluster.kill(names.breakout(self.session_id, breakout_id), restart=False)
            del self.breakouts[breakout_id]
        for breakout_id, name in wanted.items():
            handle = self.breakouts.get(breakout_id)
            if handle is None:
                handle = cluster.get_or_create(
                    BreakoutRoomActor, names.breakout(self.session_id, breakout_id), self.session_id, breakout_id, name
                )
                self.breakouts[breakout_id] = handle
            members = sorted(pid for pid, p in self.core.participants.items() if p.get("breakout_id") == breakout_id)
            await cluster.call(handle, "update", name, members)
        if self.media is not None:
            async with self._media_lock:
                await self.media.refresh_all()
        await self.core.notify()

    async def breakout_info(self) -> list[dict]:
        """What each open room's actor holds (its name and members)."""
        return [await cluster.call(h, "info") for h in self.breakouts.values()]

    def _retire_breakouts(self) -> None:
        for breakout_id in list(self.breakouts):
            cluster.kill(names.breakout(self.session_id, breakout_id), restart=False)
            del self.breakouts[breakout_id]

    def pid(self) -> int:
        return os.getpid()
