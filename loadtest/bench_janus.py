"""Benchmark 2: mediaserver against Janus 1.1.2 (VideoRoom), the same load-client scenario on both.

Each scenario: publishers sending 2 Mbps video (1200-byte packets, 30 frames/s) plus Opus-sized
audio, and subscribers receiving every publisher, all real WebRTC (ICE, DTLS, SRTP) from the load
client. For each server: delivered packets/s and loss at the subscribers, the CPU of the process
that forwards (mediaserver's media worker; the janus process), read from /proc over the
measured window, as CPU-seconds per second per forwarded stream and CPU-us per delivered packet,
and the ratio ours/Janus. The forwarding process is pinned to CPU 0, the load client to CPU 1 (with
the rest of mediaserver's processes: CPU 0 is the forwarder's alone, for both servers).

    python -m loadtest.bench_janus              # in a loopback-only namespace (make bench does it)

Janus runs with its default threading plus ``event_loops = 2`` and ``ice_enforce_list = "lo"``;
an LD_PRELOAD shim lets it use 127.0.0.1 as its ICE candidate (it skips loopback interfaces).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from loadtest import janus
from loadtest.client import LoadParticipant, MediaserverSignaling, allow_loopback_candidates, measure, mint

SCENARIOS = [(1, 10), (1, 20), (1, 40), (5, 20)]
TICK = os.sysconf("SC_CLK_TCK")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def find_process(marker: str) -> int | None:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                    return int(entry)
            except OSError:
                continue
    return None


def pin(pid: int, cpu: int) -> None:
    if (os.cpu_count() or 1) > 1:
        for task in os.listdir(f"/proc/{pid}/task"):  # every thread, including ones made before
            try:
                os.sched_setaffinity(int(task), {cpu})
            except OSError:
                pass


def descendants(root: int) -> list[int]:
    """``root`` and every process under it (from /proc's parent links)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += [child for child, up in parent.items() if up == pid]
    return tree


class Mediaserver:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="ms-bench-"))
        self.port = _port()
        self.env = dict(
            os.environ, MEDIASERVER_DATA_DIR=str(self.dir), MEDIASERVER_MEDIA_PORT="0",
            MEDIASERVER_MEDIA_ALLOWED_NETWORKS='["127.0.0.0/8"]', MEDIASERVER_LOG_LEVEL="warning",
            MEDIASERVER_RAY_NAMESPACE=f"bench-{os.getpid()}",
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        key = json.loads(subprocess.run([sys.executable, "-m", "mediaserver.cli", "apikey", "create", "--team", "bench", "--json"],
                                        env=self.env, check=True, capture_output=True, text=True).stdout)
        self.key = (key["id"], key["secret"])
        self.log = open(self.dir / "server.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "mediaserver.cli", "serve", "--port", str(self.port)],
                                     env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        if not janus.serving(f"{self.url}/v1/health", self.proc, 120):
            raise RuntimeError(f"mediaserver did not start; see {self.dir / 'server.log'}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def run_ours(server: Mediaserver, pubs: int, subs: int, duration: float, bitrate: float) -> dict:
    ws_url = server.url.replace("http", "ws", 1) + "/v1/ws"
    async with httpx.AsyncClient(base_url=server.url, auth=server.key, timeout=30) as http:
        room = (await http.post("/v1/rooms", json={"name": f"bench {pubs}x{subs}", "media_mode": "routed"})).json()["id"]
        publishers = [LoadParticipant(MediaserverSignaling(ws_url, await mint(http, room, f"p{i}", "moderator" if i < 4 else "publisher"), room))
                      for i in range(pubs)]
        tokens = [await mint(http, room, f"s{i}", "subscriber") for i in range(subs)]

    async def make_subs():
        return [LoadParticipant(MediaserverSignaling(ws_url, t, room)) for t in tokens]

    state = {}

    def cpu() -> float:
        if "pid" not in state:
            state["pid"] = find_process("MediaWorkerActor")
            # CPU 0 is the forwarding process's alone, as it is Janus's: the rest of the server
            # (gateway, session hosts, Ray's own processes) shares CPU 1 with the load client.
            for pid in descendants(server.proc.pid):
                if pid != state["pid"]:
                    pin(pid, 1)
            pin(state["pid"], 0)
        return proc_cpu(state["pid"])

    return await measure(publishers, make_subs, duration=duration, bitrate=bitrate, cpu=cpu)


async def run_janus(jp: janus.JanusProcess, room: int, pubs: int, subs: int, duration: float, bitrate: float) -> dict:
    await janus.create_room(jp.url, room, pubs)
    publishers = [LoadParticipant(janus.JanusSignaling(jp.url, room)) for _ in range(pubs)]

    async def make_subs():
        feeds = [p.sig.feed_id for p in publishers]
        return [LoadParticipant(janus.JanusSignaling(jp.url, room, feeds=feeds)) for _ in range(subs)]

    return await measure(publishers, make_subs, duration=duration, bitrate=bitrate, cpu=lambda: proc_cpu(jp.proc.pid))


def figures(r: dict, pubs: int, subs: int) -> dict:
    streams = pubs * subs * 2  # video and audio of each publisher to each subscriber
    cpu = r["server_cpu_seconds"] or 0.0
    return {
        **r, "cpu_per_stream": cpu / r["elapsed"] / streams,
        "us_per_packet": cpu / r["packets_delivered"] * 1e6 if r["packets_delivered"] else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--bitrate", type=float, default=2_000_000)
    ap.add_argument("--only", choices=["mediaserver", "janus"], help="run one server only")
    ap.add_argument("--scenarios", nargs="+", metavar="PxS", help="e.g. 1x10 5x20 (default: all four)")
    ap.add_argument("--no-floor", dest="floor", action="store_false",
                    help="leave out the floor: a forwarding loop without crypto at each row's rate and fan-out")
    args = ap.parse_args(argv)
    scenarios = [tuple(map(int, x.split("x"))) for x in args.scenarios] if args.scenarios else SCENARIOS
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    allow_loopback_candidates()
    janus.install()
    why = janus.available()
    if why and args.only != "mediaserver":
        print(f"Janus left out: {why}")
    rows = []
    if args.only != "janus":
        server = Mediaserver()
        server.start()
        try:
            for pubs, subs in scenarios:
                r = figures(asyncio.run(run_ours(server, pubs, subs, args.duration, args.bitrate)), pubs, subs)
                rows.append(("mediaserver", pubs, subs, r))
                print(_line("mediaserver", pubs, subs, r), flush=True)
        finally:
            server.stop()
    if args.only != "mediaserver" and not why:
        jp = janus.JanusProcess(_port(), event_loops=2)
        jp.start()
        pin(jp.proc.pid, 0)
        try:
            for n, (pubs, subs) in enumerate(scenarios):
                r = figures(asyncio.run(run_janus(jp, 1000 + n, pubs, subs, args.duration, args.bitrate)), pubs, subs)
                rows.append(("janus", pubs, subs, r))
                print(_line("janus", pubs, subs, r), flush=True)
        finally:
            jp.stop()
    print()
    print(HEAD)
    for server, pubs, subs, r in rows:
        print(_line(server, pubs, subs, r))
    ours = {(p, s): r for name, p, s, r in rows if name == "mediaserver"}
    theirs = {(p, s): r for name, p, s, r in rows if name == "janus"}
    if ours and theirs:
        print("\nCPU per delivered packet, mediaserver / Janus (same run):")
        for key in ours:
            if key in theirs:
                print(f"  {key[0]} x {key[1]}: {ours[key]['us_per_packet'] / theirs[key]['us_per_packet']:.2f}")
        if args.floor:
            print(floor(ours, theirs, args.duration))
    return 0


def floor(ours: dict, theirs: dict, duration: float) -> str:
    """What the kernel alone asks of a forwarder here: benchmark 1's loop with no crypto at all (one
    receive, copies sent with sendmmsg) at each row's delivered rate and fan-out, against Janus's
    CPU per packet. A ratio target below this is below what any forwarder could reach on this
    machine (most of it is the loopback delivery each send carries out for its receiver)."""
    from loadtest.bench_fastpath import measure

    lines = ["\nThe floor: a forwarding loop without crypto (benchmark 1) at each row's rate and fan-out:"]
    for (pubs, subs), r in ours.items():
        if (pubs, subs) not in theirs:
            continue
        f = measure("no-crypto", "SRTP_AEAD_AES_128_GCM", subs, r["delivered_per_s"], duration)
        janus_us = theirs[pubs, subs]["us_per_packet"]
        lines.append(f"  {pubs} x {subs}: {f['cpu_us_per_packet']:.2f} us/packet = {f['cpu_us_per_packet'] / janus_us:.2f} of Janus's "
                     f"(mediaserver {r['us_per_packet'] / f['cpu_us_per_packet']:.2f}x the floor)")
    return "\n".join(lines)


HEAD = (f"{'server':<12} {'pubs':>4} {'subs':>4} {'delivered/s':>11} {'loss':>7} {'CPU-s/s/stream':>14} "
        f"{'us/packet':>9} {'p50 ms':>7} {'p99 ms':>7}")


def _line(server: str, pubs: int, subs: int, r: dict) -> str:
    return (f"{server:<12} {pubs:>4} {subs:>4} {r['delivered_per_s']:>11,.0f} {r['loss']:>7.2%} {r['cpu_per_stream']:>14.5f} "
            f"{r['us_per_packet']:>9.2f} {r['latency_p50_ms']:>7.2f} {r['latency_p99_ms']:>7.2f}")


if __name__ == "__main__":
    sys.exit(main())
