"""The participant WebSocket (/v1/ws): join or resume, then commands in and events out.

The gateway keeps no session state: the SessionActor owns it, and this
connection long-polls the actor for the session's events (the poll also
tells the actor the participant is still there).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.datastructures import State
from starlette.websockets import WebSocket, WebSocketDisconnect

from mediaserver import tokens
from mediaserver.api import messages as m
from mediaserver.api.grants import admit
from mediaserver.api.models import Room
from mediaserver.api.websocket import AsgiSocket, Socket
from mediaserver.errors import MediaserverError

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 128 * 1024
OPEN_ATTEMPTS = 3  # a first join that another opened the session before: joins it (once more if that one ended meanwhile)


def _validation_message(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(x) for x in first.get("loc", ())) or "message"
    return f"{where}: {first.get('msg', 'invalid')}"


class Connection:
    def __init__(self, ws: Socket | AsgiSocket, state: State):
        self.ws = ws
        self.settings = state.settings
        self.store = state.store
        self.control = state.control
        self.reconnect_secret = state.reconnect_secret
        self.client_address = state.client_address
        self.ice_servers = state.ice_servers
        self.admissions = state.admissions
        self.session_id: str | None = None
        self.participant_id: str | None = None
        self.role: str | None = None
        self.connection_id: str | None = None
        self.last_seq = 0
        self.finished = False  # left, removed or ended: nothing to disconnect on close
        self.leaving = False  # a leave command is being carried out
        self._send_lock = asyncio.Lock()
        self.metrics = state.metrics
        self._handling = 0  # commands being carried out
        self._idle = asyncio.Event()  # set while none is
        self._idle.set()

    async def close(self, code: int, reason: str = "") -> None:
        try:
            await self.ws.close(code=code, reason=reason[:120])
        except RuntimeError:
            pass  # already closed

    async def receive(self) -> Any:
        text = await self.ws.receive()
        if not isinstance(text, str):
            raise MediaserverError("invalid_request", "messages are JSON in text frames; a binary frame is not one")
        if len(text) > MAX_MESSAGE_BYTES:
            raise MediaserverError("invalid_request", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise MediaserverError("invalid_request", "messages must be JSON objects")
        try:
            return m.client_message.validate_python(data)
        except ValidationError as e:
            error = MediaserverError("invalid_request", _validation_message(e))
            # Answer with the command's id when it has a usable one, so the client knows which failed.
            rid = data.get("id") if isinstance(data, dict) else None
            error.request_id = rid if isinstance(rid, str) and len(rid) <= 64 else None
            raise error

    # Lifecycle ----------------------------------------------------------------

    async def run(self) -> None:
        try:
            async with asyncio.timeout(self.settings.join_timeout_seconds):  # (no task of its own, as wait_for's)
                first = await self.receive()
        except asyncio.TimeoutError:
            await self.send(m.Error(code="invalid_request", message="send join or resume first"))
            return await self.close(m.CLOSE_PROTOCOL, "no join")
        except MediaserverError as e:
            await self.send(m.Error(code=e.code, message=e.message))
            return await self.close(m.CLOSE_PROTOCOL, e.code)
        except WebSocketDisconnect:
            return
        try:
            await self.admissions.take()  # a burst's joins go on a few per turn, in the order they came
            if isinstance(first, m.Join):
                await self.join(first)
            elif isinstance(first, m.Resume):
                await self.resume(first)
            else:
                raise MediaserverError("not_joined", "the first message must be join or resume")
        except MediaserverError as e:
            self.metrics.joins.labels(e.code).inc()
            await self.send(m.Error(id=first.id, code=e.code, message=e.message))
            code = m.CLOSE_SESSION_ENDED if e.code == "session_ended" else m.CLOSE_AUTH_FAILED
            return await self.close(code, e.code)
        except WebSocketDisconnect:
            await self._disconnected()
            return
        self.metrics.joins.labels("resumed" if isinstance(first, m.Resume) else "joined").inc()
        self.metrics.connections.inc()
        tasks = [asyncio.create_task(t) for t in (self.read_loop(), self.event_loop(), self.ping_loop())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.metrics.connections.dec()
            for t in tasks:
                t.cancel()
            for t, res in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True)):
                if isinstance(res, Exception) and not isinstance(res, (WebSocketDisconnect, asyncio.CancelledError)):
                    log.error("connection of %s ended by %r", self.participant_id, res, exc_info=res)
            await self._disconnected()

    async def _disconnected(self) -> None:
        if self.finished or self.session_id is None or self.participant_id is None:
            return
        try:
            await self.control.call(
                self.session_id, "disconnect", self.participant_id, self.connection_id
            )
        except MediaserverError as e:
            log.info("disconnect of %s not recorded: %s", self.participant_id, e)

    async def join(self, msg: m.Join) -> None:
        admission = await admit(self.store, msg.token, msg.room_id)
        grant, room, current, slot = admission.grant, admission.room, admission.session, admission.slot
        if slot is not None and grant.role != "moderator":
            # An event's session opens only when a speaker starts it: do not start one for a participant.
            if current is None or not (current.get("meeting") or {}).get("started"):
                starts = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(slot["starts_at"]))
                raise MediaserverError(
                    "session_not_started", f"this session starts at {starts}; you can join once a speaker has started it"
                )
        if room["type"] == "group" and grant.role != "moderator" and current is None:
            raise MediaserverError(
                "not_group_leader", "only the group's leaders and co-leaders may start a session for it; join once it is live"
            )
        address = self.client_address(self.ws.client, self.ws.headers.get("x-forwarded-for"))
        for attempt in range(OPEN_ATTEMPTS):
            session, new = await self.control.open_session(room, address, existing=current, slot=slot)
            self.session_id = session["id"]
            try:
                result = await self.control.call(self.session_id, "join", grant.identity, grant.name, grant.role, new=new)
                break
            except MediaserverError as e:
                if new and new.get("unwritten"):
                    self.control.forget(self.session_id)  # (never written: no such session)
                # Another first join opened the room's session before ours could: join that one.
                if e.code != "session_opened_elsewhere" or attempt == OPEN_ATTEMPTS - 1:
                    raise
                current = await self.store.unended_session(room["id"])
        ttl = max(grant.expires_at - time.time(), 0) + self.settings.grace_seconds
        await self._welcome(msg.id, result, room, resumed=False, ttl=ttl)

    async def resume(self, msg: m.Resume) -> None:
        session_id, participant_id = tokens.verify_reconnect(msg.reconnect_token, self.reconnect_secret)
        session = await self.store.get_session(session_id)
        if session is None:
            raise MediaserverError("session_not_found", "the session of this reconnect token does not exist")
        if session["status"] == "ended":
            raise MediaserverError("session_ended", "this session has ended")
        room = await self.store.get_room(session["room_id"])
        self.session_id = session_id
        result = await self.control.call(session_id, "resume", participant_id)
        ttl = self.settings.token_default_ttl + self.settings.grace_seconds
        await self._welcome(msg.id, result, room, resumed=True, ttl=ttl)

    async def _welcome(self, msg_id: str | None, result: dict, room: dict, *, resumed: bool, ttl: float) -> None:
        p = dict(result["participant"])
        self.connection_id = p.pop("connection_id")
        self.participant_id = p["id"]
        self.role = p["role"]
        self.last_seq = result["last_seq"]
        reconnect = tokens.mint_reconnect(
            self.reconnect_secret, session_id=self.session_id, participant_id=p["id"], ttl=ttl
        )
        await self.send(
            m.Joined(
                id=msg_id,
                resumed=resumed,
                participant=p,
                session=result["session"],
                room=Room.from_row(room).model_dump(mode="json"),
                participants=result["participants"],
                reconnect_token=reconnect,
                last_seq=self.last_seq,
                grace_seconds=self.settings.grace_seconds,
                ping_seconds=self.settings.ping_seconds,
                tracks=result.get("tracks", []),
                chat=result.get("chat", []),
                questions=result.get("questions", []),
                breakouts=result.get("breakouts", {}),
                event=result.get("event"),
                ice_servers=self.ice_servers.for_participant(p["id"]),
                media_mode=result.get("media_mode", "routed"),
                archive=result.get("archive"),
                speakers=result.get("speakers"),
            )
        )

    # Loops ---------------------------------------------------------------------

    async def read_loop(self) -> None:
        while True:
            try:
                msg = await self.receive()
            except MediaserverError as e:
                await self.send(m.Error(id=getattr(e, "request_id", None), code=e.code, message=e.message))
                continue
            except WebSocketDisconnect:
                return
            self._handling += 1
            self._idle.clear()
            try:
                done = await self.handle(msg)
            except MediaserverError as e:
                await self.send(m.Error(id=msg.id, code=e.code, message=e.message))
                continue
            except (WebSocketDisconnect, asyncio.CancelledError):
                raise
            except Exception:
                if self.ws.gone:
                    return  # the client went away in the middle of it
                # A bug in one command must not drop the connection (it would close without a
                # close frame): the command fails, the participant stays.
                log.exception("%s from %s failed", getattr(msg, "type", "?"), self.participant_id)
                await self.send(m.Error(id=msg.id, code="internal", message="the server failed on this command; try again"))
                continue
            finally:
                self._handling -= 1
                if not self._handling:
                    self._idle.set()
            if done:
                return

    async def _close_ended(self) -> None:
        """The session ended: answer the command that ended it (if it came from here) first, then close."""
        self.finished = True
        try:
            await asyncio.wait_for(self._idle.wait(), 10)
        except asyncio.TimeoutError:
            pass
        await self.close(m.CLOSE_SESSION_ENDED, "session ended")

    async def handle(self, msg: Any) -> bool:
        """Run one command; True when the connection should close."""
        sid, pid = self.session_id, self.participant_id
        if isinstance(msg, m.Ping):
            await self.send(m.ServerPong(id=msg.id))
        elif isinstance(msg, m.Pong):
            pass
        elif isinstance(msg, (m.Join, m.Resume)):
            raise MediaserverError("invalid_request", "already joined on this connection")
        elif isinstance(msg, m.Leave):
            self.leaving = True  # our own "left" event is the answer to this, not a removal
            try:
                await self.control.call(sid, "leave", pid, "left")
            except MediaserverError:
                self.leaving = False
                raise
            self.finished = True
            await self.send(m.Ack(id=msg.id))
            await self.close(m.CLOSE_LEFT, "left")
            return True
        elif isinstance(msg, m.EndSession):
            await self.control.call(sid, "end", "moderator", pid)
            await self.send(m.Ack(id=msg.id))
        elif isinstance(msg, m.SetRole):
            await self.control.call(sid, "set_role", pid, msg.participant_id, msg.role)
            await self.send(m.Ack(id=msg.id))
        elif isinstance(msg, m.Offer):
            if msg.pc != "publish":
                raise MediaserverError("invalid_request", "the server makes the offers on the subscribe connection")
            answer = await self.control.call(sid, "publish", pid, msg.sdp, msg.sources)
            await self.send(m.ServerAnswer(id=msg.id, sdp=answer))
        elif isinstance(msg, m.Answer):
            if msg.pc != "subscribe":
                raise MediaserverError("invalid_request", "answers are for the subscribe connection")
            await self.control.call(sid, "subscribe_answer", pid, msg.sdp)
            await self.send(m.Ack(id=msg.id))
        elif isinstance(msg, m.Candidate):
            await self.send(m.Ack(id=msg.id))  # ICE-lite learns the address from the checks themselves
        elif isinstance(msg, m.PeerPublish):
            tracks = await self.control.call(sid, "peer_publish", pid, [t.model_dump(exclude={"id"}) for t in msg.tracks])
            await self.send(m.Ack(id=msg.id, data={"tracks": tracks}))
        elif isinstance(msg, m.Signal):
            await self.control.call(sid, "signal", pid, msg.to, msg.link, msg.payload())
            await self.send(m.Ack(id=msg.id))
        elif isinstance(msg, m.DirectFailed):
            await self.control.call(sid, "direct_failed", pid)
            await self.send(m.Ack(id=msg.id))
        elif isinstance(msg, m.QualityReport):
            await self.control.call(sid, "client_quality", pid, msg.loss_percent, msg.jitter_ms)
            await self.send(m.Ack(id=msg.id))
        elif isinstance(msg, m.ArchiveStart):
            data = await self.control.call(sid, "start_archive", pid, msg.name, msg.output)
            await self.send(m.Ack(id=msg.id, data=data))
        elif isinstance(msg, m.ArchiveStop):
            data = await self.control.call(sid, "stop_archive", pid, msg.archive_id)
            await self.send(m.Ack(id=msg.id, data=data))
        elif isinstance(msg, m.Subscribe):
            await self.control.call(sid, "set_subscribed", pid, msg.track_id, msg.subscribed)
            await self.send(m.Ack(id=msg.id))
        elif isinstance(msg, m.VideoQuality):
            await self.control.call(sid, "set_video_quality", pid, msg.track_id, msg.quality, msg.frame_rate)
            await self.send(m.Ack(id=msg.id))
        elif isinstance(msg, m.VideoFallback):
            await self.control.call(sid, "publisher_video", pid, msg.track_id, msg.state)
            await self.send(m.Ack(id=msg.id))
        elif isinstance(msg, m.Mute):
            await self.control.call(sid, "set_muted", pid, msg.track_id, msg.muted)
            await self.send(m.Ack(id=msg.id))
        else:
            method, args = self._meeting_call(msg, pid)
            data = await self.control.call(sid, method, *args)
            await self.send(m.Ack(id=msg.id, data=data))
        return False

    @staticmethod
    def _meeting_call(msg: Any, pid: str) -> tuple[str, tuple]:
        """The SessionActor method (and arguments) a stage, chat, Q&A or breakout command runs."""
        if isinstance(msg, m.StartSession):
            return "start_session", (pid,)
        if isinstance(msg, m.RequestStage):
            return "request_stage", (pid,)
        if isinstance(msg, m.CancelStageRequest):
            return "cancel_stage_request", (pid,)
        if isinstance(msg, m.AnswerStageRequest):
            return "answer_stage_request", (pid, msg.participant_id, msg.approve)
        if isinstance(msg, m.LeaveStage):
            return "leave_stage", (pid,)
        if isinstance(msg, m.RemoveFromStage):
            return "remove_from_stage", (pid, msg.participant_id)
        if isinstance(msg, m.RemoveParticipant):
            return "remove", (pid, msg.participant_id)
        if isinstance(msg, m.Chat):
            return "chat", (pid, msg.text, msg.all_rooms)
        if isinstance(msg, m.ChatHistory):
            return "chat_history", (pid, msg.limit)
        if isinstance(msg, m.Ask):
            return "ask", (pid, msg.text)
        if isinstance(msg, m.Upvote):
            return "upvote", (pid, msg.question_id)
        if isinstance(msg, m.AnswerQuestion):
            return "settle_question", (pid, msg.question_id, msg.status, msg.answer)
        if isinstance(msg, m.Questions):
            return "questions", (pid,)
        if isinstance(msg, m.BreakoutCreate):
            return "breakouts", ("create_breakouts", pid, msg.names)
        if isinstance(msg, m.BreakoutRename):
            return "breakouts", ("rename_breakout", pid, msg.breakout_id, msg.name)
        if isinstance(msg, m.BreakoutDelete):
            return "breakouts", ("delete_breakout", pid, msg.breakout_id)
        if isinstance(msg, m.BreakoutAssign):
            return "breakouts", ("assign_breakout", pid, msg.assignments)
        if isinstance(msg, m.BreakoutAutoAssign):
            return "breakouts", ("auto_assign_breakouts", pid)
        if isinstance(msg, m.BreakoutOpen):
            return "breakouts", ("open_breakouts", pid)
        if isinstance(msg, m.BreakoutClose):
            return "breakouts", ("close_breakouts", pid)
        if isinstance(msg, m.BreakoutVisit):
            return "breakouts", ("visit_breakout", pid, msg.breakout_id)
        raise MediaserverError("invalid_request", f"unknown message type {msg.type!r}")

    async def event_loop(self) -> None:
        while True:
            try:
                res = await self.control.call(
                    self.session_id,
                    "wait_events",
                    self.participant_id,
                    self.last_seq,
                    self.settings.poll_seconds,
                    self.connection_id,
                )
            except MediaserverError as e:
                session = await self.store.get_session(self.session_id)
                if session and session["status"] == "ended":
                    # Its owner let it go: what was said since our last event comes from the record.
                    missed = await self.store.session_events(self.session_id, after_seq=self.last_seq, broadcast_only=True)
                    for ev in missed:
                        if ev["visibility"] == "broadcast":
                            await self._send_event(ev)
                    return await self._close_ended()
                log.warning("event stream of %s stopped: %s", self.participant_id, e)
                await self.send(m.Error(code=e.code, message=e.message))
                return await self.close(m.CLOSE_UNAVAILABLE, e.code)
            if res.get("superseded"):
                self.finished = True  # the participant lives on in its newer connection
                return await self.close(m.CLOSE_REMOVED, "superseded")
            for ev in res["events"]:
                await self._send_event(ev)
                if ev["type"] == "session_ended":
                    return await self._close_ended()
                if ev["participant_id"] == self.participant_id:
                    if ev["type"] == "role_changed":
                        self.role = ev["data"]["role"]
                    elif ev["type"] == "left" and not self.leaving:
                        self.finished = True
                        return await self.close(m.CLOSE_REMOVED, ev["data"].get("reason", "removed"))
            # Past what this participant was not meant to see, too: the next poll starts there.
            self.last_seq = max(self.last_seq, res.get("last_seq", 0))
            # Signaling after the events it follows from (a peer's offer after its stage_joined).
            for signal in res.get("messages", []):
                await self.send(self._signal_message(signal))

    @staticmethod
    def _signal_message(signal: dict) -> m.ServerMessage:
        kind = signal["type"]
        if kind == "media_reset":
            return m.MediaReset(reason=signal["reason"])
        if kind == "signal":
            return m.ServerSignal(**{k: v for k, v in signal.items() if k != "type"})
        if kind == "peer_closed":
            return m.PeerClosed(participant_id=signal["participant_id"], as_publisher_only=signal["as_publisher_only"],
                                reason=signal["reason"])
        if kind == "peers_changed":
            return m.PeersChanged()
        if kind == "layers":
            return m.Layers(track_id=signal["track_id"], active=signal["active"])
        if kind == "speakers":
            return m.Speakers(active=signal["active"], speaking=signal["speaking"])
        if kind.startswith("video_"):
            return m.VideoAdaptation(type=kind, track_id=signal["track_id"], reason=signal["reason"])
        return m.ServerOffer(sdp=signal["sdp"])

    async def send(self, msg: m.ServerMessage) -> None:
        async with self._send_lock:
            await self.ws.send_text(msg.model_dump_json(by_alias=True))

    async def _send_event(self, ev: dict) -> None:
        self.last_seq = max(self.last_seq, ev["seq"])
        await self.send(
            m.SessionEvent(seq=ev["seq"], event=ev["type"], participant_id=ev["participant_id"], at=ev["at"], data=ev["data"])
        )

    async def ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ping_seconds)
            await self.send(m.ServerPing(ts=time.time()))


async def websocket_endpoint(ws: WebSocket) -> None:
    """/v1/ws through ASGI (an in-process test client, a deployment behind a root path); uvicorn's
    connections are handed to ``Connection`` by mediaserver/api/websocket.py."""
    await ws.accept()
    await Connection(AsgiSocket(ws), ws.app.state).run()
