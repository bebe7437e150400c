"""aiortc peers for media tests: a publisher with a changing synthetic picture, subscribers that decode."""

from __future__ import annotations

import asyncio
import fractions
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


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


@dataclass
class Received:
    video_frames: int = 0
    audio_frames: int = 0
    lumas: list[int] = field(default_factory=list)
    tasks: list[asyncio.Task] = field(default_factory=list)


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
                y = frame.planes[0]
                got.lumas.append(bytes(y)[(y.line_size * frame.height) // 2])  # a pixel mid-picture
            else:
                got.audio_frames += 1

    @pc.on("track")
    def on_track(track) -> None:
        got.tasks.append(asyncio.ensure_future(consume(track)))

    return got


async def publisher_offer(pc: RTCPeerConnection, *, video: bool = True, audio: bool = True) -> str:
    if video:
        pc.addTrack(ChangingVideo())
    if audio:
        pc.addTrack(AudioStreamTrack())
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


__all__ = ["fractions"]
