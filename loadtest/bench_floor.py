"""Benchmark 4b: the floor under a burst of cold joins.

Issue #10 asks for p50 <= 50 ms and p99 <= 200 ms over 100 new sessions joined at once, from
sending ``join`` to receiving ``joined``. This measures, in the same run and with the same
clients (``loadtest/lean_ws.py``, 100 at once, tokens signed beforehand), how far below the real
server the least a join can do goes on this machine. Each floor runs on the gateway's own stack
(uvicorn on uvloop, the same WebSocket transport and settings), and does only:

- ``websocket``: the handshake, one message in, a ``joined``-sized JSON reply out;
- ``store``: that, plus verifying the participant token (``tokens.verify``), one SQLite write
  transaction (a session row and a participant row, WAL, plain ``sqlite3``, no SQLAlchemy) and
  minting the reconnect token: a join that is written down before it is acknowledged;
- ``actor``: like ``store``, but the write happens in a Ray actor that owns the session (the
  design's rule), reached through the gateway's own batching (``mediaserver.control.batch``,
  one message per turn of the event loop) on Ray started as ``serve`` starts it.

The real server (``mediaserver serve``) is the last column. Rounds alternate between the four,
so a change in the machine's speed falls on all of them. Run inside ``unshare -n``:

    python -m loadtest.bench_floor [--joins 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from loadtest.bench_sessions import Client, Server, cpu_seconds, make_rooms, ms, own_cpu, pct
from mediaserver import tokens

LEVELS = ("websocket", "store", "actor")
KEY, SECRET = "floor-key", "floor-secret-" + "x" * 32

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, room_id TEXT NOT NULL, status TEXT NOT NULL, started_at REAL NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_session ON sessions (room_id) WHERE status != 'ended';
CREATE TABLE IF NOT EXISTS participants (id TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES sessions (id),
    identity TEXT NOT NULL, role TEXT NOT NULL, joined_at REAL NOT NULL);
"""


def open_db(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # (as the store)
    db.executescript(SCHEMA)
    return db


def write_join(db: sqlite3.Connection, room_id: str, identity: str, role: str) -> dict:
    """The one write a cold join cannot skip: its session and its participant, committed."""
    now = time.time()
    session = {"id": "s_" + secrets.token_hex(8), "room_id": room_id, "status": "live", "started_at": now}
    participant = {"id": "p_" + secrets.token_hex(8), "identity": identity, "name": identity, "role": role, "joined_at": now}
    db.execute("BEGIN IMMEDIATE")
    try:
        db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?)", (session["id"], room_id, "live", now))
        db.execute("INSERT INTO participants VALUES (?, ?, ?, ?, ?)", (participant["id"], session["id"], identity, role, now))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return {"session": session, "participant": participant}


class SessionOwner:
    """The ``actor`` floor's Ray actor: writes each join it is handed and answers it."""

    def __init__(self, path: str):
        self.db = open_db(path)

    async def calls(self, batch: list) -> list:
        from mediaserver.control.batch import run_batch

        async def one(room_id: str, identity: str, role: str) -> dict:
            return write_join(self.db, room_id, identity, role)

        return await run_batch(one, batch)


class FloorApp:
    """A raw ASGI app: the least a join does at ``level``."""

    def __init__(self, level: str, data: Path):
        self.level = level
        self.db = open_db(str(data / "floor.db")) if level == "store" else None
        self.owner = None
        if level == "actor":
            from actors import cluster
            from mediaserver.control.batch import Batcher

            cluster.init(None, "floor")
            handle = cluster.get_or_create(SessionOwner, "floor-owner", str(data / "floor.db"))
            self.batcher = Batcher(lambda batch: cluster.call(handle, "calls", batch))

    async def secret_for(self, kid: str) -> str | None:
        return SECRET if kid == KEY else None

    async def join(self, msg: dict) -> dict:
        if self.level == "websocket":
            done = {"session": {"id": "s_0", "room_id": msg["room_id"]}, "participant": {"id": "p_0", "role": "publisher"}}
            reconnect = "x" * 180
        else:
            grant = await tokens.verify(msg["token"], room_id=msg["room_id"], secret_for=self.secret_for)
            if self.level == "store":
                done = write_join(self.db, grant.room_id, grant.identity, grant.role)
            else:
                done = await self.batcher.call(grant.room_id, grant.identity, grant.role)
            reconnect = tokens.mint_reconnect(SECRET, session_id=done["session"]["id"],
                                              participant_id=done["participant"]["id"], ttl=3600)
        # About the size of the server's own ``joined`` (room, ICE servers, settings).
        return {
            "type": "joined", "id": msg.get("id"), "resumed": False, **done, "participants": [done["participant"]],
            "room": {"id": msg["room_id"], "name": msg["room_id"], "type": "adhoc", "max_participants": 50,
                     "max_on_screen": 6, "max_speakers": 4, "media_mode": "routed", "created_at": time.time()},
            "reconnect_token": reconnect, "last_seq": 0, "grace_seconds": 420, "ping_seconds": 20,
            "tracks": [], "chat": [], "questions": [], "breakouts": {}, "event": None,
            "ice_servers": [{"urls": ["stun:127.0.0.1:3478"]}], "media_mode": "routed", "archive": None, "speakers": None,
        }

    async def websocket(self, sock) -> None:
        """One client on the gateway's own WebSocket transport (``mediaserver.api.websocket``)."""
        reply = await self.join(json.loads(await sock.receive()))
        await sock.send_text(json.dumps(reply))
        while True:
            await sock.receive()  # (until the client closes)

    async def __call__(self, scope: dict, receive, send) -> None:
        pass  # (nothing but the WebSocket is asked of a floor)


