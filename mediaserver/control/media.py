"""Who receives what in a session: publications, subscriptions and the routes they imply.

A plain class a session's unit owns. It talks to the session's media workers
through ``Worker`` objects (the async methods below: a direct WorkerService in
tests, a Ray actor handle in the server) and queues the SDP offers each
subscriber must receive in ``outbox``.

Every participant subscribes to all published tracks of its room (the main
room, or the breakout room it is in: ``room_of``) by default;
``unsubscribe``/``subscribe`` change that per track.

Publishers send to the session's home worker. Receivers go there too, up to
``receivers_per_worker``; past that, to another worker (``more`` finds one, on
this node or another), and each published track a receiver there wants is
relayed once over a leg between the two workers (SRTP with keys both sides
derive from the deployment's secret, ``leg_keys``), and only while someone on
that worker receives it. Keyframe requests, NACKs and reports travel back over
the same leg.
"""

from __future__ import annotations

import asyncio
import logging
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Protocol

from mediaserver.errors import MediaserverError

log = logging.getLogger(__name__)


def worker_index(session_id: str, workers: int) -> int:
    """The media worker a session (and its breakout rooms) is placed on: deterministic, so a
    restarted SessionActor finds the same worker, and the dashboard can tell where it is."""
    return zlib.crc32(session_id.encode()) % workers


class Worker(Protocol):
    async def relay(self, peer_host: str, peer_port: int, rx: str, tx: str) -> dict: ...
    async def create_transport(self, participant_id: str, role: str) -> dict: ...
    async def close_transport(self, transport_id: str) -> None: ...
    async def publish(self, transport_id: str, offer: str) -> dict: ...
    async def subscribe_offer(self, transport_id: str, slots: list) -> str: ...
    async def subscribe_answer(self, transport_id: str, answer: str) -> None: ...
    async def route(self, src: str, src_ssrc: int, dst: str, out_ssrc: int, payload_type: int, video: bool,
                    layer: int | None = None, priority: int = 0, temporal: int = 2) -> None: ...
    async def set_layer(self, src: str, src_ssrc: int, dst: str, layer: int | None, temporal: int | None = None) -> None: ...
    async def unroute(self, src: str, src_ssrc: int, dst: str) -> None: ...
    async def close_participants(self, participant_ids: list[str]) -> int: ...
    async def reports(self, transport_ids: list[str], quality: bool = False) -> dict: ...
    # ^ {"states": {transport: state}, "events": [adaptation events], "quality": {transport: {...}}}
    async def start(self) -> dict: ...
    async def watch(self) -> None: ...


def _source(said: str, kind: str) -> str:
    """What a track is: as its publisher said, if that fits its kind."""
    fits = {"video": ("camera", "screen"), "audio": ("microphone", "screen_audio")}.get(kind, ())
    return said if said in fits else ""


@dataclass
class Track:
    id: str  # "<participant id>/<mid>"
    participant_id: str
    kind: str
    ssrc: int
    codec: dict
    muted: bool = False
    layers: int = 0  # simulcast encodings (0: one stream)
    source: str = ""  # camera, microphone, screen or screen_audio (the publisher says; default by kind)
    fallback: str | None = None  # the publisher's uplink: video_disabled_warning or video_disabled (None: fine)

    def __post_init__(self) -> None:
        self.source = self.source or ("camera" if self.kind == "video" else "microphone")

    @property
    def priority(self) -> int:
        """Where its video ranks among a subscriber's when the link cannot carry them all: a
        screen share first (it is what everyone is looking at, and useless blurred)."""
        return 1 if self.source == "screen" else 0

    def public(self) -> dict:
        return {"id": self.id, "participant_id": self.participant_id, "kind": self.kind, "codec": self.codec["name"],
                "muted": self.muted, "layers": self.layers, "source": self.source, "fallback": self.fallback}


@dataclass
class Slot:
    """One m-section of a subscriber's offer."""

    mid: str
    kind: str
    track_id: str | None  # None once the track has gone (the section stays, inactive)
    ssrc: int
    codec: dict  # the codec it carries (or last carried)
    stream_id: str = ""


