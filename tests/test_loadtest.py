"""The load tools against a real server: the WebRTC load client (real ICE/DTLS/SRTP, synthetic
media) and a short headless locust run that must end without a single failure."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from loadtest.client import run_load


async def test_load_client_delivers_synthetic_media(server):
    result = await run_load(
        server.url, (server.key["id"], server.key["secret"]), room_id=None, publishers=2, subscribers=3,
        duration=3, bitrate=800_000,
    )
    assert result["packets_sent"] > 2 * 3 * (800_000 / 8 / 1200) * 0.8  # both publishers, video and audio
    assert result["packets_delivered"] >= result["packets_sent"] * 3 * 0.98, result  # every subscriber, both publishers
    assert result["loss"] < 0.02 and 0 < result["latency_p50_ms"] < 100, result
    # Counted in C after SRTP (each packet authenticated with the subscriber's own session) and
    # timed from the send time inside it to the kernel's receive stamp.
    assert result["not_decrypted"] == 0 and result["latency_p99_ms"] >= result["latency_p50_ms"], result
    assert 0 <= result["jitter_ms"] < 50, result


async def test_locust_smoke_run_has_no_failures(server, tmp_path):
    env = dict(
        os.environ, MEDIASERVER_KEY=f"{server.key['id']}:{server.key['secret']}", LOADTEST_ROOM_SIZE="4",
        LOADTEST_MEDIA_EVERY="4", LOADTEST_MEDIA_SECONDS="2",
    )
    locust = Path(sys.executable).with_name("locust")
    proc = await asyncio.create_subprocess_exec(
        str(locust), "-f", "loadtest/locustfile.py", "--headless", "--host", server.url, "-u", "8", "-r", "8",
        "-t", "25s", "--stop-timeout", "20", "--only-summary", "--csv", str(tmp_path / "run"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:] + "\n--- server log ---\n" + server.log()[-3000:]
    with open(tmp_path / "run_stats.csv") as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    total = rows[("", "Aggregated")]
    assert int(total["Request Count"]) > 50 and int(total["Failure Count"]) == 0, text[-3000:]
    assert int(rows[("ws", "join")]["Request Count"]) == 8
    for name in ("chat", "upvote", "resume", "questions"):
        assert int(rows[("ws", name)]["Request Count"]) > 0, name
    assert int(rows[("media", "publish+subscribe")]["Request Count"]) >= 1, text[-3000:]


async def test_lean_websocket_client_joins_and_chats(server):
    """The lean client against a real server: the handshake, a join, a chat message between two
    participants (frames both ways, longer than 125 bytes), and a close."""
    from loadtest import lean_ws
    from tests.helpers import make_room, make_token

    async with server.http() as http:
        room = await make_room(http)
        tokens = [await make_token(http, room["id"], name) for name in ("ann", "bob")]
    sockets = [await lean_ws.connect(server.ws_url) for _ in tokens]

    async def until(ws, check):
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 15))
            if check(msg):
                return msg

    ids = []
    for ws, tok in zip(sockets, tokens):
        await ws.send(json.dumps({"type": "join", "token": tok, "room_id": room["id"]}))
        joined = await until(ws, lambda m: m["type"] in ("joined", "error"))
        assert joined["type"] == "joined" and joined["reconnect_token"], joined
        ids.append(joined["participant"]["id"])
    ann, bob = sockets
    text = " ".join(["hello"] * 40)  # a frame over 125 bytes each way
    await ann.send(json.dumps({"type": "chat", "text": text}))
    heard = await until(bob, lambda m: m.get("event") == "chat")
    assert heard["data"]["message"]["text"] == text
    await ann.close()
    # What arrived before the close can still be read; then the socket says it is closed.
    for _ in range(100):
        try:
            await asyncio.wait_for(ann.recv(), 5)
        except lean_ws.ConnectionClosed as e:
            assert e.code == 1000
            break
    else:
        raise AssertionError("a closed socket kept reading")
    # the server saw the close as ann's socket going away
    await until(bob, lambda m: m.get("event") == "disconnected" and m["participant_id"] == ids[0])
    await bob.close()
