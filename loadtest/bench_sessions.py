"""Benchmark 4: what a live session costs the control plane.

Starts ``mediaserver serve`` (local Ray, SQLite) and drives it over plain WebSocket joins, no
media, the way benchmark clients would:

- idle memory of the whole server (every process it started: gateway, Ray, actors);
- cold joins: new sessions one at a time, then 100 started together (one join each, all sent
  at once), p50/p99 from sending ``join`` to receiving ``joined`` and from opening the
  WebSocket (the user's wait), and the server's CPU per join (the clients: ``loadtest/lean_ws.py``);
- warm joins: a second participant into live sessions, one after another;
- a room of 50 filling at once (every join wakes everyone already in), one chat message to all,
  and one of them publishing (how soon the other 49 are offered its tracks);
- memory per 1,000 live sessions (one connected participant each);
- memory per 100 open breakout rooms (sessions with 10 open rooms each).

Memory is the sum over the server's process tree: RSS, and PSS (shared pages split between the
processes that map them, the fairer figure). Run inside ``unshare -n`` (``make bench`` does):

    python -m loadtest.bench_sessions [--sessions 2000] [--breakout-sessions 50] [--cold 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import websockets

from loadtest import lean_ws
from mediaserver import tokens

BIN = Path(sys.executable).parent / "mediaserver"


def tree(root: int) -> list[int]:
    """The process and all its descendants."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def memory(root: int) -> dict:
    """RSS and PSS in MB over the process tree, the number of processes, and PSS by process."""
    rss = pss = 0
    pids = tree(root)
    by: dict[str, float] = {}
    for pid in pids:
        try:
            own = 0
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    own = int(line.split()[1])
                    pss += own
            name = Path(f"/proc/{pid}/cmdline").read_text().split("\0")[0].rsplit("/", 1)[-1].split(".")[0][:24]
            by[name] = round(by.get(name, 0) + own / 1024, 1)
        except OSError:
            continue
    return {"rss_mb": round(rss / 1024, 1), "pss_mb": round(pss / 1024, 1), "processes": len(pids), "pss_mb_by_process": by}


def cpu_seconds(root: int) -> float:
    """CPU time (user + system) of the process tree so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_name(pid: int) -> str:
    """"name[pid]". A Ray worker's name is its actor class: Ray retitles the process with each
    task it runs ("ray::X.method"), and a key that changed between two readings would count the
    process's whole life as the difference."""
    name = Path(f"/proc/{pid}/cmdline").read_text().split("\0")[0].rsplit("/", 1)[-1][:60]
    actor = re.search(r"(\w+Actor)\b", name)
    return f"{'ray::' + actor.group(1) if actor else name[:30]}[{pid}]"


def cpu_by_process(root: int) -> dict[str, float]:
    """CPU seconds of each process of the server, as "name[pid]"."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for pid in tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[_process_name(pid)] = (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            continue
    return out


def thread_times(root: int) -> dict[str, dict[str, tuple[float, float]]]:
    """For the server's processes ("name[pid]") and this benchmark's own ("clients[pid]"): each
    thread's seconds on a CPU and seconds ready to run but waiting for one (the run queue delay,
    /proc/PID/task/TID/schedstat)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for pid in tree(root) + [os.getpid()]:
        try:
            name = f"clients[{pid}]" if pid == os.getpid() else _process_name(pid)
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                ran, waited = Path(task, "schedstat").read_text().split()[:2]
            except (OSError, ValueError):
                continue  # (a thread that ended meanwhile; a kernel without schedstats)
            out.setdefault(name, {})[task.name] = (int(ran) / 1e9, int(waited) / 1e9)
    return out


