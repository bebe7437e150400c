"""Meeting rules of a live session: the stage, mic & camera requests, chat, Q&A, breakout rooms.

A mixin of ``SessionCore``: each operation runs under the session's lock, writes
one transaction (participants, events, chat, questions, the session's meeting
state) and only then changes memory, like the lifecycle operations. The server
enforces every rule here; each refusal has its own error code.

Roles map onto the stage like this: a ``moderator`` is a speaker (host); a
``publisher`` may go on screen; a ``subscriber`` watches and may ask to "enable
mic & camera", which a speaker approves (the participant becomes a publisher
with a seat on screen) or declines. A seat is taken by the first publication
(or the approval) and freed by leaving the stage, being taken off it, or leaving.
"""

from __future__ import annotations

import random
import re
from collections import deque
from typing import Any

from mediaserver.control.tx import Tx
from mediaserver.errors import MediaserverError
from mediaserver.ids import new_id

START_EARLY = 300.0  # a speaker may start an event's session from 5 minutes before its slot
MAX_SPEAKERS_ON_SCREEN = 4
MAX_PARTICIPANTS_ON_SCREEN = 6
MAX_BREAKOUTS = 10
MAX_BREAKOUT_NAME = 30
MAX_CHAT = 1000  # characters per chat message
MAX_QUESTION = 500
MAX_ANSWER = 1000
CHAT_BURST, CHAT_WINDOW = 5, 5.0  # at most 5 messages per participant in any 5 seconds
QUESTION_BURST, QUESTION_WINDOW = 3, 30.0
CHAT_HISTORY = 100  # messages a (re)joining participant gets


E2EE = ("session_key", "passphrase")  # end-to-end encrypted rooms: their browsers hold the key
CIPHERTEXT_PREFIX = "e2ee1:"  # mediaserver.js's encrypted text: the prefix, then base64(IV + ciphertext + tag)
_CIPHERTEXT = re.compile(r"e2ee1:[A-Za-z0-9+/]+={0,2}")


