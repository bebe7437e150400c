from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

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
    """One real `mediaserver serve` (local Ray, SQLite) for the API tests, with short timers.
    Its media worker sends with two threads, so the aiortc and Chromium tests that use it cross
    the fast path's sender threads (the servers of test_fault, test_cluster and others keep the
    default one)."""
    data_dir = tmp_path_factory.mktemp("server")
    env = server_env(data_dir, media_send_threads=2)
    srv = ServerProcess(data_dir=data_dir, env=env)
    srv.key = create_key(env)
    srv.start()
    yield srv
    code = srv.stop()
    assert code == 0, f"server did not stop cleanly ({code}):\n{srv.log()[-3000:]}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def store_url(request, tmp_path):
    """A migrated, empty database on SQLite, and on PostgreSQL when one can be started."""
    from mediaserver.config import Settings
    from mediaserver.store import Store

    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"
    else:
        base = request.getfixturevalue("postgres_url")
        url = Settings(database_url=base).db_url
        # a fresh schema per test: drop everything from the previous one
        s = Store(url)
        async with s.engine.begin() as conn:
            await conn.execute(sa.text("DROP SCHEMA public CASCADE"))
            await conn.execute(sa.text("CREATE SCHEMA public"))
        await s.close()
    s = Store(url)
    await s.migrate()
    await s.close()
    return url


@pytest.fixture
async def store(store_url):
    from mediaserver.store import Store

    s = Store(store_url)
    yield s
    await s.close()


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
    # pg_ctl binds the port itself; if another process took it since we looked, try another.
    for _attempt in range(5):
        port = free_port()
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} -c fsync=off"
        started = subprocess.run([*run_as, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"], capture_output=True)
        if started.returncode == 0:
            break
    else:
        raise AssertionError(f"PostgreSQL did not start: {(base / 'log').read_text()[-2000:]}")
    try:
        url = f"postgresql://ms@127.0.0.1:{port}/postgres"
        deadline = time.time() + 20
        while time.time() < deadline and subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)], capture_output=True).returncode != 0:
            time.sleep(0.2)
        yield url
    finally:
        subprocess.run([*run_as, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