@dataclass
class Subscriber:
    worker: str = ""  # the worker it receives from ("": the home worker)
    transport_id: str | None = None
    slots: list[Slot] = field(default_factory=list)
    unsubscribed: set[str] = field(default_factory=set)
    offer_pending: bool = False  # an offer is out; the next waits for its answer (no glare)
    dirty: bool = False  # something changed while an offer was out
    layers: dict[str, int] = field(default_factory=dict)  # track -> the simulcast layer it asked for
    temporal: dict[str, int] = field(default_factory=dict)  # track -> the VP8 temporal layer it asked for (its frame rate)


HOME = ""  # the home worker's key in ``workers``
NOBODY_SPEAKS = {"active": None, "speaking": []}


@dataclass
class Recording:
    """An archive being recorded: every published track also goes to ``recorder`` (a
    ``RecorderService``: direct in tests, a Ray actor on the home worker's node in the server),
    over one leg from the home worker like the legs between workers."""

    archive_id: str
    recorder: Any
    keys: tuple[str, str]  # (worker -> recorder, recorder -> worker), hex
    name_of: Callable[[str], str] = lambda pid: ""
    started_at: float | None = None  # the archive's start (UNIX time)
    address: dict | None = None
    leg: str | None = None  # the leg's transport on the home worker (made with the first track)
    ssrcs: dict[str, int] = field(default_factory=dict)  # track -> its SSRC on the leg
    lost: list[dict] = field(default_factory=list)  # tracks the recorder could not take


@dataclass
class Relay:
    ssrc: int  # the SSRC the track has on the leg
    receivers: set[str] = field(default_factory=set)  # participants on the far worker who receive it


