"""Benchmarks 1 and 3: the routed fast path in isolation, and one media worker's capacity.

One worker process (pinned to CPU 0) forwards one synthetic SRTP stream of
1200-byte packets from a publisher socket to N subscribers over loopback; the
load process (pinned to CPU 1) sends with ``sendmmsg`` and counts what arrives
with ``recvmmsg``, reading latency off the clear RTP header and the kernel's
receive timestamp (it never decrypts). Subscriber i is the address
127.0.x.y:P, all received by one socket bound to port P of every local address,
so that the load process (one core, like the worker) is not what limits. Three forwarding paths run side by side in the same run:

- ``fastpath``: the Cython loop with libsrtp (what ``mediaserver serve`` runs);
- ``no-crypto``: the same loop with SRTP switched off, the practical limit here;
- ``reference``: the pure-Python reference forwarder on an asyncio (uvloop) socket.

Figures: forwarded packets/s, CPU-us per forwarded packet (the worker process's
user+system CPU time over the run divided by the packets it forwarded), core-us
per packet (everything CPU 0 did, softirq included: on loopback the kernel
delivers each datagram in the sender's context), p50/p99
latency through the worker (publisher send to subscriber receive, 1 us buckets),
and loss. ``--capacity`` finds the largest number of 2 Mbps video subscribers one
worker serves with < 0.5% loss and p99 < 5 ms.

    python -m loadtest.bench_fastpath                 # benchmark 1, both SRTP profiles
    python -m loadtest.bench_fastpath --capacity      # benchmark 3
    python -m loadtest.bench_fastpath --archive       # the worker's cost of archiving a track
    python -m loadtest.bench_fastpath --adaptive      # TWCC feedback and simulcast selection on, against off
    python -m loadtest.bench_fastpath --gso           # UDP GSO on, against off
    python -m loadtest.bench_fastpath --threads 1 2   # one publisher's fan-out sent by 1 and 2 threads
    python -m loadtest.bench_fastpath --uring         # receiving with io_uring against recvmmsg (a C probe)

Run it in a loopback-only namespace, as ``make bench`` does: ``unshare -n sh -c 'ip link set lo up && ...'``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import platform
import resource
import socket
import sys
import threading
import time

SERVER_CPU, CLIENT_CPU = 0, 1
PACKET = 1200
PUB_SSRC = 0x10203040
MODES = ("fastpath", "no-crypto", "reference")
DEFAULT_COUNTS = [250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2500, 3000]


def _pin(cpu: int) -> None:
    """Worker and load on separate cores (a spawned child inherits its parent's affinity)."""
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu % os.cpu_count()})


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _core_busy(cpu: int) -> float:
    """Seconds CPU ``cpu`` spent not idle (softirq included: on loopback the kernel delivers a
    datagram in the sender's context, partly outside any process's accounting)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                user, nice, system, idle, iowait, irq, softirq, steal = map(int, line.split()[1:9])
                return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    return float("nan")


def _big_buffers(sock: socket.socket) -> None:
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)


def _server(mode: str, setup: dict, conn) -> None:
    """The media worker process: forwards until told to stop; reports CPU time and counters."""
    from mediaserver._fastpath import FastPath
    from mediaserver.media.forwarder import Forwarder, Route
    from mediaserver.media.srtp import BY_NAME, SrtpKeys

    threads = setup.get("threads", 1)
    if threads == 1:
        _pin(SERVER_CPU)
    else:  # its sender threads on every core (the load process keeps its own pinning)
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    profile = BY_NAME[setup["profile"]]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _big_buffers(sock)
    sock.bind(("127.0.0.1", 0))
    fw = Forwarder() if mode == "reference" else FastPath(crypto=mode == "fastpath", gso=setup.get("gso", True), threads=threads)
    for eid, (addr, rx, tx) in setup["endpoints"].items():
        fw.add_endpoint(eid)
        fw.set_address(eid, tuple(addr))
        fw.set_keys(eid, SrtpKeys(profile, rx=rx, tx=tx))
    track = PUB_SSRC
    if setup.get("adaptive"):
        # TWCC feedback to the publisher, and its stream one layer of a three-layer VP8
        # simulcast track that every subscriber asks the top of (the layer choice, with its
        # fallback, and the picture-ID rewrite run on every packet); every packet to a
        # subscriber numbered for its own feedback (its header extensions replaced by ours).
        track = SIMULCAST_TRACK
        fw.set_twcc("pub", TWCC_ID)
        fw.set_sdes("pub", MID_ID, RID_ID, 0)
        fw.add_simulcast("pub", track, "1", ["q", "h", "f"], "VP8")
    for i, eid in enumerate(e for e in setup["endpoints"] if e != "pub"):
        fw.set_route("pub", track, eid, Route(ssrc=0x50000000 + i, payload_type=96, video=True, layer=2))
        if setup.get("adaptive"):
            fw.set_twcc_out(eid, 5)
    if mode == "reference":
        def serve() -> None:
            import uvloop

            class Protocol(asyncio.DatagramProtocol):
                def connection_made(self, transport):
                    self.transport = transport

                def datagram_received(self, data, addr):
                    for pkt, to in fw.handle_rtp(data, addr):
                        self.transport.sendto(pkt, to)

            async def main():
                await asyncio.get_running_loop().create_datagram_endpoint(Protocol, sock=sock)
                await asyncio.Event().wait()

            uvloop.run(main())

        threading.Thread(target=serve, daemon=True).start()
    else:
        sock.setblocking(False)
        fw.attach(sock.fileno())
        threading.Thread(target=fw.run, daemon=True).start()
    conn.send(sock.getsockname()[1])
    while (msg := conn.recv()) != "stop":
        conn.send((_cpu_seconds(), _core_busy(SERVER_CPU), dict(fw.stats)))
    conn.send("bye")


TWCC_ID, MID_ID, RID_ID = 3, 4, 10
SIMULCAST_TRACK = 0x0ABCDEF0
# What a Chrome simulcast layer's packets carry: a transport-wide sequence number, mid and rid
# (RFC 8285 one-byte elements), and a VP8 descriptor with a 15-bit picture ID (RFC 7741).
ADAPTIVE_EXTENSION = bytes([0xBE, 0xDE, 0, 2, (TWCC_ID << 4) | 1, 0, 0, (MID_ID << 4), ord("1"), (RID_ID << 4), ord("q"), 0])
ADAPTIVE_TWCC_AT = 5
VP8_DESCRIPTOR = bytes([0x90, 0x80, 0x81, 0x23, 0x00])  # X, S, partition 0; I, picture ID 0x123; key frame


def measure(mode: str, profile_name: str, fanout: int, out_rate: float, duration: float, packet: int = PACKET,
            adaptive: bool = False, gso: bool = True, threads: int = 1) -> dict:
    """One run: a publisher at out_rate/fanout packets/s, forwarded to ``fanout`` subscribers
    (``adaptive``: with TWCC feedback and simulcast selection, as ``_server`` says; ``gso``:
    the fast path's runs to one subscriber sent with UDP_SEGMENT)."""
    from pylibsrtp import Policy, Session

    from loadtest import _wire
    from mediaserver.media.srtp import BY_NAME

    profile = BY_NAME[profile_name]
    klen = profile.key_len + profile.salt_len
    sink_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # as root, past net.core.rmem_max: a burst to 1,000 subscribers is ~2 MB of buffers
        sink_sock.setsockopt(socket.SOL_SOCKET, 33, 32 * 1024 * 1024)  # SO_RCVBUFFORCE
    except OSError:
        sink_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024 * 1024)
    sink_sock.bind(("0.0.0.0", 0))  # run in a loopback-only namespace: every local address is 127/8
    sink_sock.setblocking(False)
    subs = [sink_sock]
    port_p = sink_sock.getsockname()[1]
    pub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _big_buffers(pub)
    pub.bind(("127.0.0.1", 0))
    endpoints = {"pub": (pub.getsockname(), os.urandom(klen), os.urandom(klen))}
    for i in range(fanout):
        addr = (f"127.0.{1 + i // 250}.{2 + i % 250}", port_p)
        endpoints[f"s{i}"] = (addr, os.urandom(klen), os.urandom(klen))
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server, args=(mode, {"profile": profile_name, "endpoints": endpoints, "adaptive": adaptive, "gso": gso, "threads": threads}, child),
                       daemon=True)
    proc.start()
    try:
        port = parent.recv()
        session = Session(Policy(key=endpoints["pub"][1], ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp_id))
        extra = {"extension": ADAPTIVE_EXTENSION, "twcc_at": ADAPTIVE_TWCC_AT, "prefix": VP8_DESCRIPTOR} if adaptive else {}
        stream = _wire.Stream(pub.fileno(), ("127.0.0.1", port), PUB_SSRC, packet, session=session, **extra)
        sink = _wire.Sink([s.fileno() for s in subs], stream)
        rate = out_rate / fanout
        _wire.run(stream, sink, rate, 0.5)  # warm up: caches, buffers, the reference's first calls
        sink.reset()
        parent.send("mark")
        cpu0, core0, stats0 = parent.recv()
        sent0 = stream.sent
        load0 = _cpu_seconds()
        _wire.run(stream, sink, rate, duration)
        load1 = _cpu_seconds()
        parent.send("mark")
        cpu1, core1, stats1 = parent.recv()
        sent = stream.sent - sent0
        forwarded = stats1.get("rtp_out", 0) - stats0.get("rtp_out", 0)
        expected = sent * fanout
        return {
            "mode": mode, "profile": profile_name, "fanout": fanout, "offered_out": out_rate,
            "forwarded_per_s": forwarded / duration,
            "cpu_us_per_packet": (cpu1 - cpu0) / forwarded * 1e6 if forwarded else float("nan"),
            "cpu_share": (cpu1 - cpu0) / duration,
            "load_cpu_share": (load1 - load0) / duration,  # the load process's (sending and receiving)
            "core_busy": (core1 - core0) / duration,
            "core_us_per_packet": (core1 - core0) / forwarded * 1e6 if forwarded else float("nan"),
            "drops": {k: v - stats0.get(k, 0) for k, v in stats1.items() if k.startswith("drop_") and v > stats0.get(k, 0)},
            "p50_us": sink.percentile(50), "p99_us": sink.percentile(99),
            "loss": 1 - sink.received / expected if expected else float("nan"),
            "twcc_per_s": (stats1.get("twcc_sent", 0) - stats0.get("twcc_sent", 0)) / duration,
            "gso_share": (stats1.get("tx_gso", 0) - stats0.get("tx_gso", 0)) / forwarded if forwarded else 0.0,
            "rx_batch": ((stats1.get("rx_packets", 0) - stats0.get("rx_packets", 0))
                         / max(1, stats1.get("rx_batches", 0) - stats0.get("rx_batches", 0))),
        }
    finally:
        parent.send("stop")
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
        for s in subs + [pub]:
            s.close()


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


