"""Test helpers: a server process and clients that talk to it the way users do."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "mediaserver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN), *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"mediaserver {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


@dataclass
class ServerProcess:
    """``mediaserver serve`` in a subprocess. It binds port 0 (the kernel picks a free one) and
    the test reads the port back from the banner: a port picked here and bound later by another
    process could be taken meanwhile (Ray opens ports all the time)."""

    data_dir: Path
    env: dict
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    key: dict = field(default_factory=dict)
    host: str = "127.0.0.1"  # where the gateway listens (MEDIASERVER_HOST)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/ws"

    def start(self, timeout: float = 90) -> None:
        self.log_path = self.data_dir / "serve.log"
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--port", "0"],
            stdout=open(self.log_path, "w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.data_dir,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            ready = re.search(r"is ready\n\s+URL:\s+http://" + re.escape(self.host) + r":(\d+)", self.log())
            if ready:
                self.port = int(ready.group(1))
                return
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def stop(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def http(self, key: dict | None = None) -> httpx.AsyncClient:
        key = key or self.key
        return httpx.AsyncClient(base_url=self.url, auth=(key["id"], key["secret"]), timeout=30)


def server_env(data_dir: Path, **overrides: Any) -> dict:
    env = {
        "MEDIASERVER_DATA_DIR": str(data_dir),
        "MEDIASERVER_GRACE_SECONDS": "2",
        "MEDIASERVER_TICK_SECONDS": "0.2",
        "MEDIASERVER_POLL_SECONDS": "2",
        "MEDIASERVER_STALE_SECONDS": "6",
        "MEDIASERVER_QUALITY_SECONDS": "1",
        "MEDIASERVER_PING_SECONDS": "1",
        "MEDIASERVER_LOG_LEVEL": "warning",
        "MEDIASERVER_RAY_NAMESPACE": f"test-{os.getpid()}-{data_dir.name}",
        "MEDIASERVER_MEDIA_PORT": "0",
        "MEDIASERVER_MEDIA_ALLOWED_NETWORKS": '["127.0.0.0/8", "::1/128"]',
    }
    env.update({f"MEDIASERVER_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def create_key(env: dict, team: str = "default", max_live_sessions: int | None = None) -> dict:
    args = ["apikey", "create", "--team", team, "--json"]
    if max_live_sessions is not None:
        args += ["--max-live-sessions", str(max_live_sessions)]
    return json.loads(cli(*args, env=env).stdout)


class Participant:
    """A WebSocket participant, speaking /v1/ws like a real client."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.ws: Any = None
        self.joined: dict = {}
        self.events: list[dict] = []
        self._n = 0

    @property
    def id(self) -> str:
        return self.joined["participant"]["id"]

    async def connect(self) -> None:
        # An unbounded queue: a test reads events only when it looks for one, and a full queue would
        # stop the socket being read (and make close() wait for a close frame stuck behind events).
        self.ws = await websockets.connect(self.server.ws_url, open_timeout=10, max_queue=None)

    async def send(self, msg: dict) -> None:
        await self.ws.send(json.dumps(msg))

    async def recv(self, timeout: float = 10) -> dict:
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            if msg["type"] == "ping":
                try:
                    await self.send({"type": "pong"})
                except websockets.ConnectionClosed:
                    pass  # the server is closing: what it sent before the close can still be read
                continue
            if msg["type"] == "event":
                self.events.append(msg)
            return msg

    async def reply(self, timeout: float = 10) -> dict:
        """The next message that is not an event (events are kept for wait_event)."""
        while True:
            msg = await self.recv(timeout)
            if msg["type"] != "event":
                return msg

    async def join(self, token: str, room_id: str) -> dict:
        await self.connect()
        await self.send({"type": "join", "token": token, "room_id": room_id})
        msg = await self.recv(30)
        if msg["type"] == "joined":
            self.joined = msg
        return msg

    async def resume(self, reconnect_token: str | None = None) -> dict:
        await self.connect()
        await self.send({"type": "resume", "reconnect_token": reconnect_token or self.joined["reconnect_token"]})
        msg = await self.recv(30)
        if msg["type"] == "joined":
            self.joined = msg
        return msg

    async def command(self, msg: dict, timeout: float = 15) -> dict:
        """Send a command and return its ack or error (events seen meanwhile are kept)."""
        self._n += 1
        mid = f"c{self._n}"
        await self.send({**msg, "id": mid})
        while True:
            reply = await self.recv(timeout)
            if reply.get("id") == mid:
                return reply

    async def wait_event(self, event: str, participant_id: str | None = None, timeout: float = 15) -> dict:
        for seen in self.events:
            if seen["event"] == event and (participant_id is None or seen["participant_id"] == participant_id):
                self.events.remove(seen)
                return seen
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            msg = await self.recv(max(remaining, 0.01))
            if msg["type"] == "event" and msg["event"] == event and (
                participant_id is None or msg["participant_id"] == participant_id
            ):
                self.events.remove(msg)
                return msg

    async def closed(self, timeout: float = 15) -> tuple[int, str]:
        """Wait for the server to close the socket; returns (code, reason)."""
        try:
            while True:
                await self.recv(timeout)
        except websockets.ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else 1006, e.rcvd.reason if e.rcvd else ""

    async def drop(self) -> None:
        """Lose the connection without saying goodbye (what a network failure looks like)."""
        self.ws.transport.abort()
        await asyncio.sleep(0)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


async def make_room(http: httpx.AsyncClient, **fields: Any) -> dict:
    # Routed unless a test says otherwise (the API's default, auto, is peer to peer for two).
    r = await http.post("/v1/rooms", json={"name": "test room", "media_mode": "routed", **fields})
    assert r.status_code == 201, r.text
    return r.json()


async def make_token(http: httpx.AsyncClient, room_id: str, identity: str, role: str = "publisher", **extra: Any) -> str:
    r = await http.post(f"/v1/rooms/{room_id}/tokens", json={"identity": identity, "role": role, **extra})
    assert r.status_code == 201, r.text
    return r.json()["token"]


async def join_room(server: ServerProcess, http: httpx.AsyncClient, room: dict, identity: str, role: str = "publisher") -> Participant:
    """A participant that has joined ``room`` through ``server``'s WebSocket."""
    p = Participant(server)
    msg = await p.join(await make_token(http, room["id"], identity, role), room["id"])
    assert msg["type"] == "joined", msg
    return p


async def eventually(check: Any, timeout: float = 15, interval: float = 0.1) -> Any:
    """Poll an async check until it returns something truthy."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")
