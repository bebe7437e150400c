"""The `mediaserver` command as an operator uses it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import jwt
import pytest

from tests.helpers import BIN, ServerProcess, cli, free_port, server_env


@pytest.fixture
def env(tmp_path):
    return server_env(tmp_path)


@pytest.mark.parametrize(
    "args",
    [[], ["serve"], ["room"], ["room", "create"], ["room", "list"], ["token"], ["token", "create"], ["apikey"], ["apikey", "create"], ["apikey", "list"], ["apikey", "revoke"], ["nodes"], ["node"], ["node", "drain"], ["node", "undrain"]],
)
def test_help_everywhere(args):
    out = cli(*args, "--help").stdout
    assert out.startswith("usage: mediaserver") and "--help" in out


def test_version():
    assert re.match(r"mediaserver \d+\.\d+\.\d+", cli("--version").stdout)


def test_apikey_room_token_flow(env):
    key = json.loads(cli("apikey", "create", "--team", "acme", "--max-live-sessions", "3", "--json", env=env).stdout)
    assert key["id"].startswith("AK_") and len(key["secret"]) >= 40
    room = json.loads(cli("room", "create", "--team", "acme", "--name", "Board", "--capacity", "8", "--comment", "monthly", "--json", env=env).stdout)
    assert (room["name"], room["capacity"], room["comment"], room["type"]) == ("Board", 8, "monthly", "adhoc")
    listed = json.loads(cli("room", "list", "--team", "acme", "--json", env=env).stdout)["rooms"]
    assert [r["id"] for r in listed] == [room["id"]]
    tok = json.loads(cli("token", "create", "--room", room["id"], "--identity", "ann", "--role", "moderator", "--ttl", "120", "--json", env=env).stdout)
    claims = jwt.decode(tok["token"], key["secret"], algorithms=["HS256"])
    assert (claims["room"], claims["sub"], claims["role"], claims["exp"] - claims["nbf"]) == (room["id"], "ann", "moderator", 120)
    assert tok["join_url"].startswith(f"http://127.0.0.1:8080/join/{room['id']}?token=")
    tok = json.loads(cli("token", "create", "--room", room["id"], "--identity", "ann", "--public-url", "https://meet.example.org", "--json", env=env).stdout)
    assert tok["join_url"].startswith(f"https://meet.example.org/join/{room['id']}?token=")
    keys = json.loads(cli("apikey", "list", "--json", env=env).stdout)["keys"]
    assert key["id"] in [k["id"] for k in keys] and all("secret" not in k for k in keys)
    cli("apikey", "revoke", key["id"], env=env)
    proc = cli("token", "create", "--room", room["id"], "--identity", "ann", "--api-key", key["id"], env=env, check=False)
    assert proc.returncode == 2 and "unauthorized" in proc.stderr


def test_cli_errors_are_clear(env):
    proc = cli("room", "create", "--name", "x", "--capacity", "51", env=env, check=False)
    assert proc.returncode == 2 and "capacity" in proc.stderr
    proc = cli("token", "create", "--room", "room_missing", "--identity", "x", env=env, check=False)
    assert proc.returncode == 2 and "room_not_found" in proc.stderr
    proc = cli("token", "create", "--room", "r", "--identity", "x", "--role", "king", env=env, check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = cli("apikey", "revoke", "AK_nope", env=env, check=False)
    assert proc.returncode == 2 and "not_found" in proc.stderr


def _ray_processes_of(gcs_address: str) -> list[str]:
    port = gcs_address.rsplit(":", 1)[1]
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if ("gcs_server" in cmd or "raylet" in cmd or "ray::" in cmd) and port in cmd:
            found.append(f"{proc.name}: {cmd[:120]}")
    return found


def test_serve_banner_and_clean_stop(tmp_path):
    env = server_env(tmp_path)
    srv = ServerProcess(data_dir=tmp_path, env=env)
    srv.start()
    log = srv.log()
    url = re.search(r"URL:\s+(\S+)", log).group(1)
    key_id = re.search(r"API key:\s+(\S+)", log).group(1)
    secret = re.search(r"API secret:\s+(\S+)", log).group(1)
    demo = re.search(r"Demo room:\s+(\S+)", log).group(1)
    assert url == srv.url and demo.startswith(f"{srv.url}/join/room_")
    # The printed key works, the demo link serves the meeting page, and its token is a moderator's.
    r = httpx.get(f"{url}/v1/rooms", auth=(key_id, secret))
    assert r.status_code == 200 and [x["name"] for x in r.json()["rooms"]] == ["Demo room"]
    assert httpx.get(demo).status_code == 200
    dashboard = re.search(r"Dashboard:\s+(\S+)", log).group(1)
    assert dashboard == f"{srv.url}/dashboard" and "dashboard" in httpx.get(dashboard).text
    assert re.search(r"Archives:\s+(\S+)", log).group(1) == str(tmp_path / "archives")  # where recordings go
    token = demo.split("token=", 1)[1]
    assert jwt.decode(token.replace("%3D", "="), secret, algorithms=["HS256"])["role"] == "moderator"
    gcs = (tmp_path / "ray_address").read_text().strip()
    assert _ray_processes_of(gcs), "the embedded Ray should be running"
    assert srv.stop() == 0, srv.log()
    assert _ray_processes_of(gcs) == [], "Ctrl-C must stop the Ray instance serve started"
    # A second start reuses the same key and demo room instead of making new ones.
    srv2 = ServerProcess(data_dir=tmp_path, env=env)
    srv2.start()
    try:
        assert re.search(r"API key:\s+(\S+)", srv2.log()).group(1) == key_id
    finally:
        assert srv2.stop() == 0, srv2.log()[-3000:]


def test_serve_json_prints_the_banner_as_json(tmp_path):
    import os
    import signal
    import subprocess

    from tests.helpers import BIN

    env = {**os.environ, **server_env(tmp_path)}
    proc = subprocess.Popen([str(BIN), "serve", "--port", "0", "--json"], stdout=subprocess.PIPE,
                            stderr=open(tmp_path / "err.log", "w"), env=env, text=True, cwd=tmp_path)
    try:
        line = proc.stdout.readline()  # the first line on stdout is the whole banner
        info = json.loads(line)
        assert info["url"].startswith("http://127.0.0.1:") and info["api_key"].startswith("AK_")
        assert info["demo_room"].startswith(info["url"] + "/join/room_") and info["ray"]["started_here"] is True
        assert httpx.get(f"{info['url']}/v1/rooms", auth=(info["api_key"], info["api_secret"])).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0


def test_serve_starts_a_local_turn_server_when_asked(tmp_path):
    """`make run` (serve --turn-local auto) starts Debian's coturn on the media address, says so in
    the banner, gives participants its credentials and stops it on the way out."""
    import asyncio
    import random

    import pytest

    from loadtest.peers import MediaClient
    from mediaserver.turn import LocalTurn, stun_answers
    from tests.helpers import create_key

    if not LocalTurn.installed():
        pytest.skip("Debian's coturn is not installed (make test installs it)")
    for attempt in range(5):  # coturn cannot be given port 0: try ports until one is free
        port = random.randint(30000, 39999)
        env = server_env(tmp_path / str(attempt), turn_local="on", turn_local_port=port)
        srv = ServerProcess(data_dir=tmp_path / str(attempt), env=env)
        srv.key = create_key(env)
        try:
            srv.start()
            break
        except Exception:
            srv.stop()
    else:
        raise AssertionError("serve with a local coturn did not start on any of 5 ports")
    try:
        turn_line = re.search(r"TURN:\s+(.+)", srv.log()).group(1)
        assert turn_line.startswith(f"turn:127.0.0.1:{port}?transport=udp") and "started here" in turn_line
        assert stun_answers("127.0.0.1", port)

        async def joined() -> dict:
            async with srv.http() as http:
                room = (await http.post("/v1/rooms", json={"name": "turn"})).json()
                token = (await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": "a"})).json()["token"]
            c = MediaClient(srv.ws_url)
            try:
                return await c.join(token, room["id"])
            finally:
                await c.close()

        servers = asyncio.run(joined())["ice_servers"]
        turn = next(s for s in servers if "username" in s)
        assert f"turn:127.0.0.1:{port}?transport=udp" in turn["urls"] and turn["credential"]
    finally:
        assert srv.stop() == 0, srv.log()
    assert not stun_answers("127.0.0.1", port), "coturn must stop with the server"


def test_serve_starts_on_a_machine_with_a_network_interface(tmp_path):
    """The suite's namespace has only loopback; a real machine has an interface with a routable
    address, and Ray turns a loopback address into that one before it connects: `serve` hung
    there ("Failed to connect to GCS at address <that address>"). A namespace of its own with
    such an interface (one end of a veth pair whose other end is in the same namespace: nothing
    leaves it) shows it starts and serves."""
    log = tmp_path / "serve.log"
    script = f"""