def serve(level: str, data: Path) -> None:
    """The floor server (a child process): prints its URL once it listens."""
    import uvicorn
    import uvloop

    from mediaserver.api.websocket import http_protocol

    async def main() -> None:
        app = FloorApp(level, data)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, loop="none", log_level="warning", lifespan="off",
                                ws_max_size=256 * 1024, ws_per_message_deflate=False, access_log=False,
                                http=http_protocol("/v1/ws", app.websocket), proxy_headers=False)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        print(f"URL: http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}", flush=True)
        await task
        if level == "actor":
            from actors import cluster

            cluster.shutdown()

    uvloop.run(main())


class Floor:
    def __init__(self, level: str, data: Path):
        self.level = level
        self.dir = data / level
        self.dir.mkdir()
        self.log = open(self.dir / "serve.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest.bench_floor", "--serve", level, "--data", str(self.dir)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("URL: "):
            raise SystemExit(f"floor server {level} did not start: {(self.dir / 'serve.log').read_text()[-2000:]}")
        self.ws_url = line.split()[1].replace("http", "ws", 1) + "/v1/ws"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def burst(ws_url: str, pid: int, signed: list[tuple[str, str]]) -> dict:
    """All joins at once; the clients are closed afterwards (and given a moment to go)."""
    cs = [Client(ws_url) for _ in signed]
    cpu0, own0 = cpu_seconds(pid), own_cpu()
    took = await asyncio.gather(*(c.join(t, r) for c, (t, r) in zip(cs, signed)))
    cpu1, own1 = cpu_seconds(pid), own_cpu()
    start = min(c.opened_at for c in cs)
    for c in cs:
        await c.close()
    await asyncio.sleep(1)
    return {
        "join": list(took), "with_connect": [c.joined_at - start for c in cs],
        "server_cpu_ms": (cpu1 - cpu0) / len(cs) * 1000, "client_cpu_ms": (own1 - own0) / len(cs) * 1000,
    }


def summary(rounds: list[dict]) -> dict:
    join = [x for r in rounds for x in r["join"]]
    conn = [x for r in rounds for x in r["with_connect"]]
    return {
        "join_ms": ms(join),
        "join_p50_by_round": [round(pct(r["join"], 50) * 1000, 1) for r in rounds],
        "join_p99_by_round": [round(pct(r["join"], 99) * 1000, 1) for r in rounds],
        "with_connect_ms": ms(conn),
        "server_cpu_ms_per_join": [round(r["server_cpu_ms"], 2) for r in rounds],
        "client_cpu_ms_per_join": round(statistics.median(r["client_cpu_ms"] for r in rounds), 2),
    }


async def run(args: argparse.Namespace) -> dict:
    data = Path(tempfile.mkdtemp(prefix="bench-floor-"))
    floors = {level: Floor(level, data) for level in LEVELS}
    real_dir = data / "server"
    real_dir.mkdir()
    real = Server(real_dir, {
        "MEDIASERVER_DATA_DIR": str(real_dir), "MEDIASERVER_MEDIA_PORT": "0", "MEDIASERVER_LOG_LEVEL": "warning",
        "MEDIASERVER_DEFAULT_MAX_LIVE_SESSIONS": "1000000", "MEDIASERVER_GRACE_SECONDS": "3600",
        "MEDIASERVER_MEDIA_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
    })
    real.start()
    results: dict[str, list[dict]] = {name: [] for name in (*LEVELS, "server")}
    try:
        await asyncio.sleep(args.settle)
        async with httpx.AsyncClient(base_url=real.url, auth=(real.key, real.secret), timeout=120) as http:
            for r in range(args.rounds + 1):  # (round 0 warms every server up and is not counted)
                for name in results:
                    if name == "server":
                        rooms = await make_rooms(http, args.joins, f"floor{r}")
                        signed = [(tokens.mint(key_id=real.key, secret=real.secret, room_id=room, identity="first",
                                               role="publisher", ttl=7200, max_ttl=86400)[0], room) for room in rooms]
                        url, pid = real.url.replace("http", "ws", 1) + "/v1/ws", real.proc.pid
                    else:
                        rooms = [f"room-{r}-{i}" for i in range(args.joins)]
                        signed = [(tokens.mint(key_id=KEY, secret=SECRET, room_id=room, identity="first",
                                               role="publisher", ttl=7200, max_ttl=86400)[0], room) for room in rooms]
                        url, pid = floors[name].ws_url, floors[name].proc.pid
                    got = await burst(url, pid, signed)
                    if r:
                        results[name].append(got)
                        print(f"round {r} {name}: join p50 {pct(got['join'], 50) * 1000:.1f} ms, "
                              f"p99 {pct(got['join'], 99) * 1000:.1f} ms, server CPU {got['server_cpu_ms']:.2f} ms/join",
                              flush=True)
    finally:
        for f in floors.values():
            f.stop()
        real.stop()
    out = {name: summary(rs) for name, rs in results.items()}
    for name, s in out.items():
        print(f"{name:>9}: {s}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--joins", type=int, default=100, help="joins sent at once, each into a new session")
    p.add_argument("--rounds", type=int, default=3, help="bursts per server, alternating")
    p.add_argument("--settle", type=float, default=2.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve", choices=LEVELS, help=argparse.SUPPRESS)  # (a floor server: the child process)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve(args.serve, args.data)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    result = uvloop.run(run(args))
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
