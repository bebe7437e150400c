"""Benchmark 6: a webinar larger than one media worker, over two (simulated) nodes.

A Ray head and two media nodes (127.0.0.2, 127.0.0.3, one media worker each) on this machine,
a gateway joining them, one publisher and N synthetic subscribers (the load client: real
ICE/DTLS/SRTP through aiortc, media counted without decoding). With N/2 receivers per worker
per session, half the audience receives from the session's home worker and half from the
other node's, where each of the publisher's tracks arrives once over the leg between the two.
The bitrate is low on purpose: the 1,000 receiving clients run in one Python process on this
2-core machine, and they (not the server) are the limit.

    python -m loadtest.bench_webinar [--subscribers 1000] [--bitrate 64000] [--duration 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import httpx

from loadtest.bench_sessions import Server, cpu_seconds
from loadtest.client import LoadParticipant, MediaserverSignaling, allow_loopback_candidates, mint
from loadtest.simcluster import RAY_ENV, RayNodes


async def run(args: argparse.Namespace) -> dict:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    base = Path(tempfile.mkdtemp(prefix="bench-webinar-"))
    nodes = RayNodes(base)
    server = None
    try:
        nodes.start("127.0.0.1", "mediaserver-media-workers=0,mediaserver-session-hosts=1", head=True)
        for ip in ("127.0.0.2", "127.0.0.3"):
            nodes.start(ip, "mediaserver-media-workers=1,mediaserver-session-hosts=0")
        os.environ.update(RAY_ENV)
        server = Server(base, {
            "MEDIASERVER_DATA_DIR": str(base), "MEDIASERVER_RAY_ADDRESS": nodes.address, "MEDIASERVER_MEDIA_PORT": "0",
            "MEDIASERVER_LOG_LEVEL": "warning", "MEDIASERVER_MEDIA_ALLOWED_NETWORKS": '["127.0.0.0/8"]',
            "MEDIASERVER_MAX_ROOM_CAPACITY": str(args.subscribers + 10),
            "MEDIASERVER_SESSION_RECEIVERS_PER_WORKER": str(max(1, args.subscribers // 2)),
            "MEDIASERVER_RAY_NAMESPACE": "webinar", "MEDIASERVER_STALE_SECONDS": "600", "MEDIASERVER_POLL_SECONDS": "60",
        })
        server.start()
        ws_url = server.url.replace("http", "ws", 1) + "/v1/ws"
        allow_loopback_candidates()
        async with httpx.AsyncClient(base_url=server.url, auth=(server.key, server.secret), timeout=60) as http:
            room = (await http.post("/v1/rooms", json={"name": "webinar", "media_mode": "routed",
                                                       "capacity": args.subscribers + 5})).json()
            pub = LoadParticipant(MediaserverSignaling(ws_url, await mint(http, room["id"], "speaker", "moderator"), room["id"]))
            tokens = [await mint(http, room["id"], f"viewer-{i}", "subscriber") for i in range(args.subscribers)]

            subs = [LoadParticipant(MediaserverSignaling(ws_url, t, room["id"])) for t in tokens]
            try:
                await pub.join(subscribe=False)
                await pub.publish(bitrate=args.bitrate, audio=False)
                joined = time.monotonic()
                for i in range(0, len(subs), args.batch):  # in batches: the clients' handshakes are the slow part
                    await asyncio.gather(*(s.join() for s in subs[i:i + args.batch]))
                deadline = time.monotonic() + 300
                while not all(s.sub_pc.connectionState == "connected" for s in subs):
                    if time.monotonic() > deadline:
                        raise RuntimeError("the subscribers did not all connect in 5 minutes")
                    await asyncio.sleep(0.5)
                join_s = time.monotonic() - joined
                print(f"{len(subs)} subscribers joined and connected in {join_s:.0f} s", flush=True)
                await asyncio.sleep(2)
                before = [s.received.packets for s in subs]
                cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
                sent = await pub.send(args.duration)
                await asyncio.sleep(1.0)  # the last packets in flight
                elapsed, cpu_used = time.monotonic() - t0, cpu_seconds(server.proc.pid) - cpu0
                got = sum(s.received.packets - b for s, b in zip(subs, before))
                latencies = sorted(x for s in subs for x in s.received.latencies)
                result = {
                    "subscribers": len(subs), "bitrate": args.bitrate, "duration": args.duration,
                    "join_and_connect_s": round(join_s, 1), "packets_sent": sent, "packets_delivered": got,
                    "loss": round(1 - got / (sent * len(subs)), 5) if sent else None,
                    "delivered_per_s": round(got / elapsed),
                    "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
                    "latency_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
                    "server_cpu_seconds": round(cpu_used, 1),
                }
                health = (await http.get("/v1/server")).json()
                result["workers"] = {w["name"]: {"transports": w["transports"], "rtp_in": w["counters"].get("rtp_in", 0),
                                                 "rtp_out": w["counters"].get("rtp_out", 0)} for w in health["workers"]}
                print(json.dumps(result), flush=True)  # before the 1,000 clients close, which takes a while
                return result
            finally:
                await asyncio.gather(*(x.close() for x in [pub, *subs]), return_exceptions=True)
    finally:
        if server is not None:
            server.stop()
        nodes.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--bitrate", type=float, default=64_000, help="the publisher's video, bit/s")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--batch", type=int, default=50)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
