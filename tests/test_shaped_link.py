"""The test tool that shapes a link between two namespaces (tests/shaped_link.py) does what the
adaptive-media tests rely on: delay, loss and rate, both ways, and a clean link when lifted."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time

import pytest

from tests.shaped_link import FAR, NEAR, Shape, ShapedLink

pytestmark = pytest.mark.skipif(not shutil.which("nsenter"), reason="nsenter (util-linux) runs programs in the far namespace")

# Sends ``count`` datagrams of ``size`` bytes from the far side to the echo, ``gap`` apart, and
# prints how many came back and the median round trip (ms).
PROBE = """
import socket, statistics, sys, time
host, port, count, size, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
sent, rtts = {}, []
start = time.monotonic()
for i in range(count):
    sent[i] = time.monotonic()
    s.sendto(i.to_bytes(4, "big") + bytes(size - 4), (host, port))
    end = time.monotonic() + gap
    while time.monotonic() < end or (i == count - 1 and time.monotonic() < start + count * gap + 1.5):
        try:
            data = s.recv(2048)
            rtts.append(time.monotonic() - sent[int.from_bytes(data[:4], "big")])
        except BlockingIOError:
            time.sleep(0.0005)
print(len(rtts), statistics.median(rtts) * 1000 if rtts else -1)
"""


def _echo() -> tuple[socket.socket, int]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((NEAR, 0))
    return s, s.getsockname()[1]


def _probe(link: ShapedLink, port: int, count: int, size: int, gap: float) -> subprocess.Popen:
    return subprocess.Popen(link.far_command([sys.executable, "-c", PROBE, NEAR, str(port), str(count), str(size), str(gap)]),
                            stdout=subprocess.PIPE, text=True)


def _serve(echo: socket.socket, probe: subprocess.Popen) -> tuple[int, float]:
    echo.settimeout(0.05)
    while probe.poll() is None:
        try:
            data, addr = echo.recvfrom(2048)
            echo.sendto(data, addr)
        except socket.timeout:
            pass
    got, rtt = probe.stdout.read().split()
    return int(got), float(rtt)


def test_delay_and_loss_both_ways_then_a_clean_link():
    with ShapedLink(Shape(delay=0.04, loss=0.02)) as link:
        echo, port = _echo()
        got, rtt = _serve(echo, _probe(link, port, 1000, 100, 0.002))
        # 40 ms each way; 2% each way loses ~4% of round trips (1000 probes: 20-60 lost).
        assert 75 <= rtt <= 150, rtt
        assert 920 <= got <= 985, got
        link.clear()
        got, rtt = _serve(echo, _probe(link, port, 300, 100, 0.002))
        assert got == 300 and rtt < 20, (got, rtt)


def test_the_rate_is_a_bottleneck_with_a_buffer():
    with ShapedLink(Shape(rate=300_000, queue=0.2)) as link:
        echo, port = _echo()
        # 1000-byte datagrams offered at 800 kbit/s for 1 s: ~300 kbit/s gets through (about 37
        # a second, plus what the 0.2 s buffer holds), the rest is dropped at the bottleneck.
        got, rtt = _serve(echo, _probe(link, port, 100, 1000, 0.01))
        assert 30 <= got <= 70, got
        assert rtt >= 100, rtt  # packets waited in the full buffer
        # A trickle the rate carries goes through whole.
        got, _ = _serve(echo, _probe(link, port, 50, 200, 0.02))
        assert got == 50, got


def test_a_program_on_the_far_side_is_in_its_own_namespace():
    with ShapedLink() as link:
        out = subprocess.run(link.far_command(["ip", "-o", "-4", "addr"]), capture_output=True, text=True, check=True).stdout
        assert FAR in out and NEAR not in out, out
