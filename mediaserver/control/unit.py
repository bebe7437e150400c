"""One live session as its host holds it: its state and rules, its media, its breakout rooms.

A plain class, without Ray. ``SessionHost`` keeps many of these, each isolated from the others
(its own locks, its own failures); ``SessionCore`` holds the state and rules and writes every
change to the store before acknowledging it, so a unit dropped or lost is rebuilt from the store
as it was. The media worker is reached through ``worker`` (a ``mediaserver.control.media.Worker``:
a MediaWorker in tests, a Ray actor handle in the server).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

from mediaserver.control.archive import Archiver
from mediaserver.control.breakout import BreakoutRoom
from mediaserver.control.media import MediaSession, Worker
from mediaserver.control.meeting import START_EARLY
from mediaserver.control.mesh import PeerMesh
from mediaserver.control.session import SessionCore
from mediaserver.errors import MediaserverError
from mediaserver.store import Store

log = logging.getLogger(__name__)
QUALITY_REPEAT = 6  # an unchanged quality grade is logged again after this many looks

BREAKOUT_OPERATIONS = {
    "create_breakouts", "rename_breakout", "delete_breakout", "assign_breakout", "auto_assign_breakouts",
    "open_breakouts", "close_breakouts", "visit_breakout",
}


def _no_recorder(worker: str) -> Any:
    raise MediaserverError("unavailable", "this server records no archives")


def _may_publish(p: dict) -> None:
    if p["role"] == "subscriber":
        raise MediaserverError(
            "publish_not_allowed", "your role (subscriber) may not publish: ask to enable mic & camera first"
        )


class SessionUnit:
    def __init__(
        self, store: Store, session_id: str, worker: Worker, *, grace: float, stale: float,
        live_limit: int | None = None, quality_seconds: float = 10.0, clock: Callable[[], float] = time.time,
        relayed_max: int = 4, auto_back_to_direct: bool = False, recorder: Callable[[str], Any] | None = None,
        archive_max_seconds: float = 4 * 3600, **media: Any,
    ):
        """``media``: how receivers may span workers (``MediaSession``'s ``home``, ``more``,
        ``leg_keys``, ``receivers_per_worker``); ``recorder``: a media worker's name -> the
        recorder beside it (archives)."""
        self.session_id = session_id
        self.core = SessionCore(store, session_id, grace=grace, stale=stale, live_limit=live_limit, clock=clock)
        self.core.relayed_max = relayed_max
        self.core.auto_back_to_direct = auto_back_to_direct
        self._media_kw = media  # (to make the MediaSession anew when an auto room goes routed)
        self.worker = worker
        self.media: MediaSession | PeerMesh = MediaSession(worker, room_of=self.core.room_of, **media)
        self.open_rooms: dict[str, BreakoutRoom] = {}  # the open breakout rooms
        self.quality_seconds = quality_seconds
        self._media_lock = asyncio.Lock()  # media operations change shared tables across awaits
        self._adopted = False
        self._states: dict[str, str] = {}  # transport -> the last connection state recorded
        self._quality: dict[str, tuple[str, float]] = {}  # participant -> (grade, when) last logged
        self.calls = 0  # calls under way: a unit with none and nobody connected may be put to sleep
        self.broken = False  # failed unexpectedly: its host has dropped it, waiting calls are let go
        self._tasks: set[asyncio.Task] = set()  # work that follows an answered call
        derive = media.get("leg_keys")
        self.archives = Archiver(
            self, recorder or _no_recorder, max_seconds=archive_max_seconds, clock=clock,
            keys=(lambda aid: derive(f"archive {aid}", "recorder")) if derive else None,
        )

    # Loading ----------------------------------------------------------------------

    async def load(self, session: dict | None = None, new: dict | None = None, *, released: bool = False) -> None:
        """Load the session from the store (``session``: its row, when just read; ``new``: what
        the creator of a brand-new session read, see ``SessionHost.call``); participants it
        finds were connected to an owner that is gone, so their media starts over (``media_reset``).
        ``released``: this host put it to sleep and closed its media then, so the worker holds
        nothing of theirs to close (a call to the worker saved on every wake)."""
        await self.core.ensure_loaded(session, new)
        if self.core.ended:
            await self.archives.adopt()  # (one still recording when it ended is stopped now)
            return
        if self.relayed and not isinstance(self.media, PeerMesh):  # (known once the session is read)
            self.media = PeerMesh(room_of=self.core.room_of)
        async with self._media_lock:
            if self._adopted:
                return
            self._adopted = True
            restored = [pid for pid in self.core.restored if pid in self.core.participants]
            self.core.restored = []
            if restored:
                if not released:
                    # The worker may still hold transports of theirs (it outlived the owner): close them.
                    await self.worker.close_participants(restored)
                for pid in restored:
                    await self.media.join(pid)
                self.media.reset("the session was restored after a fault")
        if not self.relayed and new is None:  # (a brand-new session has no archive to take up)
            await self.archives.adopt()
        self._sync_breakout_rooms()
        await self.core.notify()

    @property
    def relayed(self) -> bool:
        """Media directly between participants now (a relayed room, or an auto one of two)."""
        return self.core.media_mode == "relayed"

    async def _sync_media_mode(self) -> None:
        """An auto room changed how its media goes (a third joined, or peers could not connect):
        close what the old way had, start the new way for everyone (the clients follow the
        media_mode_changed event: they close their peer connections and publish the new way)."""
        if self.ended or self.relayed == isinstance(self.media, PeerMesh):
            return
        async with self._media_lock:
            old = self.media
            gone = list(old.tracks.values())
            if isinstance(old, MediaSession):
                for pid in list(old.subscribers):
                    await old.leave(pid)  # closes its transports
                self.media = PeerMesh(room_of=self.core.room_of)
            else:
                kw = {**self._media_kw, "home": self.media_home}
                self.media = MediaSession(self.worker, room_of=self.core.room_of, **kw)
            for pid in self.core.participants:
                await self.media.join(pid)
        for t in gone:
            await self.core.record(t.participant_id, "track_unpublished", track_id=t.id, reason="media_mode_changed")
        await self.core.notify()

    @property
    def media_home(self) -> str:
        return self._media_kw.get("home", "home") if isinstance(self.media, PeerMesh) else self.media.names[""]

    @property
    def ended(self) -> bool:
        return self.core.ended

    def connected(self) -> int:
        return sum(1 for p in self.core.participants.values() if p["state"] == "connected")

    def wake_at(self) -> float | None:
        """When a sleeping unit must wake to apply its timers (a disconnected participant's
        grace, the session's own end), by the store's clock; None if it has none."""
        times = [p["disconnected_at"] + self.core.grace for p in self.core.participants.values()
                 if p["state"] == "disconnected" and p.get("disconnected_at") is not None]
        empty_since = self.core.session.get("empty_since")
        if empty_since is not None:
            times.append(empty_since + self.core.grace)
        return min(times) if times else None

    # Joining --------------------------------------------------------------------------

    async def join(self, identity: str, name: str, role: str) -> dict:
        participant = await self.core.join(identity=identity, name=name, role=role)
        await self._release_departed()
        await self._sync_media_mode()
        async with self._media_lock:
            await self.media.join(participant["id"])
        await self.archives.on_join()
        await self.core.notify()
        return await self._welcome(participant)

    async def resume(self, participant_id: str) -> dict:
        participant = await self.core.resume(participant_id)
        async with self._media_lock:
            # The old peer connections went with the old connection: start media afresh
            # (the client publishes again; its subscriptions are offered again).
            gone = await self.media.restart(participant_id, "reconnected")
        await self._record_unpublished(participant_id, gone)
        await self.core.notify()
        return await self._welcome(participant)

    async def _welcome(self, participant: dict) -> dict:
        """What a (re)joining participant needs: the session, who is here, tracks, chat, Q&A, rooms."""
        core = self.core
        return {
            "participant": participant, **core.snapshot(participant["id"]), "tracks": self.media.track_list(),
            "media_mode": core.media_mode,
            "archive": None if self.archives.current is None else {
                "id": self.archives.current["id"], "name": self.archives.current["name"],
                "started_at": self.archives.current["started_at"],
            },
            "chat": await core.chat_history(participant["id"]),
            "speakers": None if isinstance(self.media, PeerMesh) else self.media.speakers_for(participant["id"]),
            "questions": core.question_list(),
            "breakouts": core.breakout_view(),
            "event": None if core.event is None else {
                **core.event, "started": bool(core.meeting.get("started")),
                "start_from": core.event["starts_at"] - START_EARLY,
            },
        }

    def ready(self) -> dict:
        return self.core.snapshot()

    # Media ------------------------------------------------------------------------------

    def _member(self, participant_id: str) -> dict:
        p = self.core.participants.get(participant_id)
        if p is None:
            raise MediaserverError("not_joined", "this participant is not in the session")
        return p

    async def publish(self, participant_id: str, offer: str, sources: dict[str, str] | None = None) -> str:
        self.core.require_live()
        p = self._member(participant_id)
        _may_publish(p)
        if isinstance(self.media, PeerMesh):
            raise MediaserverError(
                "relayed_media", "this room connects participants directly: publish with peer_publish and signal each peer"
            )
        async with self._media_lock:
            seated = await self.core.take_stage(participant_id)  # on screen: 4 speakers, 6 others at most
            try:
                answer, added, removed = await self.media.publish(participant_id, offer, refresh=False, sources=sources)
            except Exception:
                if seated:  # the publication failed: give the seat back
                    await self.core.leave_stage(participant_id)
                raise
        for t in added:
            await self.core.record(participant_id, "track_published", track_id=t.id, kind=t.kind, codec=t.codec["name"], layers=t.layers,
                                   source=t.source)
        await self._record_unpublished(participant_id, removed)
        # The answer goes now; everyone else's offer follows (one worker call or two each: in a
        # room of 49 viewers the answer waited ~390 ms for them, see benchmark 7).
        self._background(self._offer_to_others(participant_id))
        return answer

    async def _offer_to_others(self, participant_id: str) -> None:
        await asyncio.sleep(0)  # (the answer leaves first)
        async with self._media_lock:
            media = self.media
            if isinstance(media, MediaSession) and not self.broken:
                await media.refresh_all(exclude=participant_id)
        await self.core.notify()

    def _background(self, coro: Any) -> None:
        """Run ``coro`` after the call that started it has answered; a failure is logged."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("session %s: %r after a publication", self.session_id, t.exception(), exc_info=t.exception())

        task.add_done_callback(done)

    async def peer_publish(self, participant_id: str, tracks: list[dict]) -> list[dict]:
        """Relayed: what this participant now sends its room mates directly; the same stage rules
        as a routed publication. Returns its tracks (ids ``<participant>/<name>``)."""
        self.core.require_live()
        p = self._member(participant_id)
        mesh = self._mesh()
        _may_publish(p)
        async with self._media_lock:
            seated = await self.core.take_stage(participant_id) if tracks else False
            try:
                added, removed = mesh.publish(participant_id, tracks)
            except Exception:
                if seated:
                    await self.core.leave_stage(participant_id)
                raise
        for t in added:
            await self.core.record(participant_id, "track_published", track_id=t.id, kind=t.kind, codec="peer")
        await self._record_unpublished(participant_id, removed)
        await self.core.notify()
        return [t.public() for t in mesh.publishing(participant_id)]

    async def signal(self, participant_id: str, to: str, link: str, payload: dict) -> None:
        """Relayed: pass an offer, answer or ICE candidate to one room mate."""
        self.core.require_live()
        self._member(participant_id)
        self._mesh().signal(participant_id, to, link, payload)
        await self.core.notify()

    async def direct_failed(self, participant_id: str) -> None:
        """Auto rooms: a participant could not reach a peer directly: everyone goes routed."""
        self._member(participant_id)
        if await self.core.direct_failed(participant_id):
            await self._sync_media_mode()

    def _mesh(self) -> PeerMesh:
        if not isinstance(self.media, PeerMesh):
            raise MediaserverError("routed_media", "this room's media goes through the server: publish with an offer")
        return self.media

    async def subscribe_answer(self, participant_id: str, answer: str) -> None:
        self._member(participant_id)
        if isinstance(self.media, PeerMesh):
            raise MediaserverError("relayed_media", "this room connects participants directly: answer your peers' offers")
        async with self._media_lock:
            await self.media.subscribe_answer(participant_id, answer)
            tracks = [s.track_id for s in self.media.subscribers[participant_id].slots if s.track_id]
        await self.core.record(participant_id, "subscribed", visibility="log", track_ids=tracks)
        await self.core.notify()

    async def set_subscribed(self, participant_id: str, track_id: str, subscribed: bool) -> None:
        self._member(participant_id)
        async with self._media_lock:
            await self.media.set_subscribed(participant_id, track_id, subscribed)
        await self.core.record(
            participant_id, "resubscribed" if subscribed else "unsubscribed", visibility="log", track_id=track_id
        )
        await self.core.notify()

    async def set_video_quality(self, participant_id: str, track_id: str, quality: str | None,
                                frame_rate: str | None = None) -> None:
        """Which simulcast layer a participant receives of a track (low, medium or high: the top)
        and at what frame rate (full, half, quarter); None: as it was."""
        self._member(participant_id)
        if isinstance(self.media, PeerMesh):
            raise MediaserverError("relayed_media", "this room connects participants directly: there are no layers to choose")
        async with self._media_lock:
            t = self.media.tracks.get(track_id)
            layers = t.layers if t is not None else 0
            index = None if quality is None else {"low": 0, "medium": (layers - 1) // 2, "high": max(layers - 1, 0)}[quality]
            temporal = None if frame_rate is None else {"quarter": 0, "half": 1, "full": 2}[frame_rate]  # (validated by the gateway)
            await self.media.set_layer(participant_id, track_id, index, temporal)
        await self.core.notify()  # (its publisher may have layers to turn on or off)

    async def publisher_video(self, participant_id: str, track_id: str, state: str) -> None:
        """A publisher's uplink cannot carry its video (or can again): its subscribers are told
        (reason ``publisher``), and it goes in its log."""
        self._member(participant_id)
        if isinstance(self.media, PeerMesh):
            raise MediaserverError("relayed_media", "this room connects participants directly: your peers see your video stop themselves")
        async with self._media_lock:
            self.media.publisher_video(participant_id, track_id, state)
        await self.core.record(participant_id, f"publisher_{state}", visibility="log", track_id=track_id)
        await self.core.notify()

    async def set_muted(self, participant_id: str, track_id: str, muted: bool) -> None:
        self._member(participant_id)
        async with self._media_lock:
            await self.media.set_muted(participant_id, track_id, muted)
        await self.core.record(participant_id, "muted" if muted else "unmuted", track_id=track_id)

    async def media_lost(self, reason: str) -> None:
        """The media worker lost every transport (it died): everyone starts media over."""
        if self.ended or isinstance(self.media, PeerMesh):
            return
        async with self._media_lock:
            gone = self.media.reset(reason)
        for t in gone:
            await self.core.record(t.participant_id, "track_unpublished", track_id=t.id, reason="media_reset")
        await self.core.notify()

    async def lose_worker(self, name: str, reason: str) -> None:
        """A worker some of its receivers used is gone: they start over; everyone else goes on."""
        if self.ended:
            return
        async with self._media_lock:
            await self.media.lose_worker(name, reason)
        await self.core.notify()

    async def use_worker(self, name: str, worker: Worker, reason: str) -> None:
        """Move the session's media to another worker: what was on the old one is let go (it
        is gone, or leaving), and everyone starts media over on the new one."""
        old = self.worker
        self.worker = worker
        if isinstance(self.media, PeerMesh):
            self._media_kw["home"] = name
            return  # its media never used a worker
        self.media.worker = worker
        self.media.names[""] = name
        try:
            await old.close_participants(list(self.core.participants))
        except Exception:
            pass  # gone with its node
        await self.media_lost(reason)

    def transports(self, worker: str | None = None) -> dict[str, tuple[str, str]]:
        return self.media.transports(worker)

    def has_media(self) -> bool:
        return bool(self.media.publish_transport) or any(s.transport_id for s in self.media.subscribers.values())

    async def record_states(self, states: dict[str, str]) -> None:
        """Media connection changes (checking, connected, failed) go in the participants' logs."""
        owners = self.media.transports()
        for tid, state in states.items():
            if tid in owners and self._states.get(tid) != state:
                pid, role = owners[tid]
                if pid in self.core.participants and not self.ended:
                    await self.core.record(pid, "connection_state", visibility="log", pc=role, state=state)
                self._states[tid] = state
        self._states = {tid: st for tid, st in self._states.items() if tid in owners}

    async def record_adaptation(self, events: list[dict]) -> None:
        """A subscriber's video paused for its link, or back (the media worker's adaptation):
        told to the subscriber, and kept in its log for the dashboard."""
        if self.ended:
            return
        told = self.media.adapted(events, [pid for pid, p in self.core.participants.items() if p["state"] == "connected"])
        for pid, msg in told:
            if pid in self.core.participants:
                await self.core.record(pid, msg["type"], visibility="log", track_id=msg["track_id"], reason=msg["reason"])
        if events:
            await self.core.notify()  # (and who speaks: in the outbox without a record)

    async def record_quality(self, quality: dict[str, dict], now: float) -> None:
        """Each receiving participant's connection quality (from its receiver reports) goes in its
        log: on a change of grade at once, an unchanged one every ``QUALITY_REPEAT`` looks."""
        owners = {tid: pid for tid, (pid, role) in self.media.transports().items() if role == "subscribe"}
        for tid, q in quality.items():
            pid = owners.get(tid)
            if pid not in self.core.participants or self.ended:
                continue
            # (jitter in the video clock, 90 kHz; audio's 48 kHz reads lower)
            await self._log_quality(pid, round(q["fraction_lost"] * 100, 1), round(q["jitter"] / 90, 1), now, "server")

    async def client_quality(self, participant_id: str, loss_percent: float, jitter_ms: float) -> None:
        """Relayed rooms: what a participant receives from its peers, from its own getStats (no
        media worker sees its media), logged like the server's own measurements."""
        self._member(participant_id)
        self._mesh()
        await self._log_quality(participant_id, round(loss_percent, 1), round(jitter_ms, 1), self.core.clock(), "client")

    async def _log_quality(self, pid: str, loss: float, jitter_ms: float, now: float, source: str) -> None:
        if self.ended:
            return
        grade = "good" if loss < 2 and jitter_ms < 30 else "fair" if loss < 8 else "poor"
        last = self._quality.get(pid)
        if last and last[0] == grade and now - last[1] < QUALITY_REPEAT * self.quality_seconds:
            return
        self._quality[pid] = (grade, now)
        await self.core.record(pid, "quality", visibility="log", loss_percent=loss, jitter_ms=jitter_ms, grade=grade,
                               measured_by=source)

    async def _record_unpublished(self, participant_id: str, tracks: list) -> None:
        if self.ended:
            return
        for t in tracks:
            await self.core.record(participant_id, "track_unpublished", track_id=t.id)

    async def _release_departed(self) -> None:
        """Free the media of participants who left (by leaving, grace timeout, replacement or the end)."""
        departed, self.core.departed = self.core.departed, []
        for pid in departed:
            async with self._media_lock:
                gone = await self.media.leave(pid)
            await self._record_unpublished(pid, gone)
        if departed:
            await self._sync_media_mode()
            await self.core.notify()

    async def release_media(self) -> None:
        """Close every transport of the session (it is going to sleep with nobody connected, or ended)."""
        async with self._media_lock:
            for pid in list(self.media.subscribers):
                await self.media.leave(pid)
            if isinstance(self.media, MediaSession):
                await self.media.detach_recording()
        self.archives.close()  # (its next owner watches the recorder again)

    async def _unpublish(self, participant_id: str) -> None:
        """Off the stage: stop forwarding its media now; its client closes its publish connection."""
        async with self._media_lock:
            gone = await self.media.unpublish(participant_id)
        for t in gone:
            await self.core.record(participant_id, "track_unpublished", track_id=t.id, reason="off_stage")
        await self.core.notify()

    # Lifecycle -------------------------------------------------------------------------

    async def disconnect(self, participant_id: str, connection_id: str | None = None) -> None:
        await self.core.disconnect(participant_id, connection_id)

    async def leave(self, participant_id: str, reason: str = "left") -> None:
        await self.core.leave(participant_id, reason)
        await self._release_departed()

    async def set_role(self, by: str | None, participant_id: str, role: str) -> dict:
        before = self.core.participants.get(participant_id, {}).get("on_stage")
        row = await self.core.set_role(by, participant_id, role)
        if before and not row.get("on_stage"):
            await self._unpublish(participant_id)
        return row

    async def end(self, reason: str, by: str | None = None) -> dict:
        session = await self.core.end(reason=reason, by=by)
        self._sync_breakout_rooms()
        await self._release_departed()
        await self.archives.on_end()
        return session

    async def tick(self) -> None:
        """The timers: stale connections, expired grace periods, the session's end."""
        await self.core.tick()
        await self._release_departed()
        if self.ended:
            self._sync_breakout_rooms()
            await self.archives.on_end()
        else:
            await self.archives.tick(self.core.clock())

    def next_timer(self) -> float:
        """When ``tick`` may change something: the session's timers, an archive's time limit."""
        due = self.archives.due()
        return min(self.core.next_timer(), due if due is not None else float("inf"))

    # Archives ----------------------------------------------------------------------------

    async def start_archive(self, by: str | None, name: str | None = None, output: str = "individual") -> dict:
        return await self.archives.start(by, name, output)

    async def stop_archive(self, by: str | None, archive_id: str | None = None) -> dict:
        return await self.archives.stop(by, archive_id, reason="moderator" if by else "api")

    async def wait_events(
        self, participant_id: str, after_seq: int, timeout: float, connection_id: str | None = None
    ) -> dict:
        media = self.media
        result = await self.core.wait_events(
            participant_id, after_seq, timeout, connection_id,
            ready=lambda: self.broken or bool(media.outbox.get(participant_id)),
        )
        result["messages"] = [] if result.get("superseded") else media.take_outbox(participant_id)
        return result

    # Stage, chat, Q&A (rules in mediaserver.control.meeting) ---------------------------

    async def start_session(self, by: str) -> dict:
        return await self.core.start_session(by)

    async def request_stage(self, participant_id: str) -> None:
        await self.core.request_stage(participant_id)

    async def cancel_stage_request(self, participant_id: str) -> None:
        await self.core.cancel_stage_request(participant_id)

    async def answer_stage_request(self, by: str, participant_id: str, approve: bool) -> None:
        await self.core.answer_stage_request(by, participant_id, approve)

    async def leave_stage(self, participant_id: str) -> None:
        await self.core.leave_stage(participant_id)
        await self._unpublish(participant_id)

    async def remove_from_stage(self, by: str, participant_id: str) -> None:
        await self.core.remove_from_stage(by, participant_id)
        await self._unpublish(participant_id)

    async def remove(self, by: str, participant_id: str) -> None:
        await self.core.remove(by, participant_id)
        await self._release_departed()

    async def chat(self, participant_id: str, text: str, all_rooms: bool = False) -> dict:
        return await self.core.chat(participant_id, text, all_rooms=all_rooms)

    async def chat_history(self, participant_id: str, limit: int = 100) -> list[dict]:
        self._member(participant_id)
        return await self.core.chat_history(participant_id, limit)

    async def ask(self, participant_id: str, text: str) -> dict:
        return await self.core.ask(participant_id, text)

    async def upvote(self, participant_id: str, question_id: str) -> dict:
        return await self.core.upvote(participant_id, question_id)

    async def settle_question(self, by: str, question_id: str, status: str, answer: str | None = None) -> dict:
        return await self.core.settle_question(by, question_id, status, answer)

    async def questions(self, participant_id: str) -> list[dict]:
        p = self._member(participant_id)
        return self.core.question_list(include_dismissed=p["role"] == "moderator")

    # Breakout rooms -----------------------------------------------------------------------

    async def breakouts(self, method: str, by: str, *args: Any) -> dict:
        """Run one breakout-room operation of ``SessionCore`` (create_breakouts, rename_breakout,
        delete_breakout, assign_breakout, auto_assign_breakouts, open_breakouts, close_breakouts,
        visit_breakout), then bring the open rooms and everyone's media in line."""
        if method not in BREAKOUT_OPERATIONS:
            raise MediaserverError("invalid_request", f"no breakout operation {method!r}")
        view = await getattr(self.core, method)(by, *args)
        self._sync_breakout_rooms()
        async with self._media_lock:
            await self.media.refresh_all()  # a participant receives only its own room's tracks
        await self.core.notify()
        return view

    def _sync_breakout_rooms(self) -> None:
        """One ``BreakoutRoom`` per open room, knowing its name and members; none while closed."""
        view = self.core.breakout_view()
        wanted = {r["id"]: r["name"] for r in view["rooms"]} if view["open"] and not self.ended else {}
        for breakout_id in [b for b in self.open_rooms if b not in wanted]:
            del self.open_rooms[breakout_id]
        for breakout_id, name in wanted.items():
            members = sorted(pid for pid, p in self.core.participants.items() if p.get("breakout_id") == breakout_id)
            room = self.open_rooms.get(breakout_id)
            if room is None:
                self.open_rooms[breakout_id] = room = BreakoutRoom(self.session_id, breakout_id, name)
            room.update(name, members)

    def breakout_info(self) -> list[dict]:
        """What each open breakout room holds (its name and members)."""
        return [room.info() for room in self.open_rooms.values()]
