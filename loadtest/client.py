"""A WebRTC load client: real signaling, ICE, DTLS and SRTP, then synthetic media without codecs.

Each simulated participant joins over the server's WebSocket, negotiates real peer
connections (aiortc does the ICE and DTLS handshakes), and then:

- as a publisher, sends pre-built RTP at a configured bitrate and frame rate from C
  (``loadtest._wire``: paced ``sendmmsg`` on the ICE socket, SRTP through libsrtp),
  never encoding; every packet carries its send time in the first 8 payload bytes;
- as a subscriber, counts what arrives (after SRTP, as the browser would) without
  depacketizing or decoding, and measures latency from the embedded send time. While
  ``measure`` measures, C does that (``loadtest._wire.Receiver``: it takes over each
  subscriber's socket, decrypts with the connection's own SRTP session and times each packet
  by the kernel's receive stamp), so the client's Python is neither the bottleneck nor in the
  figures; outside it, aiortc receives and the counting hook below counts.

It reports delivered packets/s, loss, jitter and end-to-end latency. The signaling is
an adapter (``MediaserverSignaling``) so the same load can run against another SFU.

    python -m loadtest.client --url http://127.0.0.1:7880 --key KEY:SECRET \\
        --publishers 1 --subscribers 10 --duration 20 --bitrate 2000000
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpreceiver import RTCRtpReceiver

PACKET = 1200
# One thread per stream while it sends (the GIL is released inside): enough for many publishers.
_SENDERS = concurrent.futures.ThreadPoolExecutor(max_workers=128, thread_name_prefix="load-send")


class Silent(MediaStreamTrack):
    """A track that never yields a frame: aiortc negotiates it, our C engine sends its RTP."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    async def recv(self):  # pragma: no cover - never returns
        await asyncio.Event().wait()


@dataclass
class Received:
    packets: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, sampled
    jitter: float = 0.0  # RFC 3550 6.4.1 interarrival jitter, seconds
    _last_transit: float | None = None

    def add(self, payload: bytes, size: int) -> None:
        self.packets += 1
        self.bytes += size
        if len(payload) >= 8:
            sent = int.from_bytes(payload[:8], "big") / 1e9
            transit = time.time() - sent
            if 0 <= transit < 60:
                if self._last_transit is not None:
                    self.jitter += (abs(transit - self._last_transit) - self.jitter) / 16
                self._last_transit = transit
                if self.packets % 4 == 0 or len(self.latencies) < 1000:
                    self.latencies.append(transit)


_original_handle = RTCRtpReceiver._handle_rtp_packet


async def _count_only(self: RTCRtpReceiver, packet, arrival_time_ms: int) -> None:
    stats = getattr(self, "_load_stats", None)
    if stats is None:
        return await _original_handle(self, packet, arrival_time_ms)
    stats.add(packet.payload, len(packet.payload) + 12)  # counted, never depacketized or decoded


RTCRtpReceiver._handle_rtp_packet = _count_only


class MediaserverSignaling:
    """Our server's WebSocket protocol: join, publish offer/answer, subscribe offers."""

    def __init__(self, ws_url: str, token: str, room_id: str):
        self.ws_url, self.token, self.room_id = ws_url, token, room_id
        self.ws: Any = None
        self.joined: dict = {}
        self._replies: dict[str, asyncio.Future] = {}
        self._n = 0
        self.on_offer = None  # async callback(sdp) -> answer sdp
        self._reader: asyncio.Task | None = None

    async def join(self) -> dict:
        t0 = time.perf_counter()
        self.ws = await websockets.connect(self.ws_url, max_queue=None)
        await self.ws.send(json.dumps({"type": "join", "token": self.token, "room_id": self.room_id}))
        msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
        if msg["type"] != "joined":
            raise RuntimeError(f"join refused: {msg.get('code')}: {msg.get('message')}")
        self.joined = msg
        self.join_seconds = time.perf_counter() - t0
        self._reader = asyncio.ensure_future(self._read())
        return msg

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("id") in self._replies:
                    self._replies.pop(msg["id"]).set_result(msg)
                elif msg["type"] == "offer" and self.on_offer:
                    answer = await self.on_offer(msg["sdp"])
                    await self.ws.send(json.dumps({"type": "answer", "pc": "subscribe", "sdp": answer}))
                elif msg["type"] == "ping":
                    await self.ws.send(json.dumps({"type": "pong"}))
        except websockets.ConnectionClosed:
            return

    async def command(self, msg: dict, timeout: float = 30) -> dict:
        self._n += 1
        mid = f"l{self._n}"
        fut = asyncio.get_running_loop().create_future()
        self._replies[mid] = fut
        await self.ws.send(json.dumps({**msg, "id": mid}))
        return await asyncio.wait_for(fut, timeout)

    async def publish(self, offer: str) -> str:
        reply = await self.command({"type": "offer", "pc": "publish", "sdp": offer})
        if reply["type"] != "answer":
            raise RuntimeError(f"publish refused: {reply.get('code')}: {reply.get('message')}")
        return reply["sdp"]

    async def close(self) -> None:
        if self.ws is not None:
            try:
                await self.command({"type": "leave"}, timeout=5)
            except Exception:
                pass
            await self.ws.close()
        if self._reader:
            self._reader.cancel()


