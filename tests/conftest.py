from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

# Test processes join the servers' embedded Ray clusters, which use Ray's token auth
# (~/.ray/auth_token). A client naming an address must opt in, before Ray loads its config.
os.environ.setdefault("RAY_AUTH_MODE", "token")

from tests.helpers import ServerProcess, create_key, free_port, server_env


@pytest.fixture
async def browser():
    """Headless Chromium (tests/browsers.py), one per test."""
    from playwright.async_api import async_playwright

    from tests.browsers import CHROMIUM, FLAGS

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        await b.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory):
    """One real `mediaserver serve` (local Ray, SQLite) for the API tests, with short timers."""
    data_dir = tmp_path_factory.mktemp("server")
    env = server_env(data_dir)
    srv = ServerProcess(data_dir=data_dir, port=free_port(), env=env)
    srv.key = create_key(env)
    srv.start()
    yield srv
    code = srv.stop()
    assert code == 0, f"server did not stop cleanly ({code}):\n{srv.log()[-3000:]}"


def _pg_bin(name: str) -> str | None:
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1, started from Debian's postgresql packages."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries not installed (Debian package postgresql)")
    run_as: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        if not shutil.which("runuser") or subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
            pytest.skip("running as root without a 'postgres' user to run PostgreSQL as")
        run_as = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="ms-pg-"))
    os.chmod(base, 0o777)
    data, port = base / "data", 0
    subprocess.run([*run_as, initdb, "-D", str(data), "-A", "trust", "-U", "ms"], check=True, capture_output=True)
    from tests.helpers import free_port as fp

    port = fp()
    opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} -c fsync=off"
    subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"], check=True, capture_output=True)
    try:
        url = f"postgresql://ms@127.0.0.1:{port}/postgres"
        deadline = time.time() + 20
        while time.time() < deadline and subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode != 0:
            time.sleep(0.2)
        yield url
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
