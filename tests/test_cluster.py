"""A cluster as operators run one: a Ray head started with `ray start`, two stateless
gateways joining it with --ray-address, and PostgreSQL as the shared store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import Participant, ServerProcess, create_key, free_port, make_room, make_token, server_env

RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    subprocess.run([RAY, "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    log_path = tmp_path_factory.mktemp("rayhead") / "ray.log"
    for _attempt in range(5):  # `ray start` binds the port itself: if it was taken meanwhile, try another
        port = free_port()
        proc = subprocess.Popen(
            [RAY, "start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
             "--disable-usage-stats", "--block"],
            env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and "Ray runtime started" not in log_path.read_text():
            time.sleep(0.3)
        if proc.poll() is None:
            break
    assert proc.poll() is None, f"ray start failed:\n{log_path.read_text()[-2000:]}"
    yield proc, f"127.0.0.1:{port}"
    # Like Ctrl-C: `ray start --block` then stops the processes it started, and no others.
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.postgres
async def test_two_gateways_on_one_cluster(ray_head, postgres_url, tmp_path):
    head, address = ray_head
    gateways = []
    base_env = {"ray_address": address, "database_url": postgres_url, "ray_namespace": "cluster-test"}
    for name in ("gw1", "gw2"):
        d = tmp_path / name
        d.mkdir()
        gateways.append(ServerProcess(data_dir=d, env=server_env(d, **base_env)))
    key = create_key(gateways[0].env, team="cluster")
    for gw in gateways:
        gw.key = key
        gw.start()
    gw1, gw2 = gateways
    try:
        assert "joined an existing cluster" in gw2.log() and address in gw2.log()
        async with gw1.http() as http:
            room = await make_room(http, name="spread out")
            a = Participant(gw1)
            assert (await a.join(await make_token(http, room["id"], "a", "moderator"), room["id"]))["type"] == "joined"
            b = Participant(gw2)
            assert (await b.join(await make_token(http, room["id"], "b"), room["id"]))["type"] == "joined"
            sid = a.joined["session"]["id"]
            assert b.joined["session"]["id"] == sid  # one session, whichever gateway you come through
            await a.wait_event("joined", b.id)

            # A drops off gateway 1 and resumes through gateway 2 as the same participant.
            await a.drop()
            await b.wait_event("disconnected", a.id)
            a2 = Participant(gw2)
            a2.joined = a.joined
            msg = await a2.resume()
            assert msg["type"] == "joined" and msg["participant"]["id"] == a.id, msg
            await b.wait_event("reconnected", a.id)

        # Gateway 1 goes away; the cluster, the session and gateway 2 carry on.
        assert gw1.stop() == 0
        assert head.poll() is None, "stopping a gateway must not stop the cluster it joined"
        async with gw2.http() as http:
            c = Participant(gw2)
            assert (await c.join(await make_token(http, room["id"], "c"), room["id"]))["type"] == "joined"
            assert c.joined["session"]["id"] == sid
            await a2.wait_event("joined", c.id)
            r = await http.get(f"/v1/sessions/{sid}")
            assert {p["identity"] for p in r.json()["participants"] if p["state"] == "connected"} == {"a", "b", "c"}
            assert (await http.post(f"/v1/sessions/{sid}/end")).status_code == 200
            for p in (a2, b, c):
                assert (await p.wait_event("session_ended"))["data"]["reason"] == "api"
    finally:
        for gw in gateways:
            gw.stop()