class MediaSession:
    def __init__(
        self, worker: Worker, room_of: Callable[[str], str | None] = lambda pid: None, *,
        receivers_per_worker: int | None = None,
        more: Callable[[list[str]], Awaitable[tuple[str, Worker]]] | None = None,
        leg_keys: Callable[[str, str], tuple[str, str]] | None = None, home: str = "home",
    ):
        self.workers: dict[str, Worker] = {HOME: worker}
        self.names: dict[str, str] = {HOME: home}  # key -> the worker's name (for leg keys)
        self.room_of = room_of  # participant -> its breakout room (None: the main room)
        self.receivers_per_worker = receivers_per_worker
        self.more = more  # another worker for this session's receivers (given the names it has)
        self.leg_keys = leg_keys  # (from, to) worker names -> (key from->to, key to->from), hex
        self.publish_transport: dict[str, str] = {}  # participant -> transport
        self.tracks: dict[str, Track] = {}
        self.subscribers: dict[str, Subscriber] = {}
        self.outbox: dict[str, list[dict]] = {}  # participant -> signaling messages to deliver
        self.speaking: dict[str, int] = {}  # participant -> the order it started speaking in (those who speak now)
        self._spoke = 0
        self._told_speakers: dict[str, dict] = {}  # participant -> who speaks in its room, as last told
        self.layers_active: dict[str, tuple[bool, ...]] = {}  # simulcast track -> what its publisher was told to send
        self.legs: dict[str, tuple[str, str]] = {}  # far worker -> (leg's id on home, leg's id there)
        self.relays: dict[tuple[str, str], Relay] = {}  # (track, far worker) -> its relay
        self.recording: Recording | None = None

    @property
    def worker(self) -> Worker:
        """The home worker: publishers, and the first receivers."""
        return self.workers[HOME]

    @worker.setter
    def worker(self, worker: Worker) -> None:
        self.workers[HOME] = worker

    # Publishing ------------------------------------------------------------------

    async def publish(self, participant_id: str, offer: str, *, refresh: bool = True,
                      sources: dict[str, str] | None = None) -> tuple[str, list[Track], list[Track]]:
        """Answer a publish offer. Returns (answer, tracks added, tracks removed). ``refresh``:
        offer the change to everyone else before returning (else the caller does, with
        ``refresh_all``: a publisher need not wait for a whole audience's offers). ``sources``:
        what the publisher says each track is, by mid (``messages.Offer``)."""
        tid = self.publish_transport.get(participant_id)
        if tid is None:
            tid = (await self.worker.create_transport(participant_id, "publish"))["id"]
        try:
            result = await self.worker.publish(tid, offer)
        except Exception:
            if participant_id not in self.publish_transport:
                await self.worker.close_transport(tid)  # nothing half-made
            raise
        self.publish_transport[participant_id] = tid
        offered = {f"{participant_id}/{t['mid']}": t for t in result["tracks"]}
        mine = {k: v for k, v in self.tracks.items() if v.participant_id == participant_id}
        removed = [mine[k] for k in mine if k not in offered]
        added = []
        for tid_, t in offered.items():
            if tid_ in mine:
                continue
            track = Track(tid_, participant_id, t["kind"], t["ssrc"], t["codec"], layers=t.get("layers", 0),
                          source=_source((sources or {}).get(t["mid"], ""), t["kind"]))
            self.tracks[tid_] = track
            added.append(track)
        for t in removed:
            await self._drop_track(t)
            self.layers_active.pop(t.id, None)
        for t in added:
            self.layers_active.pop(t.id, None)  # (a new sender sends every layer)
            await self._record_track(t)
        if refresh:
            await self._refresh_all(exclude=participant_id)
        return result["answer"], added, removed

    def publisher_video(self, participant_id: str, track_id: str, state: str) -> None:
        """Publisher audio fallback: tell every subscriber of the publisher's video track what
        its uplink allows (``state``: video_disabled_warning, ..._lifted, video_disabled,
        video_enabled; reason ``publisher``); newcomers see it on the track (``fallback``)."""
        t = self.tracks.get(track_id)
        if t is None or t.participant_id != participant_id:
            raise MediaserverError("not_found", f"you publish no track {track_id!r}")
        if t.kind != "video":
            raise MediaserverError("invalid_request", f"track {track_id!r} is audio: audio goes on whatever the uplink")
        t.fallback = None if state in ("video_enabled", "video_disabled_warning_lifted") else state
        for pid, sub in self.subscribers.items():
            if any(s.track_id == track_id for s in sub.slots):
                self.outbox.setdefault(pid, []).append({"type": state, "track_id": track_id, "reason": "publisher"})

    async def set_muted(self, participant_id: str, track_id: str, muted: bool) -> Track:
        t = self.tracks.get(track_id)
        if t is None or t.participant_id != participant_id:
            raise MediaserverError("not_found", f"you publish no track {track_id!r}")
        t.muted = muted
        return t

    async def _drop_track(self, t: Track) -> None:
        await self._unrecord_track(t)
        self.tracks.pop(t.id, None)
        for pid, sub in self.subscribers.items():
            for slot in sub.slots:
                if slot.track_id == t.id:
                    await self._unroute(t, pid, sub)
                    slot.track_id = None

    # Recording ---------------------------------------------------------------------------

    async def record(self, recording: Recording) -> None:
        """Start sending every track, and every track published from now on, to a recorder."""
        recording.address = await recording.recorder.start_archive(
            recording.archive_id, recording.keys[0], recording.keys[1], recording.started_at)
        self.recording = recording
        for t in list(self.tracks.values()):
            await self._record_track(t)

    async def restart_recording(self) -> None:
        """The recorder died: record on in its successor (a new leg, every track again; the
        segments it had open are lost, those it finished are kept)."""
        rec = self.recording
        if rec is None:
            return
        await self.detach_recording()
        await self.record(rec)

    async def _record_track(self, t: Track) -> None:
        """Send ``t`` to the recorder too. A recorder that fails loses the archive that track, never
        the publication (the publisher's answer does not wait on it failing)."""
        rec = self.recording
        if rec is None or t.id in rec.ssrcs or t.participant_id not in self.publish_transport:
            return
        try:
            await self._send_to_recorder(rec, t)
            self.dynacast()
        except Exception as e:
            rec.ssrcs.pop(t.id, None)
            rec.lost.append({"track_id": t.id, "error": repr(e)[:200]})
            log.warning("archive %s: track %s not recorded: %r", rec.archive_id, t.id, e)

    async def _send_to_recorder(self, rec: Recording, t: Track) -> None:
        if rec.leg is None:
            leg = await self.worker.relay(rec.address["host"], rec.address["port"], rec.keys[1], rec.keys[0])
            rec.leg = leg["id"]
        ssrc = rec.ssrcs[t.id] = random.getrandbits(32)
        info = {"track_id": t.id, "participant_id": t.participant_id, "kind": t.kind, "codec": t.codec["name"],
                "clock_rate": t.codec.get("clock_rate", 90000), "name": rec.name_of(t.participant_id)}
        await rec.recorder.add_track(rec.archive_id, ssrc, info)
        await self.worker.route(self.publish_transport[t.participant_id], t.ssrc, rec.leg, ssrc,
                                t.codec["payload_type"], t.kind == "video")

    async def _unrecord_track(self, t: Track) -> None:
        rec = self.recording
        ssrc = rec.ssrcs.pop(t.id, None) if rec else None
        if ssrc is None:
            return
        tid = self.publish_transport.get(t.participant_id)
        if tid and rec.leg:
            await self.worker.unroute(tid, t.ssrc, rec.leg)
        try:
            await rec.recorder.end_track(rec.archive_id, ssrc)  # its file is finished now
        except Exception as e:  # (the recorder is gone: the archive's stop says so)
            log.warning("archive %s: end of track %s not recorded: %r", rec.archive_id, t.id, e)

    async def detach_recording(self) -> None:
        """Close the recorder's leg but leave the archive open (the session goes to sleep: its
        next owner takes the archive up again)."""
        rec = self.recording
        if rec is not None and rec.leg:
            try:
                await self.worker.close_transport(rec.leg)  # (its routes go with it)
            except Exception:
                pass
            rec.leg = None
            rec.ssrcs.clear()

    async def stop_recording(self) -> dict:
        """Stop sending to the recorder and let it finish its files: what it wrote."""
        rec = self.recording
        if rec is None:
            return {"segments": [], "skipped": [], "known": False, "lost": []}
        await self.detach_recording()  # (the leg's routes go with it)
        self.recording = None
        return {**await rec.recorder.stop_archive(rec.archive_id), "lost": rec.lost}

    # Routes (across workers) --------------------------------------------------------

    async def _route(self, t: Track, pid: str, sub: Subscriber, slot: Slot) -> None:
        src, ssrc = self.publish_transport[t.participant_id], t.ssrc
        if sub.worker != HOME:
            src, ssrc = await self._relay(t, pid, sub.worker)
        # A simulcast track starts on the layer the subscriber asked for (else the top); one that
        # crosses to another worker gets there as the top layer (its subscribers there share it).
        layer = sub.layers.get(t.id) if sub.worker == HOME else None
        await self.workers[sub.worker].route(src, ssrc, sub.transport_id, slot.ssrc, slot.codec["payload_type"], t.kind == "video", layer,
                                             t.priority, sub.temporal.get(t.id, 2))

    async def _unroute(self, t: Track, pid: str, sub: Subscriber) -> None:
        if sub.transport_id is None:
            return
        if sub.worker == HOME:
            await self.worker.unroute(self.publish_transport[t.participant_id], t.ssrc, sub.transport_id)
            return
        relay = self.relays.get((t.id, sub.worker))
        if relay is None:
            return
        await self.workers[sub.worker].unroute(self.legs[sub.worker][1], relay.ssrc, sub.transport_id)
        relay.receivers.discard(pid)
        if not relay.receivers:  # nobody there receives it now: stop sending it there
            del self.relays[(t.id, sub.worker)]
            await self.worker.unroute(self.publish_transport[t.participant_id], t.ssrc, self.legs[sub.worker][0])

    async def _relay(self, t: Track, pid: str, far: str) -> tuple[str, int]:
        """The track as the far worker receives it over the leg: (leg's id there, SSRC)."""
        out_id, in_id = await self._leg(far)
        relay = self.relays.get((t.id, far))
        if relay is None:
            relay = self.relays[(t.id, far)] = Relay(random.getrandbits(32))
            await self.worker.route(self.publish_transport[t.participant_id], t.ssrc, out_id, relay.ssrc,
                                    t.codec["payload_type"], t.kind == "video")
        relay.receivers.add(pid)
        return in_id, relay.ssrc

    async def _leg(self, far: str) -> tuple[str, str]:
        if far not in self.legs:
            here, there = self.names[HOME], self.names[far]
            forth, back = self.leg_keys(here, there)
            a = (await self.worker.start())["relay"]
            b = (await self.workers[far].start())["relay"]
            out = await self.worker.relay(b["host"], b["port"], back, forth)
            inn = await self.workers[far].relay(a["host"], a["port"], forth, back)
            self.legs[far] = (out["id"], inn["id"])
        return self.legs[far]

    async def _receiver_worker(self) -> str:
        """Where a new receiver goes: the first of the session's workers with room, else one more."""
        if self.receivers_per_worker is None or self.more is None:
            return HOME
        counts = {key: 0 for key in self.workers}
        for sub in self.subscribers.values():
            if sub.transport_id:
                counts[sub.worker] = counts.get(sub.worker, 0) + 1
        for key, n in counts.items():
            if n < self.receivers_per_worker:
                return key
        name, worker = await self.more(list(self.names.values()))
        key = name
        self.workers[key], self.names[key] = worker, name
        return key

    # Subscribing -------------------------------------------------------------------

    def _wanted(self, participant_id: str, sub: Subscriber) -> list[Track]:
        room = self.room_of(participant_id)
        return [
            t for t in self.tracks.values()
            if t.participant_id != participant_id and t.id not in sub.unsubscribed
            and self.room_of(t.participant_id) == room  # breakout rooms do not hear each other
        ]

    async def unpublish(self, participant_id: str) -> list[Track]:
        """End a participant's publications at once (taken off the stage): routes first, then its
        publish transport, so not one more packet of it is forwarded."""
        gone = [t for t in self.tracks.values() if t.participant_id == participant_id]
        for t in gone:
            await self._drop_track(t)
        tid = self.publish_transport.pop(participant_id, None)
        if tid:
            await self.worker.close_transport(tid)
        await self._refresh_all()
        return gone

    async def refresh_all(self, exclude: str | None = None) -> None:
        """Re-derive everyone's subscriptions (after people moved between rooms, or a publication)."""
        await self._refresh_all(exclude)

    async def _refresh_all(self, exclude: str | None = None) -> None:
        pids = [pid for pid in self.subscribers if pid != exclude]
        if self._home_only():
            # Each refresh then touches its own subscriber and the home worker only, so they go
            # together: a publication reaches a room's viewers in one round of worker calls
            # (sent as one message, see RemoteWorker) instead of one after another.
            results = await asyncio.gather(*(self.refresh(pid, dynacast=False) for pid in pids), return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
        else:
            for pid in pids:  # (legs and relays to other workers are made on the way: one at a time)
                await self.refresh(pid, dynacast=False)
        self.dynacast()  # once for all of them: it reads every subscriber's slots

    def _home_only(self) -> bool:
        """Every subscriber receives from the home worker, and will (there is room for all)."""
        room = self.receivers_per_worker is None or self.more is None or len(self.subscribers) <= self.receivers_per_worker
        return room and all(sub.worker == HOME for sub in self.subscribers.values())

    async def join(self, participant_id: str) -> None:
        self.subscribers.setdefault(participant_id, Subscriber())
        await self.refresh(participant_id)

    async def refresh(self, participant_id: str, *, dynacast: bool = True) -> None:
        """Bring a subscriber's sections in line with what it should receive; offer if that
        changed (and, unless ``dynacast`` is false, tell publishers which layers are wanted now)."""
        sub = self.subscribers.get(participant_id)
        if sub is None:
            return
        if sub.offer_pending:
            sub.dirty = True
            return
        wanted = {t.id: t for t in self._wanted(participant_id, sub)}
        current = {s.track_id for s in sub.slots if s.track_id}
        changed = False
        for slot in sub.slots:
            if slot.track_id and slot.track_id not in wanted:
                t = self.tracks.get(slot.track_id)
                if t is not None:
                    await self._unroute(t, participant_id, sub)
                slot.track_id = None
                changed = True
        for tid, t in wanted.items():
            if tid in current:
                continue
            # Reuse an inactive section of the same kind before adding one (keeps the SDP short).
            free = next((s for s in sub.slots if s.track_id is None and s.kind == t.kind), None)
            ssrc = random.getrandbits(32)
            if free is not None:
                free.track_id, free.ssrc, free.codec, free.stream_id = tid, ssrc, t.codec, t.participant_id
            else:
                sub.slots.append(Slot(str(len(sub.slots)), t.kind, tid, ssrc, t.codec, t.participant_id))
            changed = True
        if not changed or not any(s.track_id for s in sub.slots) and sub.transport_id is None:
            return
        if sub.transport_id is None:
            sub.worker = await self._receiver_worker()
            sub.transport_id = (await self.workers[sub.worker].create_transport(participant_id, "subscribe"))["id"]
        offer = await self.workers[sub.worker].subscribe_offer(sub.transport_id, [self._slot_data(s) for s in sub.slots])
        sub.offer_pending = True
        self.outbox.setdefault(participant_id, []).append({"type": "offer", "pc": "subscribe", "sdp": offer})
        if dynacast:
            self.dynacast()

    def dynacast(self) -> None:
        """Tell each simulcast publisher which layers anyone receives (the lowest always, so a
        newcomer starts at once): it stops encoding and sending the others until wanted."""
        for t in self.tracks.values():
            if t.layers < 2:
                continue
            top = t.layers - 1
            wanted = {0}
            for sub in self.subscribers.values():
                if any(s.track_id == t.id for s in sub.slots):
                    # (one on another worker gets the top layer over the leg between them)
                    wanted.add(sub.layers.get(t.id, top) if sub.worker == HOME else top)
            if self.recording is not None and t.id in self.recording.ssrcs:
                wanted.add(top)  # archives record the top layer
            active = tuple(i in wanted for i in range(t.layers))
            if self.layers_active.get(t.id) != active:
                self.layers_active[t.id] = active
                self.outbox.setdefault(t.participant_id, []).append({"type": "layers", "track_id": t.id, "active": list(active)})

    def _slot_data(self, s: Slot) -> dict:
        return {
            "mid": s.mid, "kind": s.kind, "ssrc": s.ssrc, "codec": s.codec, "stream_id": s.stream_id or "-",
            "track_id": s.track_id or f"inactive-{s.mid}", "active": s.track_id is not None,
        }

    async def subscribe_answer(self, participant_id: str, answer: str) -> None:
        sub = self.subscribers.get(participant_id)
        if sub is None or not sub.offer_pending or sub.transport_id is None:
            raise MediaserverError("invalid_request", "there is no subscribe offer waiting for an answer")
        await self.workers[sub.worker].subscribe_answer(sub.transport_id, answer)
        sub.offer_pending = False
        for s in sub.slots:
            if s.track_id:
                await self._route(self.tracks[s.track_id], participant_id, sub, s)
        if sub.dirty:
            sub.dirty = False
            await self.refresh(participant_id)

    async def set_layer(self, participant_id: str, track_id: str, layer: int | None, temporal: int | None = None) -> None:
        """A subscriber's choice among a simulcast track's layers (0 the lowest), e.g. for the
        size it shows the video at, and of its frame rate (the highest VP8 temporal layer: 2
        every frame, 1 half, 0 a quarter; a camera that sends none is not thinned); None: as
        it was. Kept for its next routes."""
        sub = self.subscribers.get(participant_id)
        if sub is None:
            raise MediaserverError("not_joined", "join before choosing what you receive")
        t = self.tracks.get(track_id)
        if t is None:
            raise MediaserverError("not_found", f"no track {track_id!r} in this session")
        if layer is not None and t.layers < 2:
            raise MediaserverError("not_simulcast", f"track {track_id!r} is sent as one stream: there is no other layer to choose")
        if temporal is not None and t.kind != "video":
            raise MediaserverError("invalid_request", f"track {track_id!r} is audio: it has no frame rate to choose")
        if layer is not None:
            sub.layers[track_id] = max(0, min(layer, t.layers - 1))
            self.dynacast()  # (a layer nobody received is sent again first)
        if temporal is not None:
            sub.temporal[track_id] = max(0, min(temporal, 2))
        routed = any(s.track_id == track_id for s in sub.slots) and sub.transport_id is not None
        if routed and sub.worker == HOME:
            await self.worker.set_layer(self.publish_transport[t.participant_id], t.ssrc, sub.transport_id,
                                        sub.layers[track_id] if layer is not None else None,
                                        sub.temporal[track_id] if temporal is not None else None)

    async def set_subscribed(self, participant_id: str, track_id: str, subscribed: bool) -> None:
        sub = self.subscribers.get(participant_id)
        if sub is None:
            raise MediaserverError("not_joined", "join before subscribing")
        if track_id not in self.tracks:
            raise MediaserverError("not_found", f"no track {track_id!r} in this session")
        (sub.unsubscribed.discard if subscribed else sub.unsubscribed.add)(track_id)
        await self.refresh(participant_id)

    # Leaving -------------------------------------------------------------------------

    async def leave(self, participant_id: str) -> list[Track]:
        """Close everything of a participant; returns the tracks it had published."""
        gone = [t for t in self.tracks.values() if t.participant_id == participant_id]
        for t in gone:
            await self._drop_track(t)
        sub = self.subscribers.pop(participant_id, None)
        if sub and sub.transport_id:
            if sub.worker != HOME:  # (a closed transport takes its routes with it; a relay is counted here)
                for slot in sub.slots:
                    t = self.tracks.get(slot.track_id) if slot.track_id else None
                    if t is not None:
                        await self._unroute(t, participant_id, sub)
            await self.workers[sub.worker].close_transport(sub.transport_id)
        tid = self.publish_transport.pop(participant_id, None)
        if tid:
            await self.worker.close_transport(tid)
        self.outbox.pop(participant_id, None)
        await self._refresh_all()  # (and what it received may be wanted by nobody now)
        return gone

    async def restart(self, participant_id: str, reason: str) -> list[Track]:
        """Start one participant's media over (it reconnected: its peer connections are new)."""
        gone = await self.leave(participant_id)
        self.outbox[participant_id] = [{"type": "media_reset", "reason": reason}]
        await self.join(participant_id)  # queues a new subscribe offer after the reset
        return gone

    def reset(self, reason: str) -> list[Track]:
        """The home worker lost every transport (it restarted): forget them (and the other
        workers: receivers are placed afresh), keep who is here and what they chose not to
        receive, and tell everyone to start their media again."""
        gone = list(self.tracks.values())
        self.tracks.clear()
        self.layers_active.clear()
        self.publish_transport.clear()
        if self.recording is not None:
            # Its leg went with the worker; the tracks published again start new segments.
            self.recording.leg = None
            self.recording.ssrcs.clear()
        self.legs.clear()
        self.relays.clear()
        for key in [k for k in self.workers if k != HOME]:
            del self.workers[key], self.names[key]
        for pid, sub in list(self.subscribers.items()):
            self.subscribers[pid] = Subscriber(unsubscribed=set(sub.unsubscribed))
            self.outbox[pid] = [{"type": "media_reset", "reason": reason}]
        return gone

    async def lose_worker(self, name: str, reason: str) -> None:
        """A worker that only receivers used is gone: they start over (elsewhere); the rest of
        the session goes on. The tracks it was sent over its leg stop being sent."""
        key = next((k for k, n in self.names.items() if n == name and k != HOME), None)
        if key is None:
            return
        for (track_id, far), relay in list(self.relays.items()):
            if far == key:
                del self.relays[(track_id, far)]
                t = self.tracks.get(track_id)
                if t is not None:
                    await self.worker.unroute(self.publish_transport[t.participant_id], t.ssrc, self.legs[key][0])
        self.legs.pop(key, None)
        del self.workers[key], self.names[key]
        for pid, sub in list(self.subscribers.items()):
            if sub.worker == key:
                self.subscribers[pid] = Subscriber(unsubscribed=set(sub.unsubscribed))
                self.outbox[pid] = [{"type": "media_reset", "reason": reason}]
                await self.refresh(pid)

    def worker_names(self) -> list[str]:
        return list(self.names.values())

    def transports(self, worker: str | None = None) -> dict[str, tuple[str, str]]:
        """transport id -> (participant, "publish" | "subscribe"), for every open transport (on
        the worker named ``worker``, if given)."""
        key = None if worker is None else next((k for k, n in self.names.items() if n == worker), "?")
        out = {} if key not in (None, HOME) else {tid: (pid, "publish") for pid, tid in self.publish_transport.items()}
        out.update({s.transport_id: (pid, "subscribe") for pid, s in self.subscribers.items()
                    if s.transport_id and (key is None or s.worker == key)})
        return out

    def take_outbox(self, participant_id: str) -> list[dict]:
        return self.outbox.pop(participant_id, [])

    def adapted(self, events: list[dict], members: Iterable[str] = ()) -> list[tuple[str, dict]]:
        """The media workers' adaptation events (a subscriber's video from one publisher paused
        for its link, or back) as messages to the subscribers: [(participant, message)]; and
        who started or stopped speaking: ``members`` (the participants connected) in each room
        whose speakers changed are told who speak now (``speakers``)."""
        receivers = {s.transport_id: pid for pid, s in self.subscribers.items() if s.transport_id}
        tracks = {(self.publish_transport.get(t.participant_id), t.ssrc): t for t in self.tracks.values()}
        out = []
        for e in events:
            t = tracks.get((e["publisher"], e["ssrc"]))
            if e["type"] == "speaking":
                if t is not None and t.kind == "audio":
                    self._speaking(t.participant_id, e["speaking"])
                continue
            pid = receivers.get(e["subscriber"])
            if pid is None or t is None:
                continue  # gone meanwhile
            msg = {"type": e["type"], "track_id": t.id, "reason": e["reason"]}
            self.outbox.setdefault(pid, []).append(msg)
            out.append((pid, msg))
        self._tell_speakers(members)
        return out

    def _speaking(self, participant_id: str, speaking: bool) -> None:
        if speaking:
            self._spoke += 1
            self.speaking[participant_id] = self._spoke
        else:
            self.speaking.pop(participant_id, None)

    def speakers_in(self, room: str | None) -> dict:
        """Who speaks in a room (None: the main one): ``active``, the one who started last and
        still speaks (None: nobody speaks), and ``speaking``, all who do."""
        here = {pid: n for pid, n in self.speaking.items() if self.room_of(pid) == room}
        return {"active": max(here, key=here.__getitem__) if here else None, "speaking": sorted(here)}

    def speakers_for(self, participant_id: str) -> dict:
        """Who speaks in a participant's room, as it is told now (its ``joined`` says it)."""
        self._told_speakers[participant_id] = now = self.speakers_in(self.room_of(participant_id))
        return now

    def _tell_speakers(self, members: Iterable[str]) -> None:
        """Tell each member who speaks in its room, if that is not what it was last told."""
        with_audio = {t.participant_id for t in self.tracks.values() if t.kind == "audio"}
        for pid in [p for p in self.speaking if p not in with_audio]:
            del self.speaking[pid]  # (its microphone is gone)
        rooms: dict[str | None, dict] = {}
        members = set(members)
        for pid in members:
            room = self.room_of(pid)
            now = rooms[room] if room in rooms else rooms.setdefault(room, self.speakers_in(room))
            if self._told_speakers.get(pid, NOBODY_SPEAKS) != now:
                self._told_speakers[pid] = now
                self.outbox.setdefault(pid, []).append({"type": "speakers", **now})
        for pid in [p for p in self._told_speakers if p not in members]:
            del self._told_speakers[pid]  # (gone, or not connected: told afresh when it joins or resumes)

    def track_list(self) -> list[dict[str, Any]]:
        return [t.public() for t in self.tracks.values()]
