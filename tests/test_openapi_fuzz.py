"""schemathesis against a running server, on PostgreSQL (the stricter store: it refuses what
SQLite lets through, such as NUL characters): every generated request, valid and invalid, must
be answered without a 5xx and only with a status the OpenAPI document lists for that route."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.helpers import ServerProcess, create_key, server_env

SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")


@pytest.mark.postgres
def test_generated_requests_get_documented_answers(postgres_url, tmp_path):
    db = f"fuzz_{uuid.uuid4().hex[:8]}"
    host, port = re.search(r"@([\d.]+):(\d+)/", postgres_url).groups()
    subprocess.run(["psql", "-h", host, "-p", port, "-U", "ms", "-d", "postgres", "-c", f"CREATE DATABASE {db}"],
                   check=True, capture_output=True)
    env = server_env(tmp_path, database_url=postgres_url.rsplit("/", 1)[0] + f"/{db}")
    srv = ServerProcess(data_dir=tmp_path, env=env)
    srv.key = create_key(env)
    srv.start()
    try:
        run = subprocess.run(
            [SCHEMATHESIS, "run", f"{srv.url}/openapi.json", "--auth", f"{srv.key['id']}:{srv.key['secret']}",
             "--checks", "not_a_server_error,status_code_conformance", "--phases", "coverage,fuzzing",
             "--max-examples", "8", "--workers", "2", "--seed", "1", "--request-timeout", "30"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache goes there
        )
        assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
        assert re.search(r"\d+ generated, \d+ passed", run.stdout), run.stdout[-2000:]
        assert "unhandled error" not in srv.log(), srv.log()[-3000:]
    finally:
        assert srv.stop() == 0