def _ciphertext_limit(limit: int) -> int:
    """The longest encrypted form of ``limit`` characters (UTF-8 up to 4 bytes each, base64)."""
    return len(CIPHERTEXT_PREFIX) + 4 * ((12 + 4 * limit + 16 + 2) // 3)


def _text(value: str, limit: int, what: str, encrypted: bool = False) -> str:
    """A chat message, question or answer as stored. In an end-to-end encrypted room it must be
    ciphertext (the server never holds the plain text, so it cannot count its characters: the
    browser does, and the limit here is that of the longest ciphertext)."""
    if encrypted:
        value = value or ""
        if not _CIPHERTEXT.fullmatch(value):
            raise MediaserverError("message_not_encrypted", f"this room is end-to-end encrypted: send the {what} encrypted "
                                   "(mediaserver.js does), never in the clear")
        if len(value) > _ciphertext_limit(limit):
            raise MediaserverError("message_too_long", f"the {what} is longer than {limit} characters")
        return value
    value = (value or "").strip()
    if not value:
        raise MediaserverError("message_empty", f"the {what} is empty")
    if len(value) > limit:
        raise MediaserverError("message_too_long", f"the {what} has {len(value)} characters; the limit is {limit}")
    return value


def _when(ts: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _breakouts(meeting: dict) -> dict:
    """The breakout rooms as clients see them, from a session's meeting state."""
    return {"rooms": meeting.get("rooms", []), "open": bool(meeting.get("open")), "plan": meeting.get("plan", {})}


def public_question(q: dict) -> dict:
    return {
        "id": q["id"], "participant_id": q["participant_id"], "name": q["name"], "text": q["text"],
        "status": q["status"], "answer": q.get("answer"), "votes": q["votes"], "asked_at": q["asked_at"],
    }


class MeetingRules:
    # Provided by SessionCore.
    participants: dict[str, dict]
    session: dict[str, Any]
    session_id: str
    room: dict[str, Any]

    @property
    def _encrypted(self) -> bool:
        return self.room.get("encryption") in E2EE

    def _init_meeting(self) -> None:
        self.questions: dict[str, dict] = {}  # id -> row with "voters" (a set)
        self._said: dict[str, deque] = {}  # participant -> times of its recent chat messages
        self._asked: dict[str, deque] = {}
        self._no_chat = False  # known to have no chat message yet (no need to ask the store)

    async def _load_meeting(self) -> None:
        self.questions = {}
        self._no_chat = self.session["last_seq"] == 0
        if self.session["last_seq"] == 0:
            return  # a new session: no questions yet (and no chat: every message is an event)
        for q in await self.store.session_questions(self.session_id):
            q["voters"] = set(q["voters"])
            self.questions[q["id"]] = q

    # Views -------------------------------------------------------------------------

    @property
    def meeting(self) -> dict:
        return self.session.get("meeting") or {}

    def breakout_view(self) -> dict:
        return _breakouts(self.meeting)

    def room_of(self, participant_id: str) -> str | None:
        p = self.participants.get(participant_id)
        return p.get("breakout_id") if p else None

    def question_list(self, *, include_dismissed: bool = False) -> list[dict]:
        """Open questions first, most votes first (then oldest); then answered ones."""
        qs = [q for q in self.questions.values() if include_dismissed or q["status"] != "dismissed"]
        order = {"open": 0, "answered": 1, "dismissed": 2}
        qs.sort(key=lambda q: (order[q["status"]], -q["votes"], q["asked_at"]))
        return [public_question(q) for q in qs]

    async def chat_history(self, participant_id: str, limit: int = CHAT_HISTORY) -> list[dict]:
        """What this participant may read: its room's messages and those sent to every room."""
        if self._no_chat:
            return []  # (a new session's first joins: one query fewer each)
        room = self.room_of(participant_id)
        rows = await self.store.chat_history(self.session_id, [room, "*"], limit=limit)
        return [self._public_chat(r) for r in rows]

    @staticmethod
    def _public_chat(r: dict) -> dict:
        return {k: r[k] for k in ("id", "participant_id", "name", "breakout_id", "text", "at")}

    def _seats(self, tx: Tx) -> tuple[int, int]:
        """(speakers, other participants) holding a seat on screen."""
        speakers = others = 0
        for pid in set(self.participants) | set(tx.participants):
            p = tx.participant(pid)
            if p["state"] != "left" and p.get("on_stage"):
                if p["role"] == "moderator":
                    speakers += 1
                else:
                    others += 1
        return speakers, others

    def _member(self, participant_id: str) -> dict:
        p = self.participants.get(participant_id)
        if p is None:
            raise MediaserverError("participant_not_found", f"no participant {participant_id} in this session")
        return p

    def _seat_check(self, tx: Tx, role: str) -> None:
        speakers, others = self._seats(tx)
        if role == "moderator" and speakers >= MAX_SPEAKERS_ON_SCREEN:
            raise MediaserverError(
                "speakers_full", f"{MAX_SPEAKERS_ON_SCREEN} speakers are on screen already; one must leave the stage first"
            )
        if role != "moderator" and others >= MAX_PARTICIPANTS_ON_SCREEN:
            raise MediaserverError(
                "stage_full",
                f"{MAX_PARTICIPANTS_ON_SCREEN} participants are on screen already; one must leave the stage first",
            )

    # Events with registration ------------------------------------------------------------

    async def _admit_to_event(self, tx: Tx, identity: str, role: str, present: list[str]) -> None:
        """In the session of an event slot: only speakers until one starts it; then registered
        participants, and others only into spots nobody registered for (until capacity)."""
        if self.event is None or role == "moderator":
            return  # (a room belongs to an event's slot from its creation on, or never)
        slot = await self.store.slot_for_room(self.session["room_id"])
        if slot is None:
            return
        if not tx.meeting().get("started"):
            raise MediaserverError(
                "session_not_started", f"this session starts at {_when(slot['starts_at'])}; a speaker has not started it yet"
            )
        registered = set(slot["registered"])
        if identity in registered:
            return
        audience = [tx.participant(pid) for pid in present if tx.participant(pid)["role"] != "moderator"]
        held = len(registered - {p["identity"] for p in audience})  # spots kept for registered people not here yet
        if len(audience) + held >= slot["spots"]:
            raise MediaserverError(
                "room_full", f"all {slot['spots']} spots of this session are taken or held for registered participants"
            )

    async def start_session(self, by: str) -> dict:
        """A speaker opens an event's session to its participants (from 5 minutes before the slot)."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            slot = await self.store.slot_for_room(self.session["room_id"])
            tx = Tx(self, self.clock())
            if slot is not None and tx.now < slot["starts_at"] - START_EARLY:
                raise MediaserverError(
                    "too_early",
                    f"this session may be started from {_when(slot['starts_at'] - START_EARLY)} "
                    f"(5 minutes before it begins at {_when(slot['starts_at'])})",
                )
            if not tx.meeting().get("started"):
                tx.set_meeting(started=True, started_at=tx.now, started_by=by)
                tx.event("session_started", by)
                await self._commit(tx)
            return {"started": True, "started_at": self.meeting.get("started_at")}

    # Stage ---------------------------------------------------------------------------

    async def take_stage(self, participant_id: str) -> bool:
        """Give a participant about to publish a seat on screen; True if it just got one."""
        async with self._lock:
            self.require_live()
            p = self._member(participant_id)
            if p.get("on_stage"):
                return False
            if p["role"] == "subscriber":
                raise MediaserverError(
                    "publish_not_allowed", "ask to enable mic & camera first: a speaker has to approve it"
                )
            tx = Tx(self, self.clock())
            self._seat_check(tx, p["role"])
            tx.update_participant(participant_id, on_stage=True, stage_requested_at=None)
            tx.event("stage_joined", participant_id, role=p["role"])
            await self._commit(tx)
            return True

    async def request_stage(self, participant_id: str) -> None:
        async with self._lock:
            self.require_live()
            p = self._member(participant_id)
            if p["role"] != "subscriber" or p.get("on_stage"):
                raise MediaserverError("already_on_stage", "you may publish already: no request needed")
            if p.get("stage_requested_at") is not None:
                raise MediaserverError("stage_request_pending", "your request is waiting for a speaker")
            tx = Tx(self, self.clock())
            tx.update_participant(participant_id, stage_requested_at=tx.now)
            tx.event("stage_requested", participant_id, name=p["name"])
            await self._commit(tx)

    async def cancel_stage_request(self, participant_id: str) -> None:
        async with self._lock:
            self.require_live()
            p = self._member(participant_id)
            if p.get("stage_requested_at") is None:
                raise MediaserverError("no_stage_request", "you have no request waiting")
            tx = Tx(self, self.clock())
            tx.update_participant(participant_id, stage_requested_at=None)
            tx.event("stage_request_cancelled", participant_id)
            await self._commit(tx)

    async def answer_stage_request(self, by: str, participant_id: str, approve: bool) -> None:
        """A speaker approves (the participant gets a seat and may publish) or declines a request."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            p = self._member(participant_id)
            if p.get("stage_requested_at") is None:
                raise MediaserverError("no_stage_request", f"{p['name']} has no request waiting")
            tx = Tx(self, self.clock())
            if approve:
                self._seat_check(tx, "publisher")
                tx.update_participant(participant_id, role="publisher", on_stage=True, stage_requested_at=None)
                tx.event("stage_approved", participant_id, by=by)
                tx.event("role_changed", participant_id, role="publisher", previous=p["role"], by=by)
            else:
                tx.update_participant(participant_id, stage_requested_at=None)
                tx.event("stage_declined", participant_id, by=by)
            await self._commit(tx)

    async def leave_stage(self, participant_id: str) -> None:
        """A participant on screen steps off (its publications end); it keeps its role."""
        async with self._lock:
            self.require_live()
            p = self._member(participant_id)
            if not p.get("on_stage"):
                raise MediaserverError("not_on_stage", "you are not on screen")
            tx = Tx(self, self.clock())
            tx.update_participant(participant_id, on_stage=False)
            tx.event("stage_left", participant_id, reason="left")
            await self._commit(tx)

    async def remove_from_stage(self, by: str, participant_id: str) -> None:
        """A speaker takes someone off screen; a non-speaker also loses the permission to publish."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            p = self._member(participant_id)
            if not p.get("on_stage"):
                raise MediaserverError("not_on_stage", f"{p['name']} is not on screen")
            tx = Tx(self, self.clock())
            values: dict[str, Any] = {"on_stage": False}
            if p["role"] != "moderator":
                values["role"] = "subscriber"
            tx.update_participant(participant_id, **values)
            tx.event("stage_left", participant_id, reason="removed", by=by)
            if "role" in values:
                tx.event("role_changed", participant_id, role="subscriber", previous=p["role"], by=by)
            await self._commit(tx)

    async def remove(self, by: str, participant_id: str) -> None:
        """A speaker removes someone from the session."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            self._member(participant_id)
            tx = Tx(self, self.clock())
            tx.event("removed", participant_id, visibility="log", by=by)
            self._leave(tx, participant_id, "removed")
            await self._commit(tx)

    # Chat ------------------------------------------------------------------------------

    def _rate(self, book: dict, participant_id: str, now: float, burst: int, window: float, what: str) -> None:
        times = book.setdefault(participant_id, deque(maxlen=burst))
        if len(times) == burst and now - times[0] < window:
            wait = window - (now - times[0])
            raise MediaserverError("rate_limited", f"too many {what}: wait {wait:.1f} s")
        times.append(now)

    async def chat(self, participant_id: str, text: str, *, all_rooms: bool = False) -> dict:
        """Say something to the room one is in (the main room or a breakout room); speakers may
        also write to every room at once."""
        async with self._lock:
            self.require_live()
            p = self._member(participant_id)
            text = _text(text, MAX_CHAT, "message", self._encrypted)
            if all_rooms:
                self._require_moderator(participant_id)
            now = self.clock()
            self._rate(self._said, participant_id, now, CHAT_BURST, CHAT_WINDOW, "messages")
            tx = Tx(self, now)
            room = "*" if all_rooms else p.get("breakout_id")
            row = {
                "id": new_id("msg"), "session_id": self.session_id, "participant_id": participant_id,
                "name": p["name"], "breakout_id": room, "text": text, "at": now, "seq": tx.seq + 1,
            }
            message = self._public_chat(row)
            tx.event("chat", participant_id, "broadcast" if all_rooms else "room", breakout_id=room, message=message)
            tx.change.chat.append(row)
            await self._commit(tx)
            self._no_chat = False
            return message

    # Q&A -------------------------------------------------------------------------------

    async def ask(self, participant_id: str, text: str) -> dict:
        async with self._lock:
            self.require_live()
            p = self._member(participant_id)
            text = _text(text, MAX_QUESTION, "question", self._encrypted)
            now = self.clock()
            self._rate(self._asked, participant_id, now, QUESTION_BURST, QUESTION_WINDOW, "questions")
            tx = Tx(self, now)
            row = {
                "id": new_id("q"), "session_id": self.session_id, "participant_id": participant_id, "name": p["name"],
                "text": text, "status": "open", "answer": None, "answered_by": None, "votes": 0,
                "asked_at": now, "updated_at": now,
            }
            tx.change.new_questions.append(row)
            tx.event("question_asked", participant_id, question=public_question(row))
            await self._commit(tx)
            return public_question(row)

    def _question(self, question_id: str) -> dict:
        q = self.questions.get(question_id)
        if q is None:
            raise MediaserverError("question_not_found", f"no question {question_id} in this session")
        return q

    async def upvote(self, participant_id: str, question_id: str) -> dict:
        async with self._lock:
            self.require_live()
            self._member(participant_id)
            q = self._question(question_id)
            if q["status"] != "open":
                raise MediaserverError("question_closed", f"this question is {q['status']}")
            if participant_id in q["voters"]:
                raise MediaserverError("already_voted", "you have upvoted this question already")
            tx = Tx(self, self.clock())
            tx.change.votes.append({"question_id": question_id, "participant_id": participant_id, "at": tx.now})
            tx.change.question_updates.append((question_id, {"votes": q["votes"] + 1, "updated_at": tx.now}))
            tx.event("question_upvoted", participant_id, question_id=question_id, votes=q["votes"] + 1)
            await self._commit(tx)
            return public_question(self.questions[question_id])

    async def settle_question(self, by: str, question_id: str, status: str, answer: str | None = None) -> dict:
        """A speaker answers (optionally with a written answer), marks answered, or dismisses."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            q = self._question(question_id)
            if status not in ("answered", "dismissed"):
                raise MediaserverError("invalid_request", "status is answered or dismissed")
            if answer is not None:
                answer = _text(answer, MAX_ANSWER, "answer", self._encrypted)
            tx = Tx(self, self.clock())
            values = {"status": status, "answered_by": by, "updated_at": tx.now}
            if answer is not None:
                values["answer"] = answer
            tx.change.question_updates.append((question_id, values))
            updated = {**q, **values}
            tx.event(f"question_{status}", by, question=public_question(updated))
            await self._commit(tx)
            return public_question(self.questions[question_id])

    def _apply_questions(self, tx: Tx) -> None:
        for row in tx.change.new_questions:
            self.questions[row["id"]] = {**row, "voters": set()}
        for qid, values in tx.change.question_updates:
            self.questions[qid].update(values)
        for vote in tx.change.votes:
            self.questions[vote["question_id"]]["voters"].add(vote["participant_id"])

    # Breakout rooms ----------------------------------------------------------------------

    def _room_name(self, name: str, rooms: list[dict], except_id: str | None = None) -> str:
        name = (name or "").strip()
        if not name:
            raise MediaserverError("breakout_name_empty", "a breakout room needs a name")
        if len(name) > MAX_BREAKOUT_NAME:
            raise MediaserverError(
                "breakout_name_too_long", f"{name!r} has {len(name)} characters; the limit is {MAX_BREAKOUT_NAME}"
            )
        if any(r["name"].casefold() == name.casefold() and r["id"] != except_id for r in rooms):
            raise MediaserverError("breakout_name_taken", f"there is a breakout room called {name!r} already")
        return name

    def _rooms(self, tx: Tx) -> list[dict]:
        return [dict(r) for r in tx.meeting().get("rooms", [])]

    def _find_room(self, rooms: list[dict], breakout_id: str | None) -> dict | None:
        if breakout_id is None:
            return None
        room = next((r for r in rooms if r["id"] == breakout_id), None)
        if room is None:
            raise MediaserverError("breakout_not_found", f"no breakout room {breakout_id}")
        return room

    async def create_breakouts(self, by: str, names: list[str]) -> dict:
        """Add breakout rooms (up to 10 in a session), before or while they are open."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            tx = Tx(self, self.clock())
            rooms = self._rooms(tx)
            if len(rooms) + len(names) > MAX_BREAKOUTS:
                raise MediaserverError(
                    "too_many_breakouts", f"a session has at most {MAX_BREAKOUTS} breakout rooms ({len(rooms)} exist)"
                )
            for name in names:
                rooms.append({"id": new_id("brk"), "name": self._room_name(name, rooms)})
            tx.set_meeting(rooms=rooms)
            tx.event("breakouts_changed", by, **_breakouts(tx.meeting()))
            await self._commit(tx)
            return self.breakout_view()

    async def rename_breakout(self, by: str, breakout_id: str, name: str) -> dict:
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            tx = Tx(self, self.clock())
            rooms = self._rooms(tx)
            room = self._find_room(rooms, breakout_id)
            room["name"] = self._room_name(name, rooms, except_id=breakout_id)
            tx.set_meeting(rooms=rooms)
            tx.event("breakouts_changed", by, **_breakouts(tx.meeting()))
            await self._commit(tx)
            return self.breakout_view()

    async def delete_breakout(self, by: str, breakout_id: str) -> dict:
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            tx = Tx(self, self.clock())
            if tx.meeting().get("open"):
                raise MediaserverError("breakouts_open", "close the breakout rooms before deleting one")
            rooms = self._rooms(tx)
            self._find_room(rooms, breakout_id)
            plan = {pid: b for pid, b in tx.meeting().get("plan", {}).items() if b != breakout_id}
            tx.set_meeting(rooms=[r for r in rooms if r["id"] != breakout_id], plan=plan)
            tx.event("breakouts_changed", by, **_breakouts(tx.meeting()))
            await self._commit(tx)
            return self.breakout_view()

    async def assign_breakout(self, by: str, assignments: dict[str, str | None]) -> dict:
        """Put participants in rooms (None: the main room). While rooms are open they move at once."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            tx = Tx(self, self.clock())
            rooms = self._rooms(tx)
            plan = dict(tx.meeting().get("plan", {}))
            for pid, breakout_id in assignments.items():
                self._member(pid)
                self._find_room(rooms, breakout_id)
                if breakout_id is None:
                    plan.pop(pid, None)
                else:
                    plan[pid] = breakout_id
            tx.set_meeting(plan=plan)
            self._move_if_open(tx, assignments, by)
            tx.event("breakouts_changed", by, **_breakouts(tx.meeting()))
            await self._commit(tx)
            return self.breakout_view()

    async def auto_assign_breakouts(self, by: str) -> dict:
        """Split the participants who are not speakers evenly (sizes differ by one at most), at random."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            tx = Tx(self, self.clock())
            rooms = self._rooms(tx)
            if not rooms:
                raise MediaserverError("no_breakouts", "create breakout rooms first")
            people = [pid for pid, p in self.participants.items() if p["role"] != "moderator"]
            random.shuffle(people)
            plan = {pid: rooms[i % len(rooms)]["id"] for i, pid in enumerate(people)}
            tx.set_meeting(plan=plan)
            self._move_if_open(tx, plan, by)
            tx.event("breakouts_changed", by, **_breakouts(tx.meeting()))
            await self._commit(tx)
            return self.breakout_view()

    async def open_breakouts(self, by: str) -> dict:
        """Open the rooms: everyone planned into a room moves there (media, chat, lists scoped to it)."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            tx = Tx(self, self.clock())
            if tx.meeting().get("open"):
                raise MediaserverError("breakouts_open", "the breakout rooms are open already")
            if not tx.meeting().get("rooms"):
                raise MediaserverError("no_breakouts", "create breakout rooms first")
            tx.set_meeting(open=True)
            for pid, breakout_id in tx.meeting().get("plan", {}).items():
                if pid in self.participants:
                    self._move(tx, pid, breakout_id, by)
            tx.event("breakouts_opened", by, **_breakouts(tx.meeting()))
            await self._commit(tx)
            return self.breakout_view()

    async def close_breakouts(self, by: str) -> dict:
        """Close every room: everyone comes back to the main session."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            tx = Tx(self, self.clock())
            if not tx.meeting().get("open"):
                raise MediaserverError("breakouts_closed", "the breakout rooms are not open")
            tx.set_meeting(open=False)
            for pid, p in self.participants.items():
                if p.get("breakout_id") is not None:
                    self._move(tx, pid, None, by)
            tx.event("breakouts_closed", by, **_breakouts(tx.meeting()))
            await self._commit(tx)
            return self.breakout_view()

    async def visit_breakout(self, by: str, breakout_id: str | None) -> dict:
        """A speaker goes into a room (or back to the main room, with None)."""
        async with self._lock:
            self.require_live()
            self._require_moderator(by)
            tx = Tx(self, self.clock())
            if not tx.meeting().get("open"):
                raise MediaserverError("breakouts_closed", "the breakout rooms are not open")
            self._find_room(self._rooms(tx), breakout_id)
            self._move(tx, by, breakout_id, by)
            await self._commit(tx)
            return self.breakout_view()

    def _move(self, tx: Tx, pid: str, breakout_id: str | None, by: str) -> None:
        before = tx.participant(pid).get("breakout_id")
        if before == breakout_id:
            return
        tx.update_participant(pid, breakout_id=breakout_id)
        tx.event("moved", pid, breakout_id=breakout_id, previous=before, by=by)

    def _move_if_open(self, tx: Tx, moves: dict[str, str | None], by: str) -> None:
        """While rooms are open, (re)assigned participants move at once."""
        if tx.meeting().get("open"):
            for pid, breakout_id in moves.items():
                self._move(tx, pid, breakout_id, by)