def allow_loopback_candidates() -> None:
    """aioice leaves loopback addresses out of its host candidates; a server on 127.0.0.1
    (a load test on one machine) can only be reached from one."""
    import aioice.ice

    original = aioice.ice.get_host_addresses
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: (["127.0.0.1"] if use_ipv4 else []) + [
        a for a in original(use_ipv4, use_ipv6) if a != "127.0.0.1"
    ]


def _pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def _connected(pc: RTCPeerConnection, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
            raise RuntimeError(f"peer connection {pc.connectionState}")
        await asyncio.sleep(0.05)


def _ice_path(dtls: Any) -> tuple[Any, tuple]:
    """A connected DTLS transport's nominated ICE pair: the asyncio transport of its socket,
    and the remote address media goes to."""
    pair = next(iter(dtls.transport._connection._nominated.values()))
    return pair.protocol.transport, pair.remote_addr


def _payload_type(sdp: str, kind: str) -> int:
    m = re.search(rf"^m={kind} \d+ \S+ (\d+)", sdp, re.M)
    if not m:
        raise RuntimeError(f"no {kind} section in the answer")
    return int(m.group(1))


class LoadParticipant:
    def __init__(self, signaling: MediaserverSignaling):
        self.sig = signaling
        self.received = Received()
        self.sub_pc = _pc()
        self.pub_pc: RTCPeerConnection | None = None
        self.streams: list[Any] = []

    async def join(self, subscribe: bool = True) -> None:
        if subscribe:
            self.sig.on_offer = self._answer
        await self.sig.join()

    def receiving_socket(self) -> tuple[int, Any, Any]:
        """Once the subscribe connection is up: its socket's fd, the SRTP session that decrypts
        what it receives, and the asyncio transport reading it (to pause while C reads)."""
        dtls = self.sub_pc.getTransceivers()[0].receiver.transport  # (one, bundled)
        transport, _ = _ice_path(dtls)
        return transport.get_extra_info("socket").fileno(), dtls._rx_srtp, transport

    async def _answer(self, offer: str) -> str:
        await self.sub_pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        for t in self.sub_pc.getTransceivers():
            t.receiver._load_stats = self.received
        await self.sub_pc.setLocalDescription(await self.sub_pc.createAnswer())
        return self.sub_pc.localDescription.sdp

    async def publish(self, *, bitrate: float, audio: bool = True, fps: float = 30.0) -> None:
        """Negotiate a video (and audio) publication, then prepare the C streams that send it."""
        from loadtest import _wire

        self.pub_pc = pc = _pc()
        video = pc.addTrack(Silent("video"))
        voice = pc.addTrack(Silent("audio")) if audio else None
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self.sig.publish(pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await _connected(pc)
        dtls = video.transport
        transport, remote = _ice_path(dtls)
        fd = transport.get_extra_info("socket").fileno()
        per_frame = max(1, round(bitrate / 8 / PACKET / fps))
        self.streams.append((
            _wire.Stream(fd, remote, video._ssrc, PACKET, _payload_type(answer, "video"), session=_own_tx_session(dtls),
                         fps=fps, frame_packets=per_frame, stamp=True),
            bitrate / 8 / PACKET,
        ))
        if voice is not None:  # Opus-sized packets, 50 per second
            self.streams.append((
                _wire.Stream(fd, remote, voice._ssrc, 120, _payload_type(answer, "audio"), session=_own_tx_session(dtls),
                             clock_rate=48000, fps=50, stamp=True),
                50.0,
            ))

    async def send(self, duration: float) -> int:
        """Send every prepared stream for ``duration`` seconds (each in a thread, GIL released)."""
        from loadtest import _wire

        loop = asyncio.get_running_loop()
        sent = await asyncio.gather(*(loop.run_in_executor(_SENDERS, _wire.send_paced, s, rate, duration) for s, rate in self.streams))
        return sum(sent)

    async def close(self) -> None:
        await self.sig.close()
        for pc in (self.pub_pc, self.sub_pc):
            if pc is not None:
                await pc.close()


def _own_tx_session(dtls: Any) -> Any:
    """A libsrtp session of its own for one C sender, keyed as the connection's outbound one
    (derived again from the DTLS handshake, RFC 5764 §4.2, as aiortc derives it). A libsrtp
    session is not safe to use from two threads at once: each stream sends from a thread of
    its own, and aiortc protects its RTCP with the connection's session on the event loop.
    Sharing one crashed the test process, once, inside libsrtp."""
    from pylibsrtp import Policy, Session

    chosen = dtls._ssl.get_selected_srtp_profile()
    profile = next(p for p in dtls._srtp_profiles if p.openssl_profile == chosen)
    material = dtls._ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (profile.key_length + profile.salt_length))
    key = profile.get_key_and_salt(material, 1 if dtls._role == "server" else 0)
    policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp_profile)
    policy.allow_repeat_tx = True
    policy.window_size = 1024
    return Session(policy)


