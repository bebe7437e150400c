"""Real WebRTC participants with aiortc, for tests and benchmarks: a publisher with a changing
synthetic picture, subscribers that decode, and a participant speaking the server's WebSocket."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.mediastreams import AudioStreamTrack

VIDEO_SIZE = (160, 120)


def loopback_only_ice() -> None:
    """aioice leaves 127.0.0.1 out of host candidates; in our loopback-only test namespace it is the only one."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []


class ChangingVideo(VideoStreamTrack):
    """Frames whose brightness steps every frame, so a receiver can tell the picture changes."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        w, h = VIDEO_SIZE
        frame = av.VideoFrame(w, h, "yuv420p")
        luma = 16 + (self.n * 7) % 200
        for plane, value in zip(frame.planes, (luma, 128, 128)):
            plane.update(bytes([value]) * plane.buffer_size)
        frame.pts, frame.time_base = pts, time_base
        self.n += 1
        return frame


COUNTER_BITS = 16
COUNTER_SIZE = (320, 240)  # 4 x 4 blocks of 80 x 60: bright = 1, dark = 0 (survive any codec)


class CounterVideo(VideoStreamTrack):
    """Frames that carry their own number (``COUNTER_BITS`` bits as bright and dark blocks), so
    whoever decodes them (a subscriber, an archive read back) can tell which frames it got."""

    def __init__(self, count: list[int] | None = None) -> None:
        super().__init__()
        self._count = count if count is not None else [0]  # (shared with its successors)

    @property
    def sent(self) -> int:
        return self._count[0]

    def fresh(self) -> "CounterVideo":
        """A new track that counts on from this one (a closed peer connection ends its tracks)."""
        return CounterVideo(self._count)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = counter_frame(self._count[0])
        frame.pts, frame.time_base = pts, time_base
        self._count[0] += 1
        return frame


def counter_frame(n: int) -> av.VideoFrame:
    w, h = COUNTER_SIZE
    bw, bh = w // 4, h // 4
    rows = []
    for by in range(4):
        line = b"".join(bytes([235 if n >> (by * 4 + bx) & 1 else 16]) * bw for bx in range(4))
        rows.append(line * bh)
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, data in zip(frame.planes, (b"".join(rows), None, None)):
        plane.update(data if data is not None else bytes([128]) * plane.buffer_size)
    return frame


def read_counter(frame: av.VideoFrame, box: tuple[int, int, int, int] | None = None) -> int:
    """The number a ``CounterVideo`` frame carries (sampled at each block's centre); ``box``
    (x, y, width, height): where in ``frame`` the picture is (e.g. a cell of a composed grid)."""
    if box is None:
        frame, box = frame.reformat(width=COUNTER_SIZE[0], height=COUNTER_SIZE[1], format="gray"), (0, 0, *COUNTER_SIZE)
    else:
        frame = frame.reformat(format="gray")
    plane = frame.planes[0]
    data, stride = bytes(plane), plane.line_size
    x0, y0, w, h = box
    bw, bh = w / 4, h / 4
    n = 0
    for bit in range(COUNTER_BITS):
        by, bx = divmod(bit, 4)
        if data[int(y0 + by * bh + bh / 2) * stride + int(x0 + bx * bw + bw / 2)] > 128:
            n |= 1 << bit
    return n


class Tone(AudioStreamTrack):
    """A steady sine tone (``hz``), in the frames aiortc's silence track would send; silence
    while ``on`` is false (someone who stopped talking)."""

    def __init__(self, hz: float = 440.0) -> None:
        super().__init__()
        self.hz = hz
        self.samples = 0
        self.on = True

    def fresh(self) -> "Tone":
        t = Tone(self.hz)
        t.samples, t.on = self.samples, self.on
        return t

    async def recv(self) -> av.AudioFrame:
        import math
        import struct

        frame = await super().recv()  # (its timing and format: 20 ms of s16)
        n, rate, channels = frame.samples, frame.sample_rate, len(frame.layout.channels)
        loud = 8000 if self.on else 0
        values = [int(loud * math.sin(2 * math.pi * self.hz * (self.samples + i) / rate)) for i in range(n)]
        frame.planes[0].update(struct.pack(f"<{channels * n}h", *(v for v in values for _ in range(channels))))
        self.samples += n
        return frame


def tone_strength(samples: list[float], hz: float, rate: int = 48000) -> float:
    """How much of ``samples`` is at ``hz``, relative to their power (Goertzel): near 1 for a pure tone."""
    import math

    if not samples:
        return 0.0
    k = 2 * math.cos(2 * math.pi * hz / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + k * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - k * s1 * s2
    energy = sum(x * x for x in samples)
    return 2 * power / (len(samples) * energy) if energy else 0.0


def new_pc(ice_servers: list[dict] | None = None, relay: bool = False) -> RTCPeerConnection:
    """A peer connection with these RTCIceServer dicts (none: no STUN, not aiortc's public default);
    ``relay``: TURN candidates only."""
    from aiortc import RTCIceServer, RTCIceTransportPolicy

    servers = [RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
               for s in ice_servers or []]
    policy = RTCIceTransportPolicy.RELAY if relay else RTCIceTransportPolicy.ALL
    return RTCPeerConnection(RTCConfiguration(iceServers=servers, iceTransportPolicy=policy))


@dataclass
class Received:
    video_frames: int = 0
    audio_frames: int = 0
    lumas: list[int] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)
    # Video frames by publisher: the server names each track "<participant id>/<mid>" in its msid.
    video_from: dict[str, int] = field(default_factory=dict)
    first_frames_at: list[float] = field(default_factory=list)  # monotonic times of the first few video frames
    last_frame_at: float = 0.0  # monotonic time of the latest video frame


def collect(pc: RTCPeerConnection) -> Received:
    """Decode everything that arrives on ``pc`` and count it."""
    got = Received()

    async def consume(track) -> None:
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if track.kind == "video":
                got.video_frames += 1
                got.last_frame_at = time.monotonic()
                if len(got.first_frames_at) < 10:
                    got.first_frames_at.append(got.last_frame_at)
                source = (track.id or "").split("/")[0]
                got.video_from[source] = got.video_from.get(source, 0) + 1
                y = frame.planes[0]
                got.lumas.append(bytes(y)[(y.line_size * frame.height) // 2])  # a pixel mid-picture
            else:
                got.audio_frames += 1

    @pc.on("track")
    def on_track(track) -> None:
        got.tasks.append(asyncio.ensure_future(consume(track)))

    return got


async def publisher_offer(
    pc: RTCPeerConnection, *, video: bool = True, audio: bool = True, video_codec: str | None = None,
    video_track=None, audio_track=None,
) -> str:
    if video:
        sender = pc.addTrack(video_track or ChangingVideo())
        if video_codec:  # offer only this codec, as an app that insists on it would
            from aiortc import RTCRtpSender

            codecs = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == f"video/{video_codec.lower()}"]
            next(t for t in pc.getTransceivers() if t.sender is sender).setCodecPreferences(codecs)
    if audio:
        pc.addTrack(audio_track or AudioStreamTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def accept(pc: RTCPeerConnection, answer: str) -> None:
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))


async def answer_offer(pc: RTCPeerConnection, offer: str) -> str:
    await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    return pc.localDescription.sdp


async def wait_for(check, timeout: float = 20.0, interval: float = 0.1) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)




class MediaClient:
    """A participant as a WebRTC app would be: one WebSocket, a publish and a subscribe aiortc
    peer connection, answering the server's subscribe offers as they come."""

    def __init__(self, ws_url: str, local_addr: tuple[str, int] | None = None, ice: str = "none"):
        self.ws_url = ws_url
        self.local_addr = local_addr  # the WebSocket's source address (stands for the client's network)
        # "none": no ICE servers; "server": those `joined` gives; "relay": those, TURN candidates only.
        self.ice = ice
        self.ice_servers: list[dict] = []
        self.ws = None
        self.joined: dict = {}
        self.events: list[dict] = []
        self.errors: list[dict] = []
        self.signals: list[dict] = []  # relayed rooms: signal, peer_closed, peers_changed
        self.adaptation: list[dict] = []  # video_disabled_warning, video_disabled, ..._lifted, video_enabled
        self.speakers: list[dict] = []  # who speaks in its room, as the server says when it changes
        self.marks: dict[str, float] = {}  # monotonic times of a join's steps (first of each), for benchmarks
        self.pub_pc: RTCPeerConnection | None = None
        self.sub_pc = new_pc()
        self.got = collect(self.sub_pc)
        self.offers_answered = 0
        self.resets = 0
        self.reset_times: list[float] = []  # monotonic times media_reset arrived
        self.published: dict | None = None  # what publish() was asked for, to publish again after a reset
        self._replies: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self._n = 0
        self._changed = asyncio.Event()

    def new_pc(self) -> RTCPeerConnection:
        return new_pc(self.ice_servers if self.ice != "none" else None, relay=self.ice == "relay")

    @property
    def id(self) -> str:
        return self.joined["participant"]["id"]

    async def join(self, token: str, room_id: str) -> dict:
        return await self._open({"type": "join", "token": token, "room_id": room_id})

    async def resume(self) -> dict:
        """Come back after losing the connection, as the same participant."""
        return await self._open({"type": "resume", "reconnect_token": self.joined["reconnect_token"]})

    async def _open(self, first: dict) -> dict:
        import json

        import websockets

        extra = {"local_addr": self.local_addr} if self.local_addr else {}
        self.marks.setdefault("start", time.monotonic())
        self.ws = await websockets.connect(self.ws_url, **extra)
        await self.ws.send(json.dumps(first))
        msg = json.loads(await asyncio.wait_for(self.ws.recv(), 30))
        if msg["type"] == "joined":
            self.marks.setdefault("joined", time.monotonic())
            self.joined = msg
            if self.ice != "none":
                self.ice_servers = msg.get("ice_servers", [])
                if self.sub_pc.remoteDescription is None:  # not used yet: one with the servers instead
                    await self.sub_pc.close()
                    self.sub_pc = self.new_pc()
                    self.got = collect(self.sub_pc)
            self._reader = asyncio.ensure_future(self._read())
        return msg

    async def drop(self) -> None:
        """Lose everything at once, as when the network goes: socket and peer connections."""
        self.ws.transport.abort()
        if self._reader:
            self._reader.cancel()
        await self._reset_pcs()

    async def _reset_pcs(self) -> None:
        for pc in (self.pub_pc, self.sub_pc):
            if pc is not None:
                await pc.close()
        self.pub_pc = None
        self.sub_pc = self.new_pc()
        self.got_before_reset = self.got
        self.got = collect(self.sub_pc)



    async def _read(self) -> None:
        import json

        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg.get("id") and msg["id"] in self._replies:
                    self._replies.pop(msg["id"]).set_result(msg)
                elif msg["type"] == "offer":
                    self.marks.setdefault("offer", time.monotonic())
                    pc = self.sub_pc
                    if "connected" not in self.marks:
                        @pc.on("connectionstatechange")
                        def _state(pc=pc) -> None:
                            if pc.connectionState == "connected":
                                self.marks.setdefault("connected", time.monotonic())  # DTLS done

                        @pc.on("iceconnectionstatechange")
                        def _ice(pc=pc) -> None:
                            if pc.iceConnectionState in ("connected", "completed"):
                                self.marks.setdefault("ice", time.monotonic())
                    try:
                        answer = await answer_offer(self.sub_pc, msg["sdp"])
                    except Exception as e:  # keep reading; the test sees what went wrong
                        self.errors.append({"type": "client_error", "message": repr(e)})
                        continue
                    await self.ws.send(json.dumps({"type": "answer", "pc": "subscribe", "sdp": answer}))
                    self.marks.setdefault("answered", time.monotonic())
                    self.offers_answered += 1
                elif msg["type"] == "media_reset":
                    self.resets += 1
                    self.reset_times.append(time.monotonic())
                    await self._reset_pcs()
                    if self.published is not None:  # from a task: this reader must read the answer
                        asyncio.ensure_future(self.publish(**self.published))
                elif msg["type"] == "event":
                    self.events.append(msg)
                elif msg["type"] in ("signal", "peer_closed", "peers_changed"):
                    self.signals.append(msg)
                elif msg["type"].startswith("video_"):
                    self.adaptation.append(msg)
                elif msg["type"] == "speakers":
                    self.speakers.append(msg)
                elif msg["type"] == "ping":
                    await self.ws.send(json.dumps({"type": "pong"}))
                elif msg["type"] == "error":
                    self.errors.append(msg)
                self._changed.set()
        except Exception:  # the socket closed: nothing more will come
            return

    async def command(self, msg: dict, timeout: float = 30) -> dict:
        import json

        self._n += 1
        mid = f"m{self._n}"
        fut = asyncio.get_running_loop().create_future()
        self._replies[mid] = fut
        await self.ws.send(json.dumps({**msg, "id": mid}))
        return await asyncio.wait_for(fut, timeout)

    async def publish(self, *, video: bool = True, audio: bool = True, video_track=None, audio_track=None,
                      video_codec: str | None = None) -> dict:
        """``video_track``/``audio_track``: what to send (default: a changing picture, silence);
        after a media reset the same tracks are published again."""
        # (tracks that ended with a closed peer connection are replaced by ones that go on from them)
        video_track, audio_track = (t.fresh() if t is not None and t.readyState == "ended" and hasattr(t, "fresh") else t
                                    for t in (video_track, audio_track))
        self.published = {"video": video, "audio": audio, "video_track": video_track, "audio_track": audio_track,
                           "video_codec": video_codec}
        self.pub_pc = self.new_pc()
        offer = await publisher_offer(self.pub_pc, video=video, audio=audio, video_track=video_track, audio_track=audio_track,
                                      video_codec=video_codec)
        reply = await self.command({"type": "offer", "pc": "publish", "sdp": offer})
        if reply["type"] == "answer":
            await accept(self.pub_pc, reply["sdp"])
        return reply

    def event_seen(self, event: str, **match) -> dict | None:
        for e in self.events:
            if e["event"] == event and all(e.get(k) == v or e["data"].get(k) == v for k, v in match.items()):
                return e
        return None

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader:
            self._reader.cancel()
        for pc in (self.pub_pc, self.sub_pc):
            if pc is not None:
                await pc.close()


async def join_media(
    server, http, room: dict, identity: str, role: str = "publisher", local_addr: tuple[str, int] | None = None,
    ice: str = "none",
) -> MediaClient:
    """A MediaClient that has joined ``room`` through ``server`` (anything with ``ws_url``;
    ``http`` is an API-key client of it)."""
    r = await http.post(f"/v1/rooms/{room['id']}/tokens", json={"identity": identity, "role": role})
    r.raise_for_status()
    c = MediaClient(server.ws_url, local_addr, ice=ice)
    msg = await c.join(r.json()["token"], room["id"])
    if msg["type"] != "joined":
        raise RuntimeError(f"join refused: {msg}")
    return c
