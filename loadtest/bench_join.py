"""Benchmark 7: from joining to the first decoded frame, step by step.

A routed session with one publisher (aiortc: a changing picture) on a quiet server; new
subscribers join one after another, each measured from the moment it opens its WebSocket:
``joined`` received, the server's subscribe offer received, our answer sent, ICE connected,
DTLS connected, first video frame decoded. Then the same with Chromium pages on the meeting
page (viewers, no camera): from the click on "Join now" to the first decoded frame. Median
and p95 of each over ``--joins`` joins. Last, how long a publisher waits for the answer to its
offer in a room that already holds ``--audience`` viewers (WebSocket participants, each of
whom the server must offer the new track), a new room for each of ``--repeats`` tries. Run
inside ``unshare -n`` (``make bench`` does):

    python -m loadtest.bench_join [--joins 20] [--no-browser] [--audience 0 50 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
from pathlib import Path

import httpx

from loadtest.bench_sessions import Server
from loadtest.peers import join_media, loopback_only_ice, wait_for

STEPS = ("joined", "offer", "answered", "ice", "connected", "first_frame")


def summary(values: list[float]) -> dict:
    values = sorted(values)
    return {"median_ms": round(statistics.median(values) * 1000), "p95_ms": round(values[int(0.95 * (len(values) - 1))] * 1000)}


async def aiortc_joins(server: Server, http: httpx.AsyncClient, room: dict, joins: int) -> dict:
    steps: dict[str, list[float]] = {s: [] for s in STEPS}
    for i in range(joins):
        sub = await join_media(server, http, room, f"viewer-{i}", "subscriber")
        await wait_for(lambda: sub.got.first_frames_at, timeout=30, interval=0.005)
        marks = {**sub.marks, "first_frame": sub.got.first_frames_at[0]}
        for s in STEPS:
            if s in marks:
                steps[s].append(marks[s] - marks["start"])
        await sub.close()
        await asyncio.sleep(0.3)
    return {s: summary(v) for s, v in steps.items() if v}


async def browser_joins(server: Server, http: httpx.AsyncClient, room: dict, joins: int) -> dict:
    from playwright.async_api import async_playwright

    from tests.browsers import CHROMIUM, FLAGS

    times = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            for i in range(joins):
                r = await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": f"page-{i}", "role": "subscriber"})
                ctx = await browser.new_context()
                page = await ctx.new_page()
                await page.goto(f"{server.url}/join/{room['id']}?token={r.json()['token']}&media=off")
                await page.get_by_role("button", name="Join now").wait_for()
                # From the click to the first decoded frame, on the page's own clock.
                took = await page.evaluate("""async () => {
                    const t0 = performance.now();
                    document.getElementById("join").click();
                    for (;;) {
                      if (window.room && window.room.subscribePc) {
                        const got = await window.room.receivedVideo();
                        if (got.some((s) => s.framesDecoded > 0)) return performance.now() - t0;
                      }
                      await new Promise((r) => setTimeout(r, 5));
                    }
                }""")
                times.append(took / 1000)
                await ctx.close()
                await asyncio.sleep(0.3)
        finally:
            await browser.close()
    return {"click_to_first_frame": summary(times)}


async def publish_answers(server: Server, http: httpx.AsyncClient, sizes: list[int], repeats: int) -> dict:
    """Seconds from a publisher's offer to its answer, with ``n`` viewers in the room already."""
    import websockets

    out = {}
    for n in sizes:
        times = []
        for r in range(repeats):
            room = (await http.post("/v1/rooms", json={"name": f"audience {n}", "media_mode": "routed", "type": "adhoc",
                                                        "capacity": 50})).json()
            viewers, readers = [], []
            for i in range(n):
                tok = (await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": f"v{i}", "role": "subscriber"})).json()["token"]
                ws = await websockets.connect(server.ws_url, max_size=None)
                await ws.send(json.dumps({"type": "join", "token": tok, "room_id": room["id"]}))
                await ws.recv()
                viewers.append(ws)
                readers.append(asyncio.ensure_future(_drain(ws)))
            pub = await join_media(server, http, room, f"speaker-{r}", "moderator")
            start = asyncio.get_running_loop().time()
            reply = await pub.publish(audio=False)
            times.append(asyncio.get_running_loop().time() - start)
            assert reply["type"] == "answer", reply
            await pub.close()
            for t in readers:
                t.cancel()
            for ws in viewers:
                await ws.close()
            await http.post(f"/v1/sessions/{pub.joined['session']['id']}/end")
        out[str(n)] = summary(times)
        print(json.dumps({"publish_answer": {str(n): out[str(n)]}}), flush=True)
    return out


async def _drain(ws) -> None:
    try:
        async for _ in ws:
            pass
    except Exception:
        return


async def run(args: argparse.Namespace) -> dict:
    loopback_only_ice()
    data = Path(tempfile.mkdtemp(prefix="bench-join-"))
    server = Server(data, {
        "MEDIASERVER_DATA_DIR": str(data), "MEDIASERVER_MEDIA_PORT": "0", "MEDIASERVER_LOG_LEVEL": "warning",
        "MEDIASERVER_MEDIA_ALLOWED_NETWORKS": '["127.0.0.0/8"]', "MEDIASERVER_RAY_NAMESPACE": "bench-join",
        "MEDIASERVER_DEFAULT_MAX_LIVE_SESSIONS": "1000",
    })
    server.start()
    server.ws_url = server.url.replace("http", "ws", 1) + "/v1/ws"
    out: dict = {"joins": args.joins}
    try:
        async with httpx.AsyncClient(base_url=server.url, auth=(server.key, server.secret), timeout=60) as http:
            room = (await http.post("/v1/rooms", json={"name": "join bench", "media_mode": "routed"})).json()
            pub = await join_media(server, http, room, "speaker", "moderator")
            await pub.publish(audio=False)
            await asyncio.sleep(2)
            out["aiortc"] = await aiortc_joins(server, http, room, args.joins)
            print(json.dumps({"aiortc": out["aiortc"]}), flush=True)
            if not args.no_browser:
                out["chromium"] = await browser_joins(server, http, room, args.joins)
            await pub.close()
            await http.post(f"/v1/sessions/{pub.joined['session']['id']}/end")
            out["publish_answer"] = await publish_answers(server, http, args.audience, args.repeats)
    finally:
        server.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--joins", type=int, default=20)
    p.add_argument("--no-browser", action="store_true")
    p.add_argument("--audience", type=int, nargs="+", default=[0, 10, 49])
    p.add_argument("--repeats", type=int, default=5)
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    main()