ip link set lo up
ip link add eth9 type veth peer name eth10 && ip addr add 192.0.2.77/24 dev eth9 && ip link set eth9 up && ip link set eth10 up && ip route add default dev eth9
"{BIN}" serve --port 0 > "{log}" 2>&1 &
pid=$!
for i in $(seq 1 120); do grep -q "is ready" "{log}" && break; kill -0 $pid 2>/dev/null || break; sleep 0.5; done
url=$(grep -o "URL: *http://[0-9.:]*" "{log}" | awk '{{print $2}}')
"{sys.executable}" -c "import sys, urllib.request; print('status', urllib.request.urlopen(sys.argv[1] + '/v1/health').status)" "$url" || true
kill -INT $pid
for i in $(seq 1 60); do kill -0 $pid 2>/dev/null || break; sleep 0.5; done  # (not waited for yet: its PID stays its own)
kill -9 $pid 2>/dev/null; wait $pid
echo "exit $?"
"""
    env = {**os.environ, **server_env(tmp_path)}
    for ns in (["unshare", "-n"], ["unshare", "-rn"]):
        done = subprocess.run([*ns, "sh", "-c", script], env=env, capture_output=True, text=True, timeout=240)
        if "unshare:" not in done.stderr:
            break
    out = log.read_text() if log.exists() else ""
    assert "is ready" in out and "Failed to connect to GCS" not in out, out[-3000:]
    assert "status 200" in done.stdout and "exit 0" in done.stdout, (done.stdout, done.stderr[-2000:])
