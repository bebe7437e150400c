"""A Ray cluster of several nodes on one machine, for tests and benchmarks: each node a
`ray start` with its own loopback address and labels, in a process group of its own so a node
can be killed whole. Run it inside a loopback-only network namespace (127.0.0.0/8 is all lo)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).parent / "ray")
# Each node's Ray, as the README tells operators: callers hear of a dead actor at once, no idle
# workers in reserve, and a node that stops answering is declared dead within about 2 s.
RAY_ENV = {
    "RAY_AUTH_MODE": "token", "RAY_timeout_ms_task_wait_for_death_info": "100",
    "RAY_core_worker_internal_heartbeat_ms": "100", "RAY_enable_worker_prestart": "0",
    "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3", "RAY_health_check_timeout_ms": "500",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` (proc(5): the 6th field of /proc/PID/stat)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue  # (gone meanwhile)
            if int(stat.rsplit(")", 1)[1].split()[3]) == sid:  # (after the name, which may hold anything)
                out.append(int(entry))
    return out


class RayNodes:
    def __init__(self, base: Path):
        self.base = base
        self.procs: dict[str, subprocess.Popen] = {}
        self.address = ""
        subprocess.run([RAY, "get-auth-token", "--generate"], env={**os.environ, **RAY_ENV}, capture_output=True)

    def start(self, ip: str, labels: str, *, head: bool = False, cpus: int = 1) -> None:
        log = self.base / f"ray-{ip}.log"
        for _attempt in range(5):  # the head binds its port itself: if it was taken meanwhile, try another
            args = [RAY, "start", f"--node-ip-address={ip}", f"--num-cpus={cpus}", f"--labels={labels}", "--block"]
            if head:
                port = _free_port()
                args += ["--head", f"--port={port}", "--include-dashboard=false", "--disable-usage-stats"]
            else:
                args += [f"--address={self.address}"]
            proc = subprocess.Popen(args, env={**os.environ, **RAY_ENV}, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            deadline = time.time() + 90
            while time.time() < deadline and proc.poll() is None and "Ray runtime started" not in log.read_text():
                time.sleep(0.3)
            if proc.poll() is None:
                break
        if proc.poll() is not None:
            raise RuntimeError(f"ray start on {ip} failed:\n{log.read_text()[-3000:]}")
        self.procs[ip] = proc
        if head:
            self.address = f"{ip}:{port}"

    def kill(self, ip: str) -> None:
        """The node dies: its raylet, its workers, everything of it, at once, as when its machine
        goes. Ray's workers are process groups of their own (killing the group of `ray start`
        left them running until they noticed, about 2 s later), but all are in the session
        `ray start` began."""
        for pid in _session(self.procs[ip].pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs[ip].wait()

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C: `ray start --block` stops what it started
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
