"""Locust load test for mediaserver: participants who join rooms, chat, ask and upvote questions,
ask for the stage, move between breakout rooms, reconnect, publish and subscribe, and leave.

    MEDIASERVER_KEY=KEY_ID:SECRET locust -f loadtest/locustfile.py --headless \\
        --host http://127.0.0.1:7880 -u 40 -r 10 -t 2m

Settings (environment variables):
    MEDIASERVER_KEY       API key "id:secret" (required): rooms and tokens are made with it
    LOADTEST_ROOM_SIZE    participants per room (default 10); the first of each room is its host
    LOADTEST_MEDIA_EVERY  one participant in this many publishes synthetic media through the load
                          client (loadtest/client.py) for LOADTEST_MEDIA_SECONDS (default: 0, none),
                          to two subscribers, in a room of their own (see ``media``)

Every WebSocket command is a locust request (type "ws"): join latency percentiles, and failures
grouped by the server's error code, are in locust's tables; media delivered is type "media".
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import subprocess
import sys
import time

import gevent
import httpx
import websocket
from gevent.event import AsyncResult
from locust import User, between, events, task

ROOM_SIZE = int(os.environ.get("LOADTEST_ROOM_SIZE", "10"))
MEDIA_EVERY = int(os.environ.get("LOADTEST_MEDIA_EVERY", "0"))
MEDIA_SECONDS = float(os.environ.get("LOADTEST_MEDIA_SECONDS", "5"))
_numbers = itertools.count()
_rooms: dict[int, str] = {}


class CommandFailed(Exception):
    """The server refused a command: the message starts with its error code."""


class MeetingUser(User):
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        key = os.environ.get("MEDIASERVER_KEY", "")
        if ":" not in key:
            raise RuntimeError("set MEDIASERVER_KEY=id:secret")
        self.key = tuple(key.split(":", 1))
        self.number = next(_numbers)
        self.is_host = self.number % ROOM_SIZE == 0
        self.http = httpx.Client(base_url=self.host, auth=self.key, timeout=30)
        self.room_id = self._room(self.number // ROOM_SIZE)
        self.identity = f"load-{self.number}"
        self.replies: dict[str, AsyncResult] = {}
        self.ids = itertools.count()
        self.last_chat = self.last_question = 0.0
        self.questions: list[str] = []
        self.ws = None
        self.closed_by_server = ""
        self._join()
        if MEDIA_EVERY and self.number % MEDIA_EVERY == 1:
            gevent.spawn(self.media)  # beside the other tasks, as a participant with a camera would

    def _room(self, index: int) -> str:
        if index not in _rooms:
            r = self.http.post("/v1/rooms", json={"name": f"load room {index}", "media_mode": "routed"})
            r.raise_for_status()
            _rooms.setdefault(index, r.json()["id"])
        return _rooms[index]

    # Plumbing ---------------------------------------------------------------------

    def _measure(self, name: str, fn):
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as e:
            events.request.fire(request_type="ws", name=name, response_time=(time.perf_counter() - start) * 1000,
                                response_length=0, exception=e)
            return None
        events.request.fire(request_type="ws", name=name, response_time=(time.perf_counter() - start) * 1000,
                            response_length=0, exception=None)
        return result

    def _connect(self, first: dict) -> dict:
        url = self.host.replace("http", "ws", 1) + "/v1/ws"
        ws = websocket.create_connection(url, timeout=30)
        ws.send(json.dumps(first))
        msg = json.loads(ws.recv())
        if msg["type"] != "joined":
            ws.close()
            raise CommandFailed(f"{msg.get('code')}: {msg.get('message')}")
        # Only a joined connection becomes the user's: a stop that interrupts a join or a
        # resume half-way leaves ``self.ws`` None, not a socket that was never (or no longer) in.
        self.ws = ws
        self.joined = msg
        self.closed_by_server = ""
        self.opened = (first["type"], time.monotonic())
        self.reader = gevent.spawn(self._read, self.ws)
        return msg

    def _read(self, ws) -> None:
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    # Why the server let us go (RFC 6455 section 5.5.1): a failure then names its cause.
                    code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                    self.closed_by_server = f"{code} {data[2:].decode(errors='replace')}".strip()
                    return
                msg = json.loads(data)
                if msg.get("id") in self.replies:
                    self.replies.pop(msg["id"]).set(msg)
                elif msg["type"] == "ping":
                    ws.send(json.dumps({"type": "pong"}))
        except Exception:
            return  # closed

    def command(self, msg: dict) -> dict:
        if self.ws is None:
            raise CommandFailed("not connected: the last join or resume failed")
        if self.closed_by_server:
            raise CommandFailed(f"the server closed the connection ({self.closed_by_server})")
        mid = f"u{next(self.ids)}"
        waiter = self.replies[mid] = AsyncResult()
        self.ws.send(json.dumps({**msg, "id": mid}))
        reply = waiter.get(timeout=30)
        if reply["type"] == "error":
            raise CommandFailed(f"{reply['code']}: {reply['message']}")
        return reply

    def _token(self) -> str:
        role = "moderator" if self.is_host else random.choice(["publisher", "subscriber", "subscriber"])
        r = self.http.post(f"/v1/rooms/{self.room_id}/tokens", json={"identity": self.identity, "role": role})
        r.raise_for_status()
        return r.json()["token"]

    def _join(self) -> None:
        token = self._token()
        self._measure("join", lambda: self._connect({"type": "join", "token": token, "room_id": self.room_id}))

    # Tasks -------------------------------------------------------------------------------

    @task(5)
    def chat(self) -> None:
        if time.time() - self.last_chat < 1.1:  # the server allows 5 messages in 5 seconds
            return
        self.last_chat = time.time()
        self._measure("chat", lambda: self.command({"type": "chat", "text": f"hello from {self.identity}"}))

    @task(2)
    def ask(self) -> None:
        if time.time() - self.last_question < 11:  # 3 questions in 30 seconds
            return
        self.last_question = time.time()
        reply = self._measure("ask", lambda: self.command({"type": "ask", "text": f"A question from {self.identity}?"}))
        if reply:
            self.questions.append(reply["data"]["id"])

    @task(3)
    def upvote(self) -> None:
        listed = self._measure("questions", lambda: self.command({"type": "questions"}))
        mine = {q for q in self.questions}
        candidates = [q["id"] for q in (listed or {}).get("data", []) if q["id"] not in mine and q["status"] == "open"]
        if candidates:
            qid = random.choice(candidates)
            self.questions.append(qid)  # never twice
            self._measure("upvote", lambda: self.command({"type": "upvote", "question_id": qid}))

    @task(1)
    def stage(self) -> None:
        if self.joined["participant"]["role"] != "subscriber" or getattr(self, "asked_stage", False):
            return
        self.asked_stage = True
        self._measure("request_stage", lambda: self.command({"type": "request_stage"}))

    @task(1)
    def breakouts(self) -> None:
        """Hosts create rooms once, then open and close them in turn (everyone moves)."""
        if not self.is_host:
            return
        state = getattr(self, "breakout_state", "none")
        if state == "none":
            self._measure("breakout_create", lambda: self.command({"type": "breakout_create", "names": ["Table A", "Table B"]}))
            self._measure("breakout_auto_assign", lambda: self.command({"type": "breakout_auto_assign"}))
            self.breakout_state = "closed"
        elif state == "closed":
            if self._measure("breakout_open", lambda: self.command({"type": "breakout_open"})):
                self.breakout_state = "open"
        else:
            if self._measure("breakout_close", lambda: self.command({"type": "breakout_close"})):
                self.breakout_state = "closed"

    @task(1)
    def reconnect(self) -> None:
        """Lose the connection and come back as the same participant (reconnect token)."""
        if self.is_host or self.ws is None:
            return
        token = self.joined["reconnect_token"]
        lost, self.ws = self.ws, None  # gone from here on, whether or not the resume completes
        lost.abort() if hasattr(lost, "abort") else lost.sock.close()
        self.reader.kill(block=False)
        self._measure("resume", lambda: self._connect({"type": "resume", "reconnect_token": token}))

    def media(self) -> None:
        """Publish synthetic media to a few subscribers through the load client (real ICE/DTLS/SRTP).

        In a room of their own (the load client makes one): in this user's room, the hosts'
        breakout task plans every participant but the moderators into rooms and opens them, so
        the subscribers would go where the publisher (a moderator) is not, and rightly receive
        nothing. A run that met that reported "no media delivered"."""
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "loadtest.client", "--url", self.host, "--key", ":".join(self.key),
             "--publishers", "1", "--subscribers", "2", "--duration", str(MEDIA_SECONDS),
             "--bitrate", "500000"],
            capture_output=True, text=True, timeout=120,
        )
        elapsed = (time.perf_counter() - start) * 1000
        if proc.returncode != 0:
            events.request.fire(request_type="media", name="publish+subscribe", response_time=elapsed, response_length=0,
                                exception=RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"))
            return
        result = json.loads(proc.stdout)
        if not result["packets_delivered"] or math.isnan(result["latency_p99_ms"]):
            # Nothing arrived in the run's seconds: a failure to report (a NaN time would stop locust).
            events.request.fire(request_type="media", name="publish+subscribe", response_time=elapsed, response_length=0,
                                exception=RuntimeError(f"no media delivered in {MEDIA_SECONDS:g} s"))
            return
        events.request.fire(request_type="media", name="publish+subscribe", response_time=elapsed,
                            response_length=result["packets_delivered"], exception=None)
        events.request.fire(request_type="media", name=f"delivered loss={result['loss']:.2%}", response_time=result["latency_p99_ms"],
                            response_length=result["packets_delivered"], exception=None)

    def _leave(self) -> dict:
        try:
            return self.command({"type": "leave"})
        except OSError as e:  # say what the connection went through: a failure names its cause
            how, when = getattr(self, "opened", ("?", time.monotonic()))
            raise CommandFailed(
                f"{e!r} on a connection opened by {how} {time.monotonic() - when:.1f} s before; its reader "
                f"{'ended' if self.reader.dead else 'running'}; closed by the server: {self.closed_by_server or 'no'}"
            ) from None

    def on_stop(self) -> None:
        if self.ws is not None:
            self._measure("leave", self._leave)
            try:
                self.ws.close()
            except Exception:
                pass
        self.http.close()
