"""What an idle server costs: ``mediaserver serve`` on the embedded defaults (local Ray, SQLite),
nobody connected, measured over a window after it has settled: the CPU time of every process it
started (its own, Ray's, the session host's and the media workers') and their memory (RSS, and
PSS, which counts a page shared by n processes as 1/n in each).

    python -m loadtest.bench_idle            # 60 s window
    python -m loadtest.bench_idle --seconds 20

Run it in a loopback-only namespace, as ``make bench`` does.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.bench_sessions import tree

TICK = os.sysconf("SC_CLK_TCK")


def _sample(pids: list[int]) -> dict[int, tuple[str, float, int, int]]:
    """pid -> (name, CPU seconds so far, RSS bytes, PSS bytes)."""
    out = {}
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            fields = stat.rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / TICK
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().split("\n")
            mem = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in rollup if line.endswith("kB")}
        except (OSError, IndexError, ValueError):
            continue
        out[pid] = (name[:70], cpu, mem.get("Rss", 0), mem.get("Pss", 0))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="the measured window (default 60)")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds after start before measuring")
    args = ap.parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    env = dict(os.environ, MEDIASERVER_DATA_DIR=str(data), MEDIASERVER_PORT="0", MEDIASERVER_MEDIA_PORT="0",
               MEDIASERVER_RAY_NAMESPACE=f"bench-idle-{os.getpid()}")
    log = open(data / "serve.log", "w")
    exe = Path(sys.executable).with_name("mediaserver")
    proc = subprocess.Popen([str(exe), "serve"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "is ready" not in (data / "serve.log").read_text():
            if proc.poll() is not None or time.time() > deadline:
                raise SystemExit(f"serve did not start:\n{(data / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)
        time.sleep(args.settle)
        before, t0 = _sample(tree(proc.pid)), time.monotonic()
        time.sleep(args.seconds)
        after, window = _sample(tree(proc.pid)), time.monotonic() - t0
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    rows = sorted(((cpu - before.get(pid, (name, cpu))[1], rss, pss, name) for pid, (name, cpu, rss, pss) in after.items()),
                  reverse=True)
    cpu = sum(r[0] for r in rows)
    print(f"an idle mediaserver serve: {len(rows)} processes over {window:.0f} s")
    print(f"CPU {cpu:.2f} s = {100 * cpu / window:.2f}% of one core; memory RSS {sum(r[1] for r in rows) / 1e6:.0f} MB, "
          f"PSS {sum(r[2] for r in rows) / 1e6:.0f} MB")
    print(f"{'CPU s':>7} {'% core':>7} {'RSS MB':>7} {'PSS MB':>7}  process")
    for c, rss, pss, name in rows:
        print(f"{c:>7.2f} {100 * c / window:>7.2f} {rss / 1e6:>7.0f} {pss / 1e6:>7.0f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
