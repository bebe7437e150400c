"""A shaped link between the test's network namespace and a new one: rate, delay and loss in
user space, because this machine's kernel has no ``netem`` (``tbf`` limits rate only).

One process does it all. It opens a TUN device here (``near``, 10.77.0.1/24), moves itself into a
network namespace of its own (``unshare(CLONE_NEWNET)``), opens a second TUN device there
(``far``, 10.77.0.2/24, with its own ``lo``) and copies IP packets between the two, each way
through a bottleneck: a token bucket at the rate, a queue of at most ``queue`` seconds (what does
not fit is dropped, as a router's full buffer drops it), then the delay; each packet is lost with
probability ``loss``. Nothing leaves the two namespaces the test made.

Programs run on the far side with ``ShapedLink.far_command(...)`` (``nsenter`` into the
process's namespace); the shaping changes while it runs (``shape``/``clear``).

Run as ``python -m tests.shaped_link`` it is the forwarding process itself (the class starts it)."""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import os
import random
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

NEAR, FAR = "10.77.0.1", "10.77.0.2"
TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
CLONE_NEWNET = 0x40000000


@dataclass
class Shape:
    rate: float = 0.0  # bit/s each way; 0: unlimited
    delay: float = 0.0  # seconds each way
    loss: float = 0.0  # probability a packet is lost, each way
    queue: float = 0.2  # seconds of the bottleneck's buffer


class ShapedLink:
    """``with ShapedLink(Shape(300_000, 0.04, 0.02)) as link:`` ... ``link.far_command([...])``."""

    def __init__(self, shape: Shape | None = None, seed: int = 1):
        self.shape = shape or Shape()
        self.seed = seed
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ShapedLink":
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.shaped_link", str(self.seed)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"the shaped link did not start: {line!r}")
        self.set(self.shape)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def far_command(self, argv: list[str]) -> list[str]:
        """``argv`` as a command that runs in the far namespace."""
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *argv]

    def far_executable(self, program: str, directory: str) -> str:
        """A script that runs ``program`` in the far namespace with the arguments it is given (for
        tools that take an executable's path, as Playwright does)."""
        path = os.path.join(directory, f"far-{os.path.basename(program)}")
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nexec nsenter --net=/proc/{self.pid}/ns/net -- {program} "$@"\n')
        os.chmod(path, 0o755)
        return path

    def set(self, shape: Shape) -> None:
        self.shape = shape
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{shape.rate} {shape.delay} {shape.loss} {shape.queue}\n")
        self.proc.stdin.flush()
        if self.proc.stdout.readline().strip() != "ok":
            raise RuntimeError("the shaped link did not take the new shape")

    def clear(self) -> None:
        self.set(Shape())


# The forwarding process ----------------------------------------------------------------------


def _tun(name: str, address: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    subprocess.run(["ip", "addr", "add", f"{address}/24", "dev", name], check=True)
    subprocess.run(["ip", "link", "set", name, "up", "mtu", "1500"], check=True)
    return fd


class _Direction:
    """One way through the bottleneck."""

    def __init__(self, out_fd: int, rng: random.Random):
        self.out_fd = out_fd
        self.rng = rng
        self.free_at = 0.0  # when the bottleneck has sent everything queued
        self.sent = self.lost = self.dropped = 0

    def admit(self, packet: bytes, shape: Shape, now: float, schedule: list) -> None:
        if shape.loss and self.rng.random() < shape.loss:
            self.lost += 1
            return
        leave = now
        if shape.rate:
            start = max(now, self.free_at)
            if start - now > shape.queue:
                self.dropped += 1  # the buffer is full
                return
            self.free_at = leave = start + len(packet) * 8 / shape.rate
        heapq.heappush(schedule, (leave + shape.delay, id(packet), self.out_fd, packet))
        self.sent += 1


def _forward(seed: int) -> None:
    near = _tun("near", NEAR)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    far = _tun("far", FAR)
    rng = random.Random(seed)
    ways = {near: _Direction(far, rng), far: _Direction(near, rng)}
    shape = Shape()
    schedule: list = []
    print("ready", flush=True)
    stdin = sys.stdin.fileno()
    while True:
        timeout = max(0.0, schedule[0][0] - time.monotonic()) if schedule else 1.0
        readable, _, _ = select.select([near, far, stdin], [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            if fd == stdin:
                line = sys.stdin.readline()
                if not line:
                    return  # the test is gone
                rate, delay, loss, queue = (float(x) for x in line.split())
                shape = Shape(rate, delay, loss, queue)
                print("ok", flush=True)
                continue
            while True:
                try:
                    packet = os.read(fd, 65535)
                except BlockingIOError:
                    break
                ways[fd].admit(packet, shape, now, schedule)
        now = time.monotonic()
        while schedule and schedule[0][0] <= now:
            _, _, fd, packet = heapq.heappop(schedule)
            try:
                os.write(fd, packet)
            except OSError:
                pass  # the device's queue is full: lost like any other


if __name__ == "__main__":
    _forward(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
