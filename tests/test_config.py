"""Configuration precedence: defaults < TOML file < MEDIASERVER_* environment < explicit overrides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mediaserver.config import CONFIG_ENV, Settings, load_settings


def test_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    for k in ("MEDIASERVER_PORT", "MEDIASERVER_GRACE_SECONDS", "MEDIASERVER_HOST"):
        monkeypatch.delenv(k, raising=False)
    assert load_settings().port == 8080 and load_settings().grace_seconds == 420
    toml = tmp_path / "ms.toml"
    toml.write_text('port = 9000\ngrace_seconds = 60\nhost = "0.0.0.0"\n')
    monkeypatch.setenv(CONFIG_ENV, str(toml))
    s = load_settings()
    assert (s.port, s.grace_seconds, s.host) == (9000, 60, "0.0.0.0")
    # A wildcard bind is not an address to give out: this machine's reachable one is (loopback
    # where there is none, as in make test's namespace; both cases are tested below).
    from mediaserver.config import reachable_address

    assert s.base_url == f"http://{reachable_address() or '127.0.0.1'}:9000"
    monkeypatch.setenv("MEDIASERVER_PORT", "9100")
    s = load_settings()
    assert (s.port, s.grace_seconds) == (9100, 60)
    assert load_settings(port=9200).port == 9200
    other = tmp_path / "other.toml"
    other.write_text("grace_seconds = 5\n")
    assert load_settings(config_file=other).grace_seconds == 5  # an explicit file beats MEDIASERVER_CONFIG


def test_bad_values_are_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("MEDIASERVER_PORT", "not-a-port")
    with pytest.raises(ValidationError):
        load_settings()
    monkeypatch.delenv("MEDIASERVER_PORT")
    with pytest.raises(ValidationError):
        load_settings(database_url="mysql://x")
    with pytest.raises(ValidationError):
        load_settings(unknown_option=1)
    for threads in (0, 17, "many"):  # a worker's sender threads: 1 to 16
        with pytest.raises(ValidationError, match="media_send_threads"):
            load_settings(media_send_threads=threads)
    assert load_settings(media_send_threads=4).media_send_threads == 4
    with pytest.raises(FileNotFoundError):
        load_settings(config_file=tmp_path / "missing.toml")
    assert CONFIG_ENV not in __import__("os").environ  # loading leaves the environment alone


def test_database_urls(tmp_path, monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    s = load_settings(data_dir=tmp_path)
    assert s.db_url == f"sqlite+aiosqlite:///{tmp_path.resolve() / 'mediaserver.db'}"
    assert load_settings(database_url="postgresql://u@h/db").db_url == "postgresql+asyncpg://u@h/db"


def test_a_wildcard_host_gives_links_with_an_address_others_reach():
    """With --host 0.0.0.0 and no public_url, links carry this machine's address (here: a veth
    address inside a namespace of the test's own), and the banner says how to override it."""
    import subprocess
    import sys

    code = (
        "from mediaserver.config import Settings; s = Settings(host='0.0.0.0', port=9000); "
        "print(s.base_url); print(len(s.url_warnings()))"
    )
    setup = "ip link set lo up && ip link add v0 type veth peer name v1 && ip addr add 10.99.0.7/24 dev v0 && ip link set v0 up"
    out = subprocess.run(["unshare", "-n", "sh", "-c", f"{setup} && {sys.executable} -c \"{code}\""],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["http://10.99.0.7:9000", "1"]
    alone = subprocess.run(["unshare", "-n", sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    url, warnings = alone.stdout.split()
    assert url == "http://127.0.0.1:9000" and warnings == "1"  # only loopback: said so
    assert Settings(host="0.0.0.0", public_url="https://meet.example.org/").base_url == "https://meet.example.org"
    assert Settings(host="0.0.0.0", public_url="https://meet.example.org").url_warnings() == []


def test_ice_server_settings_are_checked():
    """TURN needs its shared secret, and every ICE URL is a stun:/turn: one; what passes gives
    each participant credentials that expire after turn_ttl."""
    import time

    from mediaserver.turn import IceServers

    with pytest.raises(ValidationError, match="turn_secret"):
        Settings(turn_urls=["turn:turn.example.com:3478"])
    with pytest.raises(ValidationError, match="not a stun:"):
        Settings(stun_urls=["http://stun.example.com"])
    with pytest.raises(ValidationError):
        Settings(turn_local="sometimes")
    ok = Settings(stun_urls=["stun:s.example.com"], turn_urls=["turns:t.example.com:5349"], turn_secret="k", turn_ttl=120)
    servers = IceServers.from_settings(ok).for_participant("part_x")
    assert servers[0] == {"urls": ["stun:s.example.com"]}
    expiry, who = servers[1]["username"].split(":")
    assert who == "part_x" and 115 <= int(expiry) - time.time() <= 125 and servers[1]["credential"]
    assert IceServers.from_settings(Settings()).for_participant("part_x") == []
