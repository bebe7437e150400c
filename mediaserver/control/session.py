"""One live session's state and rules, without Ray.

Every operation runs under one lock, builds a ``SessionChange``, writes it to
the store, and only then updates memory and wakes event waiters: what a caller
sees acknowledged is durable, and a restarted actor rebuilds the same state
with ``load()``.

Participant states: ``connected`` -> ``disconnected`` (WebSocket or gateway
gone; keeps its place for ``grace`` seconds) -> ``connected`` again on resume,
or ``left``. The session is ``live`` while someone is connected (or before
the first join), ``ending_soon`` while nobody is, and ``ended`` ``grace``
seconds after that, or when a moderator ends it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Callable

from mediaserver.control.meeting import MeetingRules
from mediaserver.control.tx import Tx as _Tx
from mediaserver.errors import MediaserverError
from mediaserver.ids import new_id
from mediaserver.store import Store

RECENT_EVENTS = 512  # broadcast events kept in memory for long-polls; older ones come from the store
AUTO_DIRECT_MAX = 2  # an auto room's media goes directly between this many participants at most
STORE_PAGE = 1000  # events read from the store per long-poll answer, for one far behind
# Past this many participants (a webinar, where the server allows rooms that large), the
# audience's comings and goings reach only the staff (speakers and those who may publish), and
# an audience member is told of the staff only: every viewer hearing of every other is O(n^2).
AUDIENCE_BROADCAST = 50
VISIBLE = ("broadcast", "room", "staff")  # what participants are sent (room and staff events filtered each)


class SessionCore(MeetingRules):
    def __init__(
        self,
        store: Store,
        session_id: str,
        *,
        grace: float,
        stale: float,
        live_limit: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.session_id = session_id
        self.grace = grace
        self.stale = stale
        self.live_limit = live_limit  # the server's default limit on a team's live sessions
        self.relayed_max = 4  # participants of a relayed (peer-to-peer) session at most
        self.auto_back_to_direct = False  # an auto room goes back to peer to peer when two remain
        self.clock = clock
        self.session: dict[str, Any] = {}
        self.room: dict[str, Any] = {}
        self.participants: dict[str, dict] = {}  # those not left
        self.last_seq = 0
        self.recent: deque[dict] = deque(maxlen=RECENT_EVENTS)
        self.last_seen: dict[str, float] = {}  # in memory only: a restart gives everyone a fresh start
        # The current connection of each participant; a stale connection's late calls are ignored.
        self.connections: dict[str, str] = {}
        # Participants who left since the owner last looked (so it can release their media).
        self.departed: list[str] = []
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._load_lock = asyncio.Lock()
        self.loaded = False
        self._init_meeting()
        self.restored: list[str] = []
        self.event: dict | None = None
        self.loaded_at = 0.0  # when this owner loaded the session (its clock)
        self.joining = 0  # joins under way: a session nobody has joined yet is not ended under them
        self.retired = False  # its owner let it go: it writes nothing more
        # Not in the store yet: its creator handed it over unwritten, and its first join writes
        # it (``SessionChange.opens``), in the transaction that admits that participant.
        self.unwritten = False

    async def ensure_loaded(self, session: dict | None = None, new: dict | None = None) -> None:
        async with self._load_lock:
            if not self.loaded:
                await self.load(session, new)

    # Loading ----------------------------------------------------------------

    async def load(self, session: dict | None = None, new: dict | None = None) -> None:
        """Load the session (``session``: its row, when the caller has just read it; ``new``:
        the room and event slot its creator read as it created it, when it has just been)."""
        session = session or await self.store.get_session(self.session_id)
        if session is None:
            raise MediaserverError("session_not_found", f"no session {self.session_id}")
        room = new["room"] if new else await self.store.get_room(session["room_id"])
        self.unwritten = bool(new and new.get("unwritten"))
        fresh = session["last_seq"] == 0  # nothing has happened in it yet: nothing else to read
        parts = [] if fresh else await self.store.list_participants(self.session_id)
        recent = [] if fresh else await self.store.session_events(
            self.session_id, after_seq=max(0, session["last_seq"] - RECENT_EVENTS), broadcast_only=True
        )
        now = self.clock()
        self.session = session
        self.room = room or {}
        self.participants = {p["id"]: p for p in parts if p["state"] != "left"}
        self.last_seq = session["last_seq"]
        self.recent = deque(recent, maxlen=RECENT_EVENTS)
        self.last_seen = {pid: now for pid in self.participants}
        # Participants already here when this actor (re)started: their media must be adopted.
        self.restored = list(self.participants)
        slot = new["slot"] if new else await self.store.slot_for_room(session["room_id"])
        # An event's session: participants come in once a speaker has started it.
        self.event = None if slot is None else {"slot_id": slot["id"], "starts_at": slot["starts_at"], "spots": slot["spots"]}
        await self._load_meeting()
        self.loaded_at = now
        self.loaded = True

    # Views ------------------------------------------------------------------

    @property
    def ended(self) -> bool:
        return self.session.get("status") == "ended"

    def snapshot(self, for_participant: str | None = None) -> dict:
        """The session and who is in it, as ``for_participant`` may see it (all, if None)."""
        people = self.participants.values()
        viewer = self.participants.get(for_participant) if for_participant else None
        if viewer is not None and viewer["role"] == "subscriber" and len(self.participants) > AUDIENCE_BROADCAST:
            people = [p for p in people if p["role"] != "subscriber" or p["id"] == for_participant]
        return {"session": dict(self.session), "participants": [dict(p) for p in people], "last_seq": self.last_seq}

    def _presence(self, tx: _Tx, pid: str) -> str:
        """The visibility of a participant's joining, leaving or dropping off (see AUDIENCE_BROADCAST)."""
        if tx.participant(pid)["role"] != "subscriber":
            return "broadcast"
        present = sum(1 for q in set(self.participants) | set(tx.participants) if tx.participant(q)["state"] != "left")
        return "staff" if present > AUDIENCE_BROADCAST else "broadcast"

    def _connected_count(self, tx: _Tx) -> int:
        ids = set(self.participants) | set(tx.participants)
        return sum(1 for pid in ids if tx.participant(pid)["state"] == "connected")

    # Operations ---------------------------------------------------------------

    async def join(self, *, identity: str, name: str, role: str) -> dict:
        self.joining += 1
        try:
            return await self._join(identity, name, role)
        finally:
            self.joining -= 1

    async def _join(self, identity: str, name: str, role: str) -> dict:
        async with self._lock:
            self.require_live()
            tx = _Tx(self, self.clock())
            for pid, p in self.participants.items():
                if p["identity"] == identity:
                    # Like LiveKit: a second connection of the same identity replaces the first.
                    self._leave(tx, pid, "replaced")
            present = [pid for pid in self.participants if tx.participant(pid)["state"] != "left"]
            capacity = int(self.room.get("capacity") or 50)
            if len(present) >= capacity:
                raise MediaserverError("room_full", f"the session is full ({capacity} participants)")
            if self.room.get("media_mode") == "relayed" and len(present) >= self.relayed_max:
                raise MediaserverError(
                    "relayed_session_full",
                    f"this room connects participants directly, which works for up to {self.relayed_max}; "
                    "ask its owner to switch it to routed media (media_mode: routed) for more",
                )
            await self._admit_to_event(tx, identity, role, present)
            row = {
                "id": new_id("part"),
                "session_id": self.session_id,
                "identity": identity,
                "name": name,
                "role": role,
                "state": "connected",
                "joined_at": tx.now,
                "disconnected_at": None,
                "left_at": None,
                "left_reason": None,
                "on_stage": False,
                "stage_requested_at": None,
                "breakout_id": None,
            }
            tx.add_participant(row)
            tx.event("joined", row["id"], self._presence(tx, row["id"]), identity=identity, name=name, role=role)
            await self._commit(tx)
            self.last_seen[row["id"]] = tx.now
            return self._connected(row["id"])

    async def resume(self, participant_id: str) -> dict:
        """A participant comes back inside the grace period (reconnect token)."""
        async with self._lock:
            self.require_live()
            p = self.participants.get(participant_id)
            if p is None:
                raise MediaserverError(
                    "reconnect_expired", "this participant has left the session; join again with a participant token"
                )
            tx = _Tx(self, self.clock())
            tx.update_participant(participant_id, state="connected", disconnected_at=None)
            tx.event("reconnected", participant_id, self._presence(tx, participant_id), was=p["state"])
            await self._commit(tx)
            self.last_seen[participant_id] = tx.now
            return self._connected(participant_id)

    def _connected(self, participant_id: str) -> dict:
        self.connections[participant_id] = conn = new_id("conn")
        return {**self.participants[participant_id], "connection_id": conn}

    def is_current(self, participant_id: str, connection_id: str | None) -> bool:
        if connection_id is None:
            return True
        # After a restart nobody is known: the first connection to call becomes current.
        return self.connections.setdefault(participant_id, connection_id) == connection_id

    async def disconnect(self, participant_id: str, connection_id: str | None = None) -> None:
        """The participant's connection dropped; it keeps its place for ``grace`` seconds."""
        async with self._lock:
            p = self.participants.get(participant_id)
            if self.ended or p is None or p["state"] != "connected":
                return
            if not self.is_current(participant_id, connection_id):
                return  # an older connection of a participant that already resumed
            tx = _Tx(self, self.clock())
            tx.update_participant(participant_id, state="disconnected", disconnected_at=tx.now)
            tx.event("disconnected", participant_id, self._presence(tx, participant_id))
            await self._commit(tx)

    async def leave(self, participant_id: str, reason: str = "left") -> None:
        async with self._lock:
            if self.ended or participant_id not in self.participants:
                return
            tx = _Tx(self, self.clock())
            self._leave(tx, participant_id, reason)
            await self._commit(tx)

    async def set_role(self, by: str | None, participant_id: str, role: str) -> dict:
        """Change a participant's role; ``by`` is the moderator's participant id, or None for the API."""
        async with self._lock:
            self.require_live()
            if by is not None:
                self._require_moderator(by)
            p = self.participants.get(participant_id)
            if p is None:
                raise MediaserverError("participant_not_found", f"no participant {participant_id} in this session")
            if p["role"] == role:
                return dict(p)
            tx = _Tx(self, self.clock())
            values: dict[str, Any] = {"role": role}
            if role == "subscriber" and p.get("on_stage"):
                values["on_stage"] = False  # no longer allowed to publish: off the screen at once
            if role != "subscriber":
                values["stage_requested_at"] = None
            if p.get("on_stage") and role != "subscriber" and (role == "moderator") != (p["role"] == "moderator"):
                values["on_stage"] = False  # speaker and participant seats are counted apart: sit down first
            tx.update_participant(participant_id, **values)
            tx.event("role_changed", participant_id, role=role, previous=p["role"], by=by)
            if values.get("on_stage") is False:
                tx.event("stage_left", participant_id, reason="role_changed", by=by)
            await self._commit(tx)
            return dict(self.participants[participant_id])

    async def end(self, *, reason: str, by: str | None = None) -> dict:
        """End the session; ``by`` is the moderator's participant id when a moderator ends it."""
        async with self._lock:
            self.require_live()
            if by is not None:
                self._require_moderator(by)
            tx = _Tx(self, self.clock())
            self._end(tx, reason, by)
            await self._commit(tx)
            return dict(self.session)

    async def tick(self) -> None:
        """Apply the timers: stale connections, expired grace periods, the session's end."""
        async with self._lock:
            if self.ended:
                return
            tx = _Tx(self, self.clock())
            for pid, p in self.participants.items():
                if p["state"] == "connected" and tx.now - self.last_seen.get(pid, tx.now) > self.stale:
                    tx.update_participant(pid, state="disconnected", disconnected_at=tx.now)
                    tx.event("disconnected", pid, self._presence(tx, pid), reason="stale")
                elif p["state"] == "disconnected" and tx.now - p["disconnected_at"] >= self.grace:
                    self._leave(tx, pid, "grace_timeout")
            self._update_emptiness(tx)
            empty_since = tx.session.get("empty_since", self.session.get("empty_since"))
            if empty_since is not None and tx.now - empty_since >= self.grace:
                self._end(tx, "grace_timeout", None)
            elif self._first_join_never_came(tx.now):
                self._end(tx, "grace_timeout", None)
            if tx.change.events or tx.session:
                await self._commit(tx)

    def next_timer(self) -> float:
        """The earliest time (by ``clock``) at which ``tick`` may change something: a connection
        going stale, a grace period running out, a session nobody joined ending."""
        if self.ended:
            return float("inf")
        due = float("inf")
        for pid, p in self.participants.items():
            if p["state"] == "connected":
                due = min(due, self.last_seen.get(pid, 0.0) + self.stale)
            elif p["state"] == "disconnected" and p.get("disconnected_at") is not None:
                due = min(due, p["disconnected_at"] + self.grace)
        empty_since = self.session.get("empty_since")
        if empty_since is not None:
            due = min(due, empty_since + self.grace)
        if not self.participants and self.last_seq == 0:
            due = min(due, max(self.session.get("started_at", 0.0), self.loaded_at) + self.grace)
        return due

    def _first_join_never_came(self, now: float) -> bool:
        """Opened, but nobody ever joined (say, its first join failed on the way): it ends a
        grace period after this owner took it on, and never while a join is under way. The
        grace clock of a session otherwise starts only when its last participant leaves."""
        never_joined = not self.participants and self.last_seq == 0
        return never_joined and not self.joining and now - max(self.session["started_at"], self.loaded_at) >= self.grace

    def touch(self, participant_id: str) -> None:
        if participant_id in self.participants:
            self.last_seen[participant_id] = self.clock()

    async def wait_events(
        self,
        participant_id: str,
        after_seq: int,
        timeout: float,
        connection_id: str | None = None,
        ready: Callable[[], bool] = lambda: False,
    ) -> dict:
        """Long-poll: broadcast events after ``after_seq``; also refreshes the participant's liveness.

        ``superseded`` tells an older connection that the participant resumed elsewhere.
        """
        if not self.is_current(participant_id, connection_id):
            return {"events": [], "last_seq": self.last_seq, "status": self.session["status"], "superseded": True}
        self.touch(participant_id)
        deadline = asyncio.get_running_loop().time() + timeout
        checked = after_seq
        async with self._changed:
            while not self.ended and not ready():
                # Wake only for what this participant sees: a webinar's staff-only presence events
                # must not send every viewer's long-poll round the gateway again.
                if self.last_seq > checked:
                    if self._news_for(participant_id, checked):
                        break
                    checked = self.last_seq
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                if not await _wait(self._changed, remaining):
                    break
        self.touch(participant_id)
        oldest = self.recent[0]["seq"] if self.recent else self.last_seq + 1
        covered = self.last_seq  # every event up to here was looked at (last_seq: poll on from there)
        if after_seq + 1 < oldest:
            evs = await self.store.session_events(self.session_id, after_seq=after_seq, broadcast_only=True, limit=STORE_PAGE)
            if len(evs) == STORE_PAGE:
                covered = evs[-1]["seq"]
        else:
            evs = [e for e in self.recent if e["seq"] > after_seq]
        sees = self._viewer(participant_id)
        evs = [e for e in evs if sees(e)]
        superseded = not self.is_current(participant_id, connection_id)
        return {"events": evs, "last_seq": covered, "status": self.session["status"], "superseded": superseded}

    # Internals ----------------------------------------------------------------

    def _viewer(self, participant_id: str) -> Callable[[dict], bool]:
        """Whether ``participant_id`` sees a broadcast event (room-scoped, staff-only)."""
        room = self.room_of(participant_id)
        me = self.participants.get(participant_id)
        staff = me is not None and me["role"] != "subscriber"
        return lambda e: ((e["visibility"] != "room" or e["data"].get("breakout_id") == room)
                          and (e["visibility"] != "staff" or staff or e["participant_id"] == participant_id))

    def _news_for(self, participant_id: str, after_seq: int) -> bool:
        """Whether an event after ``after_seq`` is for this participant (newest first, so a
        wake costs only what is new; older than what we keep: assume yes, the store answers)."""
        if not self.recent or after_seq + 1 < self.recent[0]["seq"]:
            return True
        sees = self._viewer(participant_id)
        for e in reversed(self.recent):
            if e["seq"] <= after_seq:
                return False
            if sees(e):
                return True
        return False

    def require_live(self) -> None:
        if self.ended:
            raise MediaserverError("session_ended", "this session has ended")

    def _require_moderator(self, pid: str) -> None:
        p = self.participants.get(pid)
        if p is None or p["role"] != "moderator":
            raise MediaserverError("not_moderator", "only a moderator may do this")

    async def record(
        self, participant_id: str | None, type_: str, visibility: str = "broadcast", **data: Any
    ) -> None:
        """Record something that happened, e.g. a published track; broadcast unless ``visibility='log'``."""
        async with self._lock:
            self.require_live()
            tx = _Tx(self, self.clock())
            tx.event(type_, participant_id, visibility, **data)
            await self._commit(tx)

    async def direct_failed(self, participant_id: str) -> bool:
        """A participant of an auto room cannot connect to a peer directly (and no TURN got it
        through): the session's media goes through the server from now on. False if it did."""
        async with self._lock:
            self.require_live()
            if participant_id not in self.participants:
                raise MediaserverError("not_joined", "this participant is not in the session")
            if self.room.get("media_mode") != "auto":
                raise MediaserverError("invalid_request", "only an automatic (auto) room changes how its media goes")
            tx = _Tx(self, self.clock())
            if not self.route_media(tx, "direct_connection_failed"):
                return False
            tx.event("direct_failed", participant_id, visibility="log")
            await self._commit(tx)
            return True

    async def go_routed(self, reason: str) -> bool:
        """An auto room's media goes through the server from now on (e.g. it is being archived)."""
        async with self._lock:
            self.require_live()
            tx = _Tx(self, self.clock())
            if not self.route_media(tx, reason):
                return False
            await self._commit(tx)
            return True

    async def notify(self) -> None:
        """Wake long-polls (e.g. a signaling message is waiting for someone)."""
        async with self._changed:
            self._changed.notify_all()

    def _leave(self, tx: _Tx, pid: str, reason: str) -> None:
        visibility = self._presence(tx, pid)  # (counted while it is still here)
        tx.update_participant(pid, state="left", left_at=tx.now, left_reason=reason)
        tx.event("left", pid, visibility, reason=reason)

    def _end(self, tx: _Tx, reason: str, by: str | None) -> None:
        if by is not None:
            tx.event("ended_session", by, visibility="log")
        for pid in list(self.participants):
            if tx.participant(pid)["state"] != "left":
                tx.update_participant(pid, state="left", left_at=tx.now, left_reason="session_ended")
                tx.event("session_ended", pid, visibility="log", reason=reason)
        tx.session.update(status="ended", ended_at=tx.now, end_reason=reason)
        tx.event("session_ended", None, reason=reason, by=by)

    @property
    def media_mode(self) -> str:
        """How this session's media goes now: "routed" or "relayed" (an auto room: either)."""
        mode = self.room.get("media_mode") or "routed"
        if mode != "auto":
            return mode
        return (self.session.get("meeting") or {}).get("media_mode") or "relayed"

    def route_media(self, tx: _Tx, reason: str) -> bool:
        """An auto room goes routed now (e.g. peers cannot connect directly); False if it was."""
        if self.room.get("media_mode") != "auto" or (tx.meeting().get("media_mode") or "relayed") == "routed":
            return False
        tx.set_meeting(media_mode="routed", media_mode_pinned=True)  # (not back to direct: it failed)
        tx.event("media_mode_changed", None, mode="routed", reason=reason)
        return True

    def _settle_media_mode(self, tx: _Tx) -> None:
        """Auto rooms: directly between two participants, through the server from a third on
        (and back to direct when two remain, if ``auto_back_to_direct``: off by default, so a
        third who comes and goes does not flip everyone's media twice)."""
        if self.room.get("media_mode") != "auto":
            return
        meeting = tx.meeting()
        mode = meeting.get("media_mode") or "relayed"
        present = sum(1 for pid in set(self.participants) | set(tx.participants) if tx.participant(pid)["state"] != "left")
        want, reason = mode, None
        if mode == "relayed" and present > AUTO_DIRECT_MAX:
            want, reason = "routed", "more_than_two"
        elif (mode == "routed" and self.auto_back_to_direct and 0 < present <= AUTO_DIRECT_MAX
              and not meeting.get("media_mode_pinned")):
            want, reason = "relayed", "two_or_fewer"
        if meeting.get("media_mode") != want:
            tx.set_meeting(media_mode=want)
        if reason:
            tx.event("media_mode_changed", None, mode=want, reason=reason)

    def _update_emptiness(self, tx: _Tx) -> None:
        connected = self._connected_count(tx)
        empty_since = tx.session.get("empty_since", self.session.get("empty_since"))
        if connected == 0 and empty_since is None and (self.participants or tx.participants):
            tx.session.update(status="ending_soon", empty_since=tx.now)
        elif connected > 0 and empty_since is not None:
            tx.session.update(status="live", empty_since=None)
            tx.change.live_limit = self.live_limit  # counts against the team's limit again: checked in the write

    async def _commit(self, tx: _Tx) -> None:
        if self.retired:
            # Its owner gave it up (a failure, or the session moved): another owner writes now.
            raise MediaserverError("unavailable", "the session is being rebuilt; try again")
        if tx.session.get("status") != "ended":
            self._update_emptiness(tx)
            self._settle_media_mode(tx)
        tx.change.session = {**tx.session, "last_seq": tx.seq}
        if self.unwritten:
            tx.change.opens = self.session
            tx.change.live_limit = self.live_limit  # a new session counts against the team's limit
        await self.store.apply(tx.change)  # raises before memory changes: nothing half-applied
        self.unwritten = False
        self.session.update(tx.change.session)
        for pid, row in tx.participants.items():
            if row["state"] == "left":
                if pid in self.participants:
                    self.departed.append(pid)
                self.participants.pop(pid, None)
                self.last_seen.pop(pid, None)
                self.connections.pop(pid, None)
            else:
                self.participants[pid] = row
        self.last_seq = tx.seq
        self._apply_questions(tx)
        self.recent.extend(e for e in tx.change.events if e["visibility"] in VISIBLE)
        async with self._changed:
            self._changed.notify_all()


async def _wait(changed: asyncio.Condition, seconds: float) -> bool:
    """``changed.wait()`` for at most ``seconds``; False if the time ran out. Cancelling it (a
    gateway's batch of polls is answered, ``run_polls``) leaves the lock held, as ``async with``
    expects: ``wait_for`` runs the wait in a task of its own, and a cancel arriving while it
    cancels that task for its timeout returned with the lock not yet taken back (Python 3.11)."""
    if hasattr(asyncio, "timeout"):
        try:
            async with asyncio.timeout(seconds):  # (Python 3.11+: in this task)
                await changed.wait()
            return True
        except TimeoutError:
            return False
    try:
        await asyncio.wait_for(changed.wait(), seconds)
        return True
    except asyncio.TimeoutError:
        return False