def busiest_thread_waits(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per process, its busiest thread between two ``thread_times`` (the event loop's, for every
    process here): ms it ran and ms it waited for a CPU. Where a burst's time goes when the cores
    are shared: a step that waits for a CPU is not a step doing work."""
    out = {}
    for name, threads in after.items():
        deltas = [(ran - before.get(name, {}).get(tid, (0.0, 0.0))[0], waited - before.get(name, {}).get(tid, (0.0, 0.0))[1])
                  for tid, (ran, waited) in threads.items()]
        ran, waited = max(deltas, default=(0.0, 0.0))
        if ran > 0.001:
            out[name.split("[")[0]] = {"ran_ms": round(ran * 1000, 1), "waited_ms": round(waited * 1000, 1)}
    return out


def profile(root: int, out: str) -> list[subprocess.Popen]:
    """py-spy on the gateway and every session host until stopped, raw stacks into ``out``/
    (``pip install py-spy``; how the cold-join figure's CPU divides up)."""
    Path(out).mkdir(parents=True, exist_ok=True)
    # (the one installed beside this Python, as `make` installs it, when it is not on PATH)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    spies = []
    for pid in tree(root):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        except OSError:
            continue
        name = "gateway" if pid == root else "host" if any("SessionHostActor" in c for c in cmd) else "worker" if any("MediaWorkerActor" in c for c in cmd) else None
        if name:
            spies.append(subprocess.Popen(
                [spy, "record", "-p", str(pid), "-r", "250", "-f", "raw", "--nonblocking",
                 "-o", f"{out}/{name}-{pid}.txt"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
    return spies


class Server:
    def __init__(self, data_dir: Path, env: dict):
        self.data_dir = data_dir
        self.env = env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.data_dir / "serve.log", "w")
        self.proc = subprocess.Popen([str(BIN), "serve", "--port", "0"], stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env}, cwd=self.data_dir)
        deadline = time.time() + 120
        while time.time() < deadline:
            text = (self.data_dir / "serve.log").read_text()
            m = re.search(r"URL:\s+(\S+)\n\s+API key:\s+(\S+)\n\s+API secret:\s+(\S+)", text)
            if m:
                self.url, self.key, self.secret = m.groups()
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited:\n{text[-3000:]}")
            time.sleep(0.2)
        raise SystemExit("server not ready")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def connect_websockets(url: str):
    return await websockets.connect(url, max_queue=None, open_timeout=120, ping_interval=None)


CONNECT = {"lean": lean_ws.connect, "websockets": connect_websockets}  # --client
CLOSED = (websockets.ConnectionClosed, lean_ws.ConnectionClosed)


class Client:
    """One participant's WebSocket, kept open and read (so the server never waits on it)."""

    connect = staticmethod(lean_ws.connect)

    def __init__(self, ws_url: str):
        self.ws_url = ws_url
        self.ws = None
        self.reader: asyncio.Task | None = None
        self.joined: dict = {}
        self.chat_at: dict[str, float] = {}  # chat text -> when it arrived
        self.offer_at: float | None = None  # when the server's first subscribe offer arrived
        self.opened_at = self.sent_at = self.joined_at = 0.0  # (join: opening the socket, sending join, joined)

    async def join(self, token: str, room_id: str) -> float:
        self.opened_at = time.perf_counter()
        self.ws = await self.connect(self.ws_url)
        t0 = self.sent_at = time.perf_counter()
        await self.ws.send(json.dumps({"type": "join", "token": token, "room_id": room_id}))
        while True:
            msg = json.loads(await asyncio.wait_for(self.ws.recv(), 300))
            if msg["type"] == "joined":
                break
            if msg["type"] == "error":
                raise RuntimeError(msg)
        self.joined_at = time.perf_counter()
        took = self.joined_at - t0
        self.joined = msg
        self.reader = asyncio.create_task(self._drain())
        return took

    async def _drain(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("type") == "ping":
                    await self.ws.send('{"type": "pong"}')
                elif msg.get("event") == "chat":
                    self.chat_at[msg["data"]["message"]["text"]] = time.perf_counter()
                elif msg.get("type") == "offer" and self.offer_at is None:
                    self.offer_at = time.perf_counter()
        except CLOSED:
            pass

    async def command(self, msg: dict) -> None:
        await self.ws.send(json.dumps(msg))

    async def close(self) -> None:
        if self.reader:
            self.reader.cancel()
        if self.ws:
            await self.ws.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def ms(values: list[float]) -> dict:
    """Count, p50 and p99 in milliseconds (none when nothing was measured)."""
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": round(pct(values, 50) * 1000, 1), "p99": round(pct(values, 99) * 1000, 1)}


async def host_messages(http: httpx.AsyncClient) -> dict[str, float]:
    """What the gateway has sent its session hosts so far (``/metrics``): operations and the
    messages they went in, by kind (calls, long polls)."""
    out: dict[str, float] = {}
    for line in (await http.get("/metrics")).text.splitlines():
        m = re.match(r'mediaserver_host_(calls|messages)_total\{kind="(\w+)"\} (\S+)', line)
        if m:
            out[f"{m.group(2)}_{m.group(1)}"] = float(m.group(3))
    return out


async def make_rooms(http: httpx.AsyncClient, n: int, prefix: str) -> list[str]:
    sem = asyncio.Semaphore(16)

    async def one(i: int) -> str:
        async with sem:
            r = await http.post("/v1/rooms", json={"name": f"{prefix} {i}"})
            r.raise_for_status()
            return r.json()["id"]

    return await asyncio.gather(*(one(i) for i in range(n)))


async def run(args: argparse.Namespace) -> dict:
    data = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    env = {
        "MEDIASERVER_DATA_DIR": str(data), "MEDIASERVER_MEDIA_PORT": "0", "MEDIASERVER_LOG_LEVEL": "warning",
        "MEDIASERVER_DEFAULT_MAX_LIVE_SESSIONS": "1000000", "MEDIASERVER_GRACE_SECONDS": "3600",
        "MEDIASERVER_MEDIA_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
    }
    server = Server(data, env)
    server.start()
    out: dict = {}
    clients: list[Client] = []
    ws_url = server.url.replace("http", "ws", 1) + "/v1/ws"

    def token(room: str, identity: str, role: str = "publisher") -> str:
        return tokens.mint(key_id=server.key, secret=server.secret, room_id=room, identity=identity, role=role,
                           ttl=7200, max_ttl=30 * 86400)[0]

    async def joins(rooms: list[str], identity: str, role: str = "publisher", at_once: bool = True) -> list[float]:
        cs = [Client(ws_url) for _ in rooms]
        clients.extend(cs)
        if at_once:
            signed = [token(r, identity, role) for r in rooms]  # (before the clock starts)
            return list(await asyncio.gather(*(c.join(t, r) for c, t, r in zip(cs, signed, rooms))))
        return [await c.join(token(r, identity, role), r) for c, r in zip(cs, rooms)]

    try:
        async with httpx.AsyncClient(base_url=server.url, auth=(server.key, server.secret), timeout=120) as http:
            await asyncio.sleep(args.settle)
            out["idle"] = memory(server.proc.pid)
            print(f"idle: {out['idle']}", flush=True)

            alone_rooms = await make_rooms(http, args.warm, "alone")
            alone = await joins(alone_rooms, "first", at_once=False)
            out["cold_join_one_at_a_time_ms"] = ms(alone)
            print(f"cold joins (new sessions, one at a time): {out['cold_join_one_at_a_time_ms']}", flush=True)
            cold_rooms = await make_rooms(http, args.cold, "cold")
            sent_before = await host_messages(http)  # (read outside the CPU window: /metrics asks the workers too)
            cpu_before, by_before = cpu_seconds(server.proc.pid), cpu_by_process(server.proc.pid)
            own_before, threads_before = own_cpu(), thread_times(server.proc.pid)
            spies = profile(server.proc.pid, args.profile) if args.profile else []
            if spies:
                await asyncio.sleep(1)  # (py-spy attaching; the clients' pings go on meanwhile)
            cold = await joins(cold_rooms, "first")
            burst = clients[-len(cold):]
            for spy in spies:
                spy.send_signal(signal.SIGINT)  # (py-spy writes its samples on SIGINT)
                spy.wait(30)
            cpu_used = cpu_seconds(server.proc.pid) - cpu_before
            by_after = cpu_by_process(server.proc.pid)
            own_after, threads_after = own_cpu(), thread_times(server.proc.pid)
            sent = await host_messages(http)
            start = min(c.opened_at for c in burst)
            waits = [c.joined_at - start for c in burst]  # the user's view: from opening the WebSocket (all at once) to ``joined``
            out["cold_join_ms"] = {
                **ms(cold),
                "with_connect": ms(waits),
                # ... its deciles, first to last joined: all at the end, or spread over the burst
                "with_connect_deciles": [round(pct(waits, p) * 1000) for p in range(0, 101, 10)],
                # when the joins were sent: the server was answering handshakes until then
                "sent_after": ms([c.sent_at - start for c in burst]),
                "server_cpu_ms_per_join": round(cpu_used / len(cold) * 1000, 2),
                # the benchmark's own clients, on the same cores (WebSocket handshakes, JSON)
                "client_cpu_ms_per_join": round((own_after - own_before) / len(cold) * 1000, 2),
                "cpu_ms_per_join_by_process": {  # (the process name without its pid)
                    k.split("[")[0]: round((v - by_before.get(k, 0.0)) / len(cold) * 1000, 2)
                    for k, v in by_after.items() if v - by_before.get(k, 0.0) > 0
                },
                # each process's busiest thread over the burst: time on a CPU, and ready but waiting for one
                "busiest_thread_by_process": busiest_thread_waits(threads_before, threads_after),
                # gateway -> host traffic of the burst (the joins, and every participant's long polls)
                "to_hosts_per_join": {k: round((v - sent_before.get(k, 0.0)) / len(cold), 2) for k, v in sorted(sent.items())},
            }
            print(f"cold joins ({args.cold} new sessions at once): {out['cold_join_ms']}", flush=True)
            warm = await joins(cold_rooms[: args.warm], "second", at_once=False)
            out["warm_join_ms"] = ms(warm)
            print(f"warm joins (into live sessions, one by one): {out['warm_join_ms']}", flush=True)
            if args.room:
                out["full_room"] = await full_room(http, ws_url, token, clients, args.room, server.proc.pid)
                print(f"a room of {args.room} filling at once: {out['full_room']}", flush=True)

            await asyncio.sleep(args.settle)
            before = memory(server.proc.pid)
            rest = max(args.sessions - args.cold, 0)
            rooms = await make_rooms(http, rest, "live")
            t0 = time.perf_counter()
            for i in range(0, len(rooms), args.batch):
                await joins(rooms[i:i + args.batch], "only")
            took = time.perf_counter() - t0
            await asyncio.sleep(args.settle)
            after = memory(server.proc.pid)
            c0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
            per0 = cpu_by_process(server.proc.pid)
            await asyncio.sleep(10)
            busy = (cpu_seconds(server.proc.pid) - c0) / (time.perf_counter() - t0)
            per1 = cpu_by_process(server.proc.pid)
            out["idle_cpu_by_process"] = {name: round((per1[name] - per0.get(name, 0)) / 10 * 100, 1) for name in per1 if per1[name] - per0.get(name, 0) > 0.05}
            print("while nothing happens, % of a core:", out["idle_cpu_by_process"], flush=True)
            live = args.cold + rest
            added = after["pss_mb"] - before["pss_mb"]
            out["live"] = {
                "sessions": live, "memory": after, "joins_per_s": round(rest / took, 1) if took else None,
                "pss_mb_per_1000_sessions": round(added / max(rest, 1) * 1000, 1),
                "rss_mb_per_1000_sessions": round((after["rss_mb"] - before["rss_mb"]) / max(rest, 1) * 1000, 1),
                "above_idle_pss_mb": round(after["pss_mb"] - out["idle"]["pss_mb"], 1),
                "server_cpu_percent_while_nothing_happens": round(busy * 100, 1),
            }
            print(f"live sessions: {out['live']}", flush=True)

            # Everyone in the filled sessions drops off: those sessions sleep through their grace
            # period (rows in the store only), and wake when someone comes back.
            filled = clients[len(clients) - rest:]
            for c in filled:
                c.ws.transport.abort()  # a lost connection, not a goodbye
            await asyncio.sleep(args.settle + 3)
            asleep = memory(server.proc.pid)
            hosts = (await http.get("/v1/server")).json()["hosts"]
            back = [Client(ws_url) for _ in range(min(args.warm, rest))]
            clients.extend(back)
            rejoin = [await c.join(token(r, "only"), r) for c, r in zip(back, rooms)]
            # The baseline beside it, in the same state (the same sessions asleep, the same
            # connections open): first joins of new sessions, one at a time.
            cold_now = await joins(await make_rooms(http, min(args.warm, rest), "cold beside"), "first", at_once=False)
            out["asleep"] = {
                "sessions": rest, "memory": asleep, "hosts": hosts,
                "pss_mb_freed": round(after["pss_mb"] - asleep["pss_mb"], 1),
                "rejoin_ms": ms(rejoin), "cold_join_beside_ms": ms(cold_now),
            }
            print(f"sessions in their grace period: {out['asleep']}", flush=True)

            if args.breakout_sessions:
                brooms = await make_rooms(http, args.breakout_sessions, "breakouts")
                hosts = [Client(ws_url) for _ in brooms]
                clients.extend(hosts)
                for i in range(0, len(brooms), args.batch):
                    await asyncio.gather(*(h.join(token(r, "host", "moderator"), r) for h, r in zip(hosts[i:i + args.batch], brooms[i:i + args.batch])))
                await asyncio.sleep(args.settle)
                before = memory(server.proc.pid)
                for h in hosts:
                    await h.command({"type": "breakout_create", "names": [f"Room {j}" for j in range(10)]})
                    await h.command({"type": "breakout_open"})
                # Wait until every room is open (its session says so).
                deadline = time.time() + 600
                while time.time() < deadline:
                    r = await http.get("/v1/sessions", params={"q": "breakouts", "limit": 200})
                    open_ = 0
                    for s in r.json()["sessions"]:
                        d = (await http.get(f"/v1/sessions/{s['id']}")).json()
                        open_ += bool(d["breakouts"].get("open"))
                    if open_ >= len(brooms):
                        break
                    await asyncio.sleep(1)
                await asyncio.sleep(args.settle)
                after = memory(server.proc.pid)
                rooms_open = 10 * len(brooms)
                out["breakouts"] = {
                    "rooms_open": rooms_open, "memory": after,
                    "pss_mb_per_100_rooms": round((after["pss_mb"] - before["pss_mb"]) / rooms_open * 100, 1),
                    "rss_mb_per_100_rooms": round((after["rss_mb"] - before["rss_mb"]) / rooms_open * 100, 1),
                }
                print(f"breakout rooms: {out['breakouts']}", flush=True)
    finally:
        for c in clients:
            try:
                await c.close()
            except Exception:
                pass
        server.stop()
    return out


async def full_room(http: httpx.AsyncClient, ws_url: str, token, clients: list, n: int, root: int) -> dict:
    """``n`` participants join one new room at the same instant (each join is news to everyone
    already in: every one of their long polls wakes), then one of them says something in the
    chat: join p50/p99, the server's CPU per join, how long the message takes to reach all, and
    the server's CPU per message to everyone."""
    room = (await make_rooms(http, 1, "full"))[0]
    cs = [Client(ws_url) for _ in range(n)]
    clients.extend(cs)
    cpu0 = cpu_seconds(root)
    took = await asyncio.gather(*(c.join(token(room, f"member{i}"), room) for i, c in enumerate(cs)))
    await asyncio.sleep(2)  # (the presence news settles)
    cpu_joins = cpu_seconds(root) - cpu0
    t0 = time.perf_counter()
    await cs[0].command({"type": "chat", "text": "hello, everyone"})
    deadline = time.time() + 30
    while time.time() < deadline and not all("hello, everyone" in c.chat_at for c in cs):
        await asyncio.sleep(0.01)
    arrived = [c.chat_at.get("hello, everyone", float("nan")) - t0 for c in cs]
    # The CPU a message to everyone costs: 20 of them, one after another, less what the server
    # uses meanwhile when nothing happens (measured just before, over as long).
    cpu0, t0 = cpu_seconds(root), time.perf_counter()
    await asyncio.sleep(2)
    idle = (cpu_seconds(root) - cpu0) / (time.perf_counter() - t0)
    cpu0, t0 = cpu_seconds(root), time.perf_counter()
    for k in range(20):
        text = f"message {k}"
        await cs[k % n].command({"type": "chat", "text": text})
        deadline = time.time() + 30
        while time.time() < deadline and not all(text in c.chat_at for c in cs):
            await asyncio.sleep(0.001)
    chat_cpu = max(cpu_seconds(root) - cpu0 - idle * (time.perf_counter() - t0), 0.0) / 20
    # The first of them publishes (an aiortc offer: audio and video): every other one is offered
    # the new tracks (a subscribe offer each, made by the media worker).
    from aiortc import RTCPeerConnection
    from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

    pc = RTCPeerConnection()
    pc.addTrack(AudioStreamTrack())
    pc.addTrack(VideoStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    cpu0, t0 = cpu_seconds(root), time.perf_counter()
    await cs[0].command({"type": "offer", "pc": "publish", "sdp": pc.localDescription.sdp})
    deadline = time.time() + 30
    while time.time() < deadline and not all(c.offer_at for c in cs[1:]):
        await asyncio.sleep(0.005)
    offered = [(c.offer_at or float("nan")) - t0 for c in cs[1:]]
    await pc.close()
    return {
        "join_ms": ms(took), "server_cpu_ms_per_join": round(cpu_joins / n * 1000, 2),
        "chat_to_all_ms": round(max(arrived) * 1000, 1), "chat_server_cpu_ms_per_message": round(chat_cpu * 1000, 2),
        "publication_offered_ms": ms(offered),
    }


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=2000, help="live sessions in all (one participant each)")
    p.add_argument("--cold", type=int, default=100, help="new sessions started together for the cold-join figure")
    p.add_argument("--warm", type=int, default=50, help="joins into live sessions")
    p.add_argument("--breakout-sessions", type=int, default=50, help="sessions that open 10 breakout rooms each")
    p.add_argument("--room", type=int, default=50, help="participants joining one room at once (0: skip)")
    p.add_argument("--batch", type=int, default=100, help="joins sent together while filling the server")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to wait before each memory reading")
    p.add_argument("--json", action="store_true")
    p.add_argument("--profile", metavar="DIR", help="py-spy the gateway and hosts during the cold joins, raw stacks into DIR")
    p.add_argument("--client", choices=sorted(CONNECT), default="lean",
                   help="the benchmark's WebSocket client: a lean one (loadtest/lean_ws.py), or the websockets library's")
    args = p.parse_args()
    Client.connect = staticmethod(CONNECT[args.client])
    try:  # the clients share the server's cores: the cheaper their event loop, the less they take
        import uvloop
        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(json.dumps(result, indent=2) if args.json else json.dumps(result))


if __name__ == "__main__":
    main()