def machine() -> str:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python {platform.python_version()}"


def table(rows: list[dict]) -> str:
    head = (f"{'profile':<24} {'fan-out':>7} {'path':<10} {'fwd pkt/s':>10} {'CPU-us/pkt':>10} {'CPU':>5} "
            f"{'core-us/pkt':>11} {'core':>5} {'p50 us':>7} {'p99 us':>7} {'loss':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['profile']:<24} {r['fanout']:>7} {r['mode']:<10} {r['forwarded_per_s']:>10,.0f} "
            f"{r['cpu_us_per_packet']:>10.2f} {r['cpu_share']:>5.0%} {r['core_us_per_packet']:>11.2f} {r['core_busy']:>5.0%} "
            f"{r['p50_us']:>7.0f} {r['p99_us']:>7.0f} {r['loss']:>7.2%}"
        )
    return "\n".join(lines)


def ratios(rows: list[dict]) -> str:
    lines = ["", "CPU per forwarded packet, fast path relative to the others (same run):"]
    by = {(r["profile"], r["fanout"], r["mode"]): r for r in rows}
    for (profile, fanout, mode), r in by.items():
        if mode != "fastpath":
            continue
        nc, ref = by.get((profile, fanout, "no-crypto")), by.get((profile, fanout, "reference"))
        parts = []
        if nc:
            parts.append(f"{r['cpu_us_per_packet'] / nc['cpu_us_per_packet']:.2f}x the no-crypto loop")
        if ref:
            parts.append(f"1/{ref['cpu_us_per_packet'] / r['cpu_us_per_packet']:.1f} of the reference")
        lines.append(f"  {profile:<24} fan-out {fanout:>3}: " + ", ".join(parts))
    return "\n".join(lines)