async def mint(http: httpx.AsyncClient, room_id: str, identity: str, role: str) -> str:
    r = await http.post(f"/v1/rooms/{room_id}/tokens", json={"identity": identity, "role": role})
    r.raise_for_status()
    return r.json()["token"]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


async def measure(
    pubs: list[LoadParticipant], make_subs, *, duration: float, bitrate: float, audio: bool = True,
    cpu=None,
) -> dict:
    """Publishers join and publish, then the subscribers ``make_subs()`` returns join; everyone
    sends and receives for ``duration`` seconds. ``cpu()`` (optional) reads the server's CPU
    seconds, to report its cost over the same window."""
    subs: list[LoadParticipant] = []
    try:
        for p in pubs:
            await p.join(subscribe=False)
            await p.publish(bitrate=bitrate, audio=audio)
        subs = list(await make_subs())
        await asyncio.gather(*(s.join() for s in subs))
        # Wait until every subscriber's connection is up (offers answered, DTLS done).
        deadline = time.monotonic() + 60
        while not all(s.sub_pc.connectionState == "connected" for s in subs):
            if time.monotonic() > deadline:
                raise RuntimeError("subscribers did not connect in 60 s")
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        # C receives from here (see the module's docstring): aiortc stops reading the sockets
        # meanwhile, and takes them back after.
        from loadtest import _wire

        taken = [s.receiving_socket() for s in subs]
        receiver = _wire.Receiver([(fd, session) for fd, session, _ in taken])
        for _, _, transport in taken:
            transport.pause_reading()
        loop = asyncio.get_running_loop()
        try:
            receiving = loop.run_in_executor(None, receiver.run, duration + 0.5)  # (+ the last packets in flight)
            cpu0 = cpu() if cpu else None
            t0 = time.monotonic()
            sent = sum(await asyncio.gather(*(p.send(duration) for p in pubs)))
            await receiving
            elapsed = time.monotonic() - t0
            cpu_used = cpu() - cpu0 if cpu else None
        finally:
            for _, _, transport in taken:
                transport.resume_reading()
        got = receiver.received
        expected = sent * len(subs)
        return {
            "publishers": len(pubs), "subscribers": len(subs), "duration": duration,
            "packets_sent": sent, "packets_delivered": got,
            "delivered_per_s": got / elapsed,
            "loss": (1 - got / expected) if expected else 0.0,
            "latency_p50_ms": receiver.percentile(50) / 1000, "latency_p99_ms": receiver.percentile(99) / 1000,
            "jitter_ms": receiver.jitter_ms,
            "not_decrypted": receiver.refused,
            "join_p50_ms": _pct([p.sig.join_seconds for p in pubs + subs], 50) * 1000,
            "server_cpu_seconds": cpu_used,
            "elapsed": elapsed,
        }
    finally:
        for p in pubs + subs:
            await p.close()


async def run_load(
    url: str, key: tuple[str, str], *, room_id: str | None, publishers: int, subscribers: int,
    duration: float, bitrate: float, audio: bool = True, cpu=None,
) -> dict:
    """One room of mediaserver: ``publishers`` sending and ``subscribers`` receiving."""
    ws_url = url.replace("http", "ws", 1) + "/v1/ws"
    from urllib.parse import urlparse

    if (urlparse(url).hostname or "").startswith(("127.", "localhost")):
        allow_loopback_candidates()
    async with httpx.AsyncClient(base_url=url, auth=key, timeout=30) as http:
        if room_id is None:
            r = await http.post("/v1/rooms", json={"name": "load test", "media_mode": "routed"})
            r.raise_for_status()
            room_id = r.json()["id"]
        pubs = [LoadParticipant(MediaserverSignaling(ws_url, await mint(http, room_id, f"load-pub-{i}", "moderator" if i < 4 else "publisher"), room_id)) for i in range(publishers)]
        sub_tokens = [await mint(http, room_id, f"load-sub-{i}", "subscriber") for i in range(subscribers)]

    async def make_subs():
        return [LoadParticipant(MediaserverSignaling(ws_url, t, room_id)) for t in sub_tokens]

    result = await measure(pubs, make_subs, duration=duration, bitrate=bitrate, audio=audio, cpu=cpu)
    return {"room_id": room_id, **result}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the server's base URL, e.g. http://127.0.0.1:7880")
    ap.add_argument("--key", required=True, help="API key as ID:SECRET")
    ap.add_argument("--room", help="an existing room (default: a new one)")
    ap.add_argument("--publishers", type=int, default=1)
    ap.add_argument("--subscribers", type=int, default=5)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--bitrate", type=float, default=2_000_000, help="video bit/s per publisher")
    ap.add_argument("--no-audio", action="store_true")
    args = ap.parse_args(argv)
    kid, _, secret = args.key.partition(":")
    result = asyncio.run(run_load(
        args.url, (kid, secret), room_id=args.room, publishers=args.publishers, subscribers=args.subscribers,
        duration=args.duration, bitrate=args.bitrate, audio=not args.no_audio,
    ))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
