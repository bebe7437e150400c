"""Benchmark 5: how fast a session comes back after the process that held it dies.

A publisher (aiortc, a changing synthetic picture and a tone) and a subscriber that decodes
are in a session; the media worker's process is killed (SIGKILL) again and again, then the
session host's. For each media-worker kill: when ``media_reset`` reached the subscriber, and when
it decoded its first frames again, counted from the kill; for each host kill: when the session
answered a command again (rebuilt from the store by the restarted host), and when frames were
decoded again. Run inside ``unshare -n`` (``make bench`` does):

    python -m loadtest.bench_recovery [--kills 12] [--host-kills 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from loadtest.bench_sessions import Server
from loadtest.peers import join_media, loopback_only_ice, wait_for


async def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from actors import cluster

    loopback_only_ice()
    data = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    server = Server(data, {
        "MEDIASERVER_DATA_DIR": str(data), "MEDIASERVER_MEDIA_PORT": "0", "MEDIASERVER_LOG_LEVEL": "warning",
        "MEDIASERVER_MEDIA_ALLOWED_NETWORKS": '["127.0.0.0/8"]', "MEDIASERVER_RAY_NAMESPACE": "bench-recovery",
    })
    server.start()
    server.ws_url = server.url.replace("http", "ws", 1) + "/v1/ws"
    cluster.init((data / "ray_address").read_text().strip(), "bench-recovery")
    rows, host_rows = [], []
    try:
        # (Idle connections dropped before uvicorn's 5 s keep-alive ends: a request sent on one the
        # server is closing at that instant fails without an answer.)
        limits = httpx.Limits(keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=server.url, auth=(server.key, server.secret), timeout=60, limits=limits) as http:
            room = (await http.post("/v1/rooms", json={"name": "recovery", "media_mode": "routed"})).json()
            pub = await join_media(server, http, room, "pub")
            sub = await join_media(server, http, room, "sub", "subscriber")
            await pub.publish()
            await wait_for(lambda: sub.got.video_frames >= 20, timeout=60)
            for i in range(args.kills):
                worker = cluster.find((await http.get(f"/v1/sessions/{pub.joined['session']['id']}")).json()["media_worker"])
                pid = await cluster.call(worker, "pid")
                resets, before = sub.resets, sub.got
                await asyncio.sleep(args.gap)
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                await wait_for(lambda: sub.resets > resets and sub.got is not before, timeout=60)
                await wait_for(lambda: len(sub.got.first_frames_at) >= 3, timeout=60)  # counted afresh
                row = {
                    "kill": i + 1,
                    "media_reset_s": round(sub.reset_times[-1] - killed, 2),
                    "frames_again_s": round(sub.got.first_frames_at[2] - killed, 2),
                }
                rows.append(row)
                print(row, flush=True)
            sid = pub.joined["session"]["id"]
            for i in range(args.host_kills):
                host = cluster.find((await http.get(f"/v1/sessions/{sid}")).json()["host"])
                pid = await cluster.call(host, "pid")
                resets, before = sub.resets, sub.got
                await asyncio.sleep(args.gap)
                killed = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                while (await pub.command({"type": "questions"}, timeout=30))["type"] != "ack":
                    await asyncio.sleep(0.02)
                answered = time.monotonic() - killed
                await wait_for(lambda: sub.resets > resets and sub.got is not before, timeout=60)
                await wait_for(lambda: len(sub.got.first_frames_at) >= 3, timeout=60)
                row = {"host_kill": i + 1, "answers_again_s": round(answered, 2),
                       "frames_again_s": round(sub.got.first_frames_at[2] - killed, 2)}
                host_rows.append(row)
                print(row, flush=True)
            await pub.close()
            await sub.close()
    finally:
        cluster.shutdown()
        server.stop()
    out: dict = {"kills": len(rows)}
    if rows:
        again = [r["frames_again_s"] for r in rows]
        resets = [r["media_reset_s"] for r in rows]
        out["media_reset_s"] = {"median": statistics.median(resets), "max": max(resets)}
        out["frames_again_s"] = {"median": statistics.median(again), "max": max(again)}
    if host_rows:
        answers = [r["answers_again_s"] for r in host_rows]
        frames = [r["frames_again_s"] for r in host_rows]
        out["host_kills"] = {"kills": len(host_rows),
                             "answers_again_s": {"median": statistics.median(answers), "max": max(answers)},
                             "frames_again_s": {"median": statistics.median(frames), "max": max(frames)}}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=12)
    p.add_argument("--host-kills", type=int, default=5)
    p.add_argument("--gap", type=float, default=3.0, help="seconds of media between kills")
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