PER_SUB = 2_000_000 / 8 / PACKET  # a 2 Mbps video subscriber's packets/s


def capacity(profile: str, duration: float, counts: list[int], threads: int = 1) -> tuple[int, list[dict]]:
    """Largest subscriber count at 2 Mbps each (1200-byte packets: ~208 packets/s) with < 0.5% loss, p99 < 5 ms."""
    per_sub = PER_SUB
    best, rows = 0, []
    for n in counts:
        _raise_fd_limit(n + 64)
        r = measure("fastpath", profile, n, per_sub * n, duration, threads=threads)
        r["subscribers"] = n
        rows.append(r)
        ok = r["loss"] < 0.005 and r["p99_us"] < 5000
        print(f"  {n:>5} subscribers: {r['forwarded_per_s']:>9,.0f} pkt/s, CPU {r['cpu_share']:.0%} (core {r['core_busy']:.0%}), "
              f"p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us, loss {r['loss']:.2%} {r['drops'] or ''} -> {'ok' if ok else 'over'}", flush=True)
        if not ok:
            break
        best = n
    return best, rows


def half_capacity_floor(profile: str, n: int, duration: float, rounds: int = 2) -> str:
    """p99 at half capacity beside the floor: the loop without crypto at the same load, runs
    interleaved. With one publisher, a packet's last copy waits for all the copies before it, so
    its p99 is the fan-out's own length; the loop without crypto shows what the kernel alone takes
    for it on this machine."""
    lines = [f"half capacity ({n} subscribers), p99 beside the loop without crypto ({rounds} interleaved rounds):"]
    for _ in range(rounds):
        for mode in ("fastpath", "no-crypto"):
            r = measure(mode, profile, n, PER_SUB * n, duration)
            lines.append(f"  {mode:<10} {r['forwarded_per_s']:>9,.0f} pkt/s, {r['cpu_us_per_packet']:.2f} us/pkt, "
                         f"p50 {r['p50_us']:.0f} us, p99 {r['p99_us']:.0f} us, loss {r['loss']:.2%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=3.0, help="seconds measured per run (default 3)")
    ap.add_argument("--rate", type=float, default=100_000, help="forwarded packets/s offered per run (default 100000)")
    ap.add_argument("--fanout", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--profiles", nargs="+", default=["SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"])
    ap.add_argument("--capacity", action="store_true", help="benchmark 3: subscribers per worker at 2 Mbps")
    ap.add_argument("--counts", type=int, nargs="+", default=DEFAULT_COUNTS)
    ap.add_argument("--e2ee", action="store_true",
                    help="end-to-end encrypted frames: 30 bytes more per packet (tag and trailer), against plain")
    ap.add_argument("--archive", action="store_true",
                    help="one track archived among its subscribers (one more SRTP output, to the recorder), against none")
    ap.add_argument("--adaptive", action="store_true",
                    help="TWCC feedback to the publisher and simulcast layer selection on, against a plain stream")
    ap.add_argument("--threads", type=int, nargs="+",
                    help="sender threads: with --capacity, the capacity with each count; alone, 2 Mbps subscribers "
                         "(--counts, default 500 750 1000) served with each count, side by side")
    ap.add_argument("--uring", action="store_true",
                    help="receiving with io_uring (multishot recvmsg) against recvmmsg, in a C probe (needs cc, liburing-dev)")
    ap.add_argument("--gso", action="store_true",
                    help="UDP GSO (runs of datagrams to one subscriber in one send) on, against off")
    args = ap.parse_args(argv)
    _pin(CLIENT_CPU)
    print(f"machine: {machine()}")
    if args.e2ee:
        return e2ee_rows(args)
    if args.archive:
        return archive_rows(args)
    if args.adaptive:
        return adaptive_rows(args)
    if args.gso:
        return gso_rows(args)
    if args.uring:
        return uring_rows(args)
    if args.capacity:
        for threads in args.threads or [1]:
            print(f"benchmark 3: 2 Mbps video subscribers on one worker (fast path, {args.profiles[0]}, "
                  f"{threads} sender thread{'s' if threads > 1 else ''}), {args.duration:g} s per step")
            best, _ = capacity(args.profiles[0], args.duration, args.counts, threads)
            print(f"capacity: {best} subscribers at 2 Mbps with < 0.5% loss and p99 < 5 ms")
            if best and threads == 1:
                print(half_capacity_floor(args.profiles[0], best // 2, args.duration))
        return 0
    if args.threads:
        return threads_rows(args)
    print(f"benchmark 1: one stream of {PACKET}-byte packets, {args.rate:,.0f} forwarded packets/s offered, {args.duration:g} s per run")
    rows = []
    for profile in args.profiles:
        for fanout in args.fanout:
            _raise_fd_limit(fanout + 64)
            for mode in args.modes:
                rows.append(measure(mode, profile, fanout, args.rate, args.duration))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    print(ratios(rows))
    return 0


E2EE_OVERHEAD = 30  # per encrypted frame: the 16-byte AES-GCM tag and the 14-byte trailer (e2ee.js)


def e2ee_rows(args) -> int:
    """The server's cost of end-to-end encrypted media: the same path, packets a little longer
    (here every packet carries a whole frame's overhead: the worst case), side by side."""
    profile = args.profiles[0]
    print(f"end-to-end encrypted frames against plain ones, fast path, {profile}, {args.rate:,.0f} pkt/s offered")
    print(f"{'fan-out':>7} {'plain CPU-us/pkt':>17} {'e2ee CPU-us/pkt':>16} {'ratio':>6}")
    for fanout in args.fanout:
        _raise_fd_limit(fanout + 64)
        plain = measure("fastpath", profile, fanout, args.rate, args.duration, PACKET)
        sealed = measure("fastpath", profile, fanout, args.rate, args.duration, PACKET + E2EE_OVERHEAD)
        print(f"{fanout:>7} {plain['cpu_us_per_packet']:>17.2f} {sealed['cpu_us_per_packet']:>16.2f} "
              f"{sealed['cpu_us_per_packet'] / plain['cpu_us_per_packet']:>6.2f}", flush=True)
    return 0


def archive_rows(args, runs: int = 3) -> int:
    """The media worker's cost of archiving a track: the recorder gets one more copy over an SRTP
    leg (``MediaSession._record_track``: a relay endpoint on the worker, forwarded like any other
    output, the recorder in a process of its own). Side by side, the same publisher rate to N
    subscribers alone and with the archive's leg: CPU per packet delivered to subscribers."""
    profile = args.profiles[0]
    print(f"one archived track among its subscribers, fast path, {profile}, {args.rate:,.0f} pkt/s to subscribers, "
          f"best of {runs} runs each")
    print(f"{'subscribers':>11} {'CPU-us/pkt':>11} {'archived: CPU-us/subscriber pkt':>32} {'ratio':>6}")
    for fanout in args.fanout:
        _raise_fd_limit(fanout + 64)
        plain, archived = [], []
        for _ in range(runs):  # interleaved, the best of each: the machine is shared
            plain.append(measure("fastpath", profile, fanout, args.rate, args.duration)["cpu_us_per_packet"])
            leg = measure("fastpath", profile, fanout + 1, args.rate * (fanout + 1) / fanout, args.duration)
            archived.append(leg["cpu_us_per_packet"] * (fanout + 1) / fanout)  # (its CPU over the subscribers' packets)
        print(f"{fanout:>11} {min(plain):>11.2f} {min(archived):>32.2f} {min(archived) / min(plain):>6.2f}", flush=True)
    return 0


def adaptive_rows(args, runs: int = 3) -> int:
    """What adaptive media costs per forwarded packet: the publisher's packets carry the header
    extensions and VP8 descriptor Chrome's simulcast layers do; the worker records each one's
    transport-wide number (and sends feedback every 50 ms), finds the layer each subscriber gets,
    rewrites picture IDs and numbers what goes to each subscriber with its own transport-wide
    sequence (its extensions replaced); side by side with today's plain single stream."""
    profile = args.profiles[0]
    print(f"TWCC feedback, subscriber numbering and simulcast selection on, against a plain stream, fast path, {profile}, "
          f"{args.rate:,.0f} pkt/s offered, best of {runs} runs each")
    print(f"{'fan-out':>7} {'plain CPU-us/pkt':>17} {'adaptive CPU-us/pkt':>20} {'ratio':>6} {'loss':>6} {'TWCC msgs/s':>12}")
    for fanout in args.fanout:
        _raise_fd_limit(fanout + 64)
        plain, adaptive, loss, twcc = [], [], [], []
        for _ in range(runs):  # interleaved, the best of each: the machine is shared
            plain.append(measure("fastpath", profile, fanout, args.rate, args.duration)["cpu_us_per_packet"])
            row = measure("fastpath", profile, fanout, args.rate, args.duration, adaptive=True)
            adaptive.append(row["cpu_us_per_packet"])
            loss.append(row["loss"])
            twcc.append(row["twcc_per_s"])
        print(f"{fanout:>7} {min(plain):>17.2f} {min(adaptive):>20.2f} {min(adaptive) / min(plain):>6.2f} "
              f"{min(loss):>6.1%} {min(twcc):>12.0f}", flush=True)
    return 0


def gso_rows(args, runs: int = 3) -> int:
    """What UDP generic segmentation offload saves: the fast path forwards a received batch
    stream by stream, subscriber by subscriber, so one subscriber's packets of a burst sit next
    to each other and leave in one ``UDP_SEGMENT`` send (one trip through the stack, cut into
    datagrams at the end). Side by side, the same loop with it off; best of ``runs`` interleaved."""
    profile = args.profiles[0]
    print(f"UDP GSO on against off, fast path, {profile}, {args.rate:,.0f} pkt/s offered, best of {runs} runs each")
    print(f"{'fan-out':>7} {'off CPU-us/pkt':>15} {'on CPU-us/pkt':>14} {'ratio':>6} {'off p50/p99 us':>15} "
          f"{'on p50/p99 us':>14} {'in GSO':>7} {'pkts/batch':>10} {'loss off/on':>12}")
    for fanout in args.fanout:
        _raise_fd_limit(fanout + 64)
        off, on = [], []
        for _ in range(runs):  # interleaved: the machine is shared
            off.append(measure("fastpath", profile, fanout, args.rate, args.duration, gso=False))
            on.append(measure("fastpath", profile, fanout, args.rate, args.duration, gso=True))
        a = min(off, key=lambda r: r["cpu_us_per_packet"])
        b = min(on, key=lambda r: r["cpu_us_per_packet"])
        p99 = lambda rows: sorted(r["p99_us"] for r in rows)[len(rows) // 2]  # noqa: E731 (the median run's)
        p50 = lambda rows: sorted(r["p50_us"] for r in rows)[len(rows) // 2]  # noqa: E731
        print(f"{fanout:>7} {a['cpu_us_per_packet']:>15.2f} {b['cpu_us_per_packet']:>14.2f} "
              f"{b['cpu_us_per_packet'] / a['cpu_us_per_packet']:>6.2f} {p50(off):>7.0f}/{p99(off):<7.0f} "
              f"{p50(on):>6.0f}/{p99(on):<7.0f} {b['gso_share']:>7.0%} {b['rx_batch']:>10.1f} "
              f"{max(r['loss'] for r in off):>5.2%}/{max(r['loss'] for r in on):.2%}", flush=True)
    return 0


def threads_rows(args, runs: int = 3) -> int:
    """One publisher's fan-out sent by one thread and by more (``FastPath(threads=N)``: each
    subscriber owned by one thread, which protects and sends its packets while the loop routes
    the next), at the same loads, interleaved ``runs`` times: the median run's latency through
    the worker (the last copy of a packet waits for the ones before it on its thread) and the
    worker's CPU. With more than one thread the worker may use every core, the load process's
    included (this machine has two)."""
    profile = args.profiles[0]
    counts = args.counts if args.counts != DEFAULT_COUNTS else [500, 750, 1000]
    print(f"one publisher's fan-out by sender threads {args.threads}, 2 Mbps subscribers, fast path, {profile}, "
          f"{args.duration:g} s per run, median of {runs} interleaved runs")
    print(f"{'subscribers':>11} {'threads':>7} {'fwd pkt/s':>10} {'CPU':>5} {'CPU-us/pkt':>10} {'p50 us':>7} {'p99 us':>7} {'loss':>7} "
          f"{'load CPU':>8}")
    for n in counts:
        _raise_fd_limit(n + 64)
        rows: dict[int, list[dict]] = {t: [] for t in args.threads}
        for _ in range(runs):
            for t in args.threads:
                rows[t].append(measure("fastpath", profile, n, PER_SUB * n, args.duration, threads=t))
        for t in args.threads:
            mid = sorted(rows[t], key=lambda r: r["p99_us"])[runs // 2]
            print(f"{n:>11} {t:>7} {mid['forwarded_per_s']:>10,.0f} {mid['cpu_share']:>5.0%} {mid['cpu_us_per_packet']:>10.2f} "
                  f"{mid['p50_us']:>7.0f} {mid['p99_us']:>7.0f} {max(r['loss'] for r in rows[t]):>7.2%} "
                  f"{mid['load_cpu_share']:>8.0%}", flush=True)
    return 0


def uring_rows(args, runs: int = 3, rates: tuple[int, ...] = (5_000, 20_000, 100_000)) -> int:
    """Whether io_uring would receive cheaper than the fast path's poll + recvmmsg: the probe
    ``loadtest/uring_probe.c`` receives the same paced stream both ways (see its header), best
    of ``runs`` interleaved runs, CPU-us per received packet of the receiving process."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    src = Path(__file__).with_name("uring_probe.c")
    exe = Path(tempfile.mkdtemp(prefix="uring-probe-")) / "uring_probe"
    if not shutil.which("cc") or not Path("/usr/include/liburing.h").exists():
        print("io_uring probe: not run (needs cc and liburing-dev)")
        return 0
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src), "-luring"], check=True)
    print(f"receiving 1200-byte datagrams: poll + recvmmsg (the fast path's) against io_uring multishot recvmsg, "
          f"{args.duration:g} s per run, best of {runs} interleaved, CPU-us per packet received")
    print(f"{'pkt/s':>8} {'recvmmsg':>9} {'io_uring':>9} {'ratio':>6}")
    for rate in rates:
        best: dict[str, float] = {}
        for _ in range(runs):
            for mode in ("recvmmsg", "uring"):
                out = subprocess.run([str(exe), mode, str(rate), str(args.duration)], check=True, capture_output=True, text=True)
                _, got, us, loss = out.stdout.split()
                best[mode] = min(best.get(mode, float("inf")), float(us))
        print(f"{rate:>8,} {best['recvmmsg']:>9.2f} {best['uring']:>9.2f} {best['uring'] / best['recvmmsg']:>6.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
