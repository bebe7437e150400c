"""Recorders: a session's tracks written to files as they arrive, without transcoding.

A media worker sends each archived track over a leg like the ones between workers (SRTP with
keys from the control plane, no ICE or DTLS), so the forwarding loop only protects and sends
one more copy. Here each packet is decrypted, put back in order and assembled into frames
(aiortc's jitter buffer and depayloaders) and muxed with PyAV, one file per track segment:
VP8, VP9 and Opus into WebM, H264 into Matroska (Annex B, parameter sets in band, as browsers
send them). (A track in another codec is listed as not recorded.)

A video segment starts on a keyframe: until one comes the recorder asks for it with a PLI
(RFC 4585 section 6.3.1) back over the leg. A segment ends when its track ends or the archive
stops; a track that comes back under a new SSRC (its publisher published again after a media
worker restart) starts a new segment. Files are written as ``.part`` and renamed when whole,
so a file that is listed is never half written.

A recorder that dies leaves its open segments as ``.part`` files. Each segment is noted when it
opens (``.open.jsonl``), so whoever next records or stops the archive on that node finishes
them: what the dead process had written (all but its last buffered moment) is copied, packet for
packet, into a whole file, and listed like any other segment (``salvage``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import pylibsrtp
from aiortc.codecs import depayload
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from mediaserver.media.rtp import KIND_RTCP, KIND_RTP, classify
from mediaserver.media import rtcp
from mediaserver.media.compose import archive_files, compose_files
from mediaserver.media.srtp import SrtpKeys

log = logging.getLogger(__name__)

SEGMENT_LOG = ".segments.jsonl"  # finished segments, one JSON line each (not one of the archive's files)
OPEN_LOG = ".open.jsonl"  # segments as they open: what a successor needs to finish one left open
KEYFRAME_ASK_SECONDS = 1.0  # how often a video segment still waiting for a keyframe asks again
# (codec name -> container format, file suffix, PyAV codec)
CONTAINERS = {"VP8": ("webm", "webm", "vp8"), "VP9": ("webm", "webm", "vp9"), "OPUS": ("webm", "webm", "libopus"),
              "H264": ("matroska", "mkv", "h264")}
SUFFIXES = {suffix for _, suffix, _ in CONTAINERS.values()}
OPUS_HEAD = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00"  # RFC 7845 section 5.1: stereo, 48 kHz


@dataclass
class TrackInfo:
    """What a recorded track is (the control plane says, before its packets come)."""

    track_id: str  # "<participant id>/<mid>"
    participant_id: str
    kind: str  # audio | video
    codec: str  # its name in the SDP: VP8, VP9, H264, opus
    clock_rate: int
    name: str = ""  # the participant's display name


def _is_keyframe(codec: str, frame: bytes) -> bool:
    if codec == "VP8":
        return bool(frame) and not frame[0] & 0x01  # RFC 6386 section 9.1: P bit clear
    if codec == "VP9":
        return _vp9_keyframe(frame)
    if codec == "H264":
        return any(t in (5, 7) for t in _nal_types(frame))  # an IDR picture, or its SPS before it
    return True


def _vp9_keyframe(frame: bytes) -> bool:
    """Whether a VP9 frame is a keyframe: its uncompressed header's frame_type is 0 (VP9
    bitstream specification section 6.2: frame_marker, profile, show_existing_frame, frame_type)."""
    if not frame or frame[0] >> 6 != 2:
        return False
    bits = frame[0] & 0x3F  # after the 2-bit frame marker
    profile = (bits >> 5 & 1) | (bits >> 4 & 1) << 1
    pos = 3 if profile < 3 else 2  # profile 3 has a reserved bit more
    show_existing = bits >> pos & 1
    return not show_existing and not (bits >> (pos - 1) & 1)


def vp9_depayload(payload: bytes) -> bytes:
    """The VP9 data of an RTP payload: its payload descriptor removed (RFC 9628 section 4.2)."""
    if not payload:
        return b""
    first = payload[0]
    i_, p_, l_, f_, v_ = first & 0x80, first & 0x40, first & 0x20, first & 0x10, first & 0x02
    pos = 1
    if i_:
        pos += 2 if payload[pos] & 0x80 else 1  # picture ID, 7 or 15 bits
    if l_:
        pos += 1 if f_ else 2  # layer indices (and TL0PICIDX in non-flexible mode)
    if p_ and f_:
        while True:  # up to three reference indices, N bit: one more follows
            more = payload[pos] & 0x01
            pos += 1
            if not more:
                break
    if v_:  # scalability structure
        ss = payload[pos]
        pos += 1
        spatial = (ss >> 5) + 1
        if ss & 0x10:
            pos += 4 * spatial  # WIDTH, HEIGHT per layer
        if ss & 0x08:
            groups = payload[pos]
            pos += 1
            for _ in range(groups):
                refs = (payload[pos] >> 2) & 0x03
                pos += 1 + refs
    if pos > len(payload):
        raise ValueError("VP9 payload descriptor longer than the packet")
    return payload[pos:]


def _nal_types(annex_b: bytes) -> list[int]:
    """The NAL unit types of an Annex B access unit (ITU-T H.264 section 7.4.1)."""
    out, i = [], annex_b.find(b"\x00\x00\x01")
    while i >= 0 and i + 3 < len(annex_b):
        out.append(annex_b[i + 3] & 0x1F)
        i = annex_b.find(b"\x00\x00\x01", i + 3)
    return out


def _decoded_size(codec: str, frame: bytes) -> tuple[int, int] | None:
    """Width and height of a keyframe, by decoding it (once per file: the container says them)."""
    import av

    try:
        ctx = av.CodecContext.create(codec, "r")
        for picture in ctx.decode(av.Packet(frame)):
            return picture.width, picture.height
        for picture in ctx.decode(None):
            return picture.width, picture.height
    except Exception:
        return None
    return None


def _vp8_size(frame: bytes) -> tuple[int, int] | None:
    """A VP8 keyframe's width and height (RFC 6386 section 9.1)."""
    if len(frame) < 10 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    return int.from_bytes(frame[6:8], "little") & 0x3FFF, int.from_bytes(frame[8:10], "little") & 0x3FFF


class Segment:
    """One file: one track from one of its SSRCs, from its first keyframe to its end."""

    def __init__(self, directory: str, stem: str, info: TrackInfo, offset: float):
        self.info = info
        fmt, suffix, self.codec_name = CONTAINERS[info.codec.upper()]
        self.format = fmt
        self.name = f"{stem}.{suffix}"
        self.path = os.path.join(directory, self.name)
        self.offset = offset  # seconds from the archive's start to this segment's first frame
        self.container: Any = None
        self.stream: Any = None
        self.first_ts: int | None = None
        self.last_ts = 0
        self.pts = 0
        self.frames = 0
        self.keyframes = 0

    def add(self, data: bytes, timestamp: int, keyframe: bool) -> None:
        if self.container is None:
            self._open(data)
        if self.first_ts is None:
            self.first_ts = self.last_ts = timestamp
        # RTP timestamps wrap at 2**32 (RFC 3550 section 5.1): advance by the difference.
        step = (timestamp - self.last_ts) & 0xFFFFFFFF
        if step >= 0x80000000:
            return  # older than what was written (a late frame): a muxer needs rising timestamps
        self.pts += step
        self.last_ts = timestamp
        import av

        packet = av.Packet(data)
        packet.stream = self.stream
        packet.pts = packet.dts = self.pts
        packet.time_base = Fraction(1, self.info.clock_rate)
        packet.is_keyframe = keyframe
        self.container.mux(packet)
        self.frames += 1
        self.keyframes += keyframe

    def _open(self, first: bytes) -> None:
        import av

        # Clusters of at most half a second, each written out whole as it closes: what a recorder
        # that dies leaves on disk is readable up to about its last half second (by default the
        # Matroska muxer keeps 5 s in memory, and a killed process took it all).
        self.container = av.open(self.path + ".part", "w", format=self.format,
                                 container_options={"cluster_time_limit": "500", "flush_packets": "1"})
        if self.info.kind == "audio":
            self.stream = self.container.add_stream(self.codec_name, rate=48000)
            self.stream.codec_context.extradata = OPUS_HEAD
        else:
            self.stream = self.container.add_stream(self.codec_name)
            size = _vp8_size(first) if self.info.codec.upper() == "VP8" else _decoded_size(self.codec_name, first)
            self.stream.width, self.stream.height = size or (640, 480)
        self.stream.time_base = Fraction(1, self.info.clock_rate)

    def close(self) -> dict | None:
        """Finish the file (renamed into place); what the manifest says of it, None if empty."""
        if self.container is None:
            return None
        self.container.close()
        self.container = None
        os.replace(self.path + ".part", self.path)
        return {
            **self.describe(), "duration": round(self.pts / self.info.clock_rate, 3),
            "frames": self.frames, "keyframes": self.keyframes, "size": os.path.getsize(self.path),
        }

    def describe(self) -> dict:
        """What the manifest says of this segment before it ends (also what ``salvage`` needs)."""
        return {
            "file": self.name, "track_id": self.info.track_id, "participant_id": self.info.participant_id,
            "name": self.info.name, "kind": self.info.kind, "codec": self.info.codec, "offset": round(self.offset, 3),
        }


@dataclass
class _Stream:
    info: TrackInfo
    jitter: JitterBuffer
    codec: RTCRtpCodecParameters
    segment: Segment | None = None
    addr: tuple | None = None  # where its packets come from: the worker, where feedback goes
    asked_at: float = float("-inf")


@dataclass
class Recorder:
    """One archive's recording: its own UDP port, the tracks it is told of, their segments."""

    archive_id: str
    directory: str
    keys: SrtpKeys
    host: str = "127.0.0.1"
    started_at: float | None = None  # the archive's start (UNIX time): segments' offsets count from it
    clock: Callable[[], float] = time.time
    streams: dict[int, _Stream] = field(default_factory=dict)  # SSRC on the leg -> its stream
    done: list[dict] = field(default_factory=list)  # closed segments, in order
    skipped: list[dict] = field(default_factory=list)  # tracks in a codec it cannot write
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        self.rx, self.tx = self.keys.sessions()
        if self.started_at is None:
            self.started_at = self.clock()
        self._numbers: dict[str, int] = {}  # track -> segments it has had
        self._udp: asyncio.DatagramTransport | None = None
        # Segments finished before (a recorder that died, started again for the same archive),
        # those it left open finished now.
        self._log = os.path.join(self.directory, SEGMENT_LOG)
        self.done.extend(recover(self.directory))

    async def start(self) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(self.host, 0))
        sock = self._udp.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        return self._udp.get_extra_info("sockname")[:2]

    def add_track(self, ssrc: int, info: TrackInfo) -> None:
        """Packets under ``ssrc`` are ``info``'s track from now on: a new segment."""
        self.end_track(ssrc)
        if info.codec.upper() not in CONTAINERS:
            if all(t["track_id"] != info.track_id for t in self.skipped):
                self.skipped.append({"track_id": info.track_id, "participant_id": info.participant_id, "kind": info.kind,
                                     "codec": info.codec, "reason": "codec_not_recorded"})
            return
        video = info.kind == "video"
        codec = RTCRtpCodecParameters(mimeType=f"{info.kind}/{info.codec}", clockRate=info.clock_rate)
        self.streams[ssrc] = _Stream(info, JitterBuffer(capacity=128 if video else 16, is_video=video), codec)

    def end_track(self, ssrc: int) -> None:
        stream = self.streams.pop(ssrc, None)
        if stream is not None and stream.segment is not None:
            self._close(stream.segment)

    def _close(self, segment: Segment) -> None:
        try:
            info = segment.close()
        except Exception:
            log.exception("archive %s: segment %s not finished", self.archive_id, segment.name)
            return
        if info is not None:
            self.done.append(info)
            with open(self._log, "a") as f:  # (what a successor for this archive starts from)
                f.write(json.dumps(info) + "\n")

    def stop(self) -> list[dict]:
        """Close every segment; every segment the archive has, in the order they ended."""
        for ssrc in list(self.streams):
            self.end_track(ssrc)
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if os.path.exists(opened := os.path.join(self.directory, OPEN_LOG)):
            os.remove(opened)  # (every segment it noted is finished and in the log)
        return list(self.done)

    def status(self) -> dict:
        open_ = [s.segment.name for s in self.streams.values() if s.segment is not None]
        return {"segments": len(self.done) + len(open_), "open": open_, **self.counts}

    # Packets ---------------------------------------------------------------------------------

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        kind = classify(data)
        if kind == KIND_RTCP:
            self._count("rtcp_in")  # the publisher's sender reports, passed on: nothing to do here
            return
        if kind != KIND_RTP:
            self._count("drop_unknown")
            return
        try:
            plain = self.rx.unprotect(data)
        except pylibsrtp.Error:
            self._count("drop_srtp")  # not from our worker (or not for this archive)
            return
        packet = RtpPacket.parse(plain)
        stream = self.streams.get(packet.ssrc)
        if stream is None:
            self._count("drop_unknown_ssrc")
            return
        self._count("rtp_in")
        stream.addr = addr
        if packet.payload:
            try:
                # (aiortc depacketizes VP8 and H264; VP9 is ours)
                packet._data = (vp9_depayload(packet.payload) if stream.info.codec.upper() == "VP9"
                                else depayload(stream.codec, packet.payload))  # (the jitter buffer joins these)
            except Exception:
                self._count("drop_payload")
                return
        else:
            packet._data = b""
        ask, frame = stream.jitter.add(packet)
        if ask:
            stream.asked_at = float("-inf")  # frames were lost: the next keyframe heals the file
        if frame is not None:
            self._frame(packet.ssrc, stream, frame.data, frame.timestamp)

    def _frame(self, ssrc: int, stream: _Stream, data: bytes, timestamp: int) -> None:
        info = stream.info
        key = _is_keyframe(info.codec.upper(), data)
        if stream.segment is None:
            if info.kind == "video" and not key:
                self._ask_keyframe(ssrc, stream)
                return
            n = self._numbers.get(info.track_id, 0)
            stem = f"{info.track_id.replace('/', '-')}-{n}"
            while any(os.path.exists(os.path.join(self.directory, f"{stem}.{ext}{part}"))
                      for ext in SUFFIXES for part in ("", ".part")):
                n += 1  # (a recorder started again for the same archive: after the files it has)
                stem = f"{info.track_id.replace('/', '-')}-{n}"
            self._numbers[info.track_id] = n + 1
            stream.segment = Segment(self.directory, stem, info, self.clock() - self.started_at)
            with open(os.path.join(self.directory, OPEN_LOG), "a") as f:
                f.write(json.dumps(stream.segment.describe()) + "\n")
        try:
            stream.segment.add(data, timestamp, key)
        except Exception:
            self._count("drop_mux")
            log.debug("archive %s: frame not written", self.archive_id, exc_info=True)

    def _ask_keyframe(self, ssrc: int, stream: _Stream) -> None:
        now = self.clock()
        if now - stream.asked_at < KEYFRAME_ASK_SECONDS or stream.addr is None or self._udp is None:
            return
        stream.asked_at = now
        self._count("pli_sent")
        self._udp.sendto(self.tx.protect_rtcp(rtcp.pli(ssrc)), stream.addr)


def _read_log(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def recover(directory: str) -> list[dict]:
    """The segments an archive's directory has, finished in order: those a recorder finished
    (its log) and, finished now and added to the log, those a recorder that died left open."""
    log_path = os.path.join(directory, SEGMENT_LOG)
    done = _read_log(log_path)
    opened = os.path.join(directory, OPEN_LOG)
    finished = {d["file"] for d in done}
    for entry in _read_log(opened):
        part = os.path.join(directory, entry["file"] + ".part")
        if entry["file"] in finished or not os.path.exists(part):
            continue
        info = salvage(part, os.path.join(directory, entry["file"]), entry)
        if info is None:
            log.warning("archive %s: nothing readable in %s", os.path.basename(directory), entry["file"])
            os.remove(part)
            continue
        done.append(info)
        with open(log_path, "a") as f:
            f.write(json.dumps(info) + "\n")
        log.info("archive %s: %s finished after its recorder died (%.1f s)", os.path.basename(directory), entry["file"], info["duration"])
    if os.path.exists(opened):
        os.remove(opened)  # (every entry is in the log now, or gone; segments opened from here on are noted anew)
    return done


def salvage(part: str, path: str, entry: dict) -> dict | None:
    """Copy what a dead recorder wrote to ``part`` into a whole file at ``path`` (packet for
    packet, no transcoding; a truncated last cluster is where the copy ends); its manifest
    entry, None if nothing in it can be read."""
    import av

    fmt = CONTAINERS[entry["codec"].upper()][0]
    frames = keyframes = 0
    last = None
    try:
        src = av.open(part)
    except (av.FFmpegError, OSError):
        return None
    with src:
        if not src.streams:
            return None
        ins = src.streams[0]
        with av.open(path + ".part2", "w", format=fmt) as dst:
            out = dst.add_stream_from_template(ins)
            try:
                for packet in src.demux(ins):
                    if packet.dts is None:
                        continue  # (the demuxer's end-of-stream marker)
                    last = packet.pts if last is None else max(last, packet.pts)
                    frames += 1
                    keyframes += packet.is_keyframe
                    packet.stream = out
                    dst.mux(packet)
            except (av.FFmpegError, OSError):
                pass  # the truncated end of what the dead process wrote
            time_base = ins.time_base
    if not frames:
        os.remove(path + ".part2")
        return None
    os.replace(path + ".part2", path)
    os.remove(part)
    return {**entry, "duration": round(float(last * time_base), 3), "frames": frames, "keyframes": keyframes,
            "size": os.path.getsize(path), "salvaged": True}


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, recorder: Recorder):
        self.recorder = recorder

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            self.recorder.datagram_received(data, addr)
        except Exception:  # one bad packet must never stop the recording
            self.recorder._count("drop_error")
            log.exception("archive %s: packet from %s not handled", self.recorder.archive_id, addr)


class RecorderService:
    """A node's recorders, one per archive being recorded there (the Ray actor in
    ``actors/recorder.py`` is a shell over this class; tests use it directly)."""

    def __init__(self, *, host: str, archive_dir: str):
        self.host = host
        self.archive_dir = archive_dir
        self.recorders: dict[str, Recorder] = {}

    async def watch(self) -> None:
        """Never returns: an archive's owner keeps this call open, and its failure tells it at
        once that the recorder died (its archives then record on in a new one)."""
        await asyncio.Event().wait()

    async def start_archive(self, archive_id: str, rx: str, tx: str, started_at: float | None = None) -> dict:
        """A recorder for ``archive_id`` (the one it has, if called again), with leg keys (hex,
        AEAD_AES_128_GCM key + salt) for what it receives and what it sends back; ``started_at``:
        the archive's start, which offsets count from."""
        from mediaserver.media.legs import LEG_PROFILE
        from mediaserver.media.srtp import BY_NAME

        rec = self.recorders.get(archive_id)
        if rec is None:
            keys = SrtpKeys(BY_NAME[LEG_PROFILE], rx=bytes.fromhex(rx), tx=bytes.fromhex(tx))
            rec = Recorder(archive_id, os.path.join(self.archive_dir, archive_id), keys, host=self.host, started_at=started_at)
            rec.address = await rec.start()
            self.recorders[archive_id] = rec
        host, port = rec.address
        return {"host": host, "port": port}

    def _recorder(self, archive_id: str) -> Recorder:
        rec = self.recorders.get(archive_id)
        if rec is None:
            from mediaserver.errors import MediaserverError

            raise MediaserverError("not_found", f"archive {archive_id} is not being recorded here")
        return rec

    async def add_track(self, archive_id: str, ssrc: int, info: dict) -> None:
        self._recorder(archive_id).add_track(ssrc, TrackInfo(**info))

    async def end_track(self, archive_id: str, ssrc: int) -> None:
        self._recorder(archive_id).end_track(ssrc)

    async def status(self, archive_id: str) -> dict:
        return self._recorder(archive_id).status()

    async def write_manifest(self, archive_id: str, manifest: dict) -> list[dict]:
        """Write the archive's ``manifest.json`` (atomically) beside its files; its files."""
        import json

        directory = os.path.join(self.archive_dir, archive_id)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "manifest.json")
        with open(path + ".part", "w") as f:
            json.dump(manifest, f, indent=2)
        os.replace(path + ".part", path)
        return archive_files(directory)

    async def compose(self, archive_id: str) -> list[dict]:
        """Build the composed MP4 here (in a thread: it transcodes); the archive's files. (The
        server runs ``compose_files`` as a Ray task instead, wherever a core is free.)"""
        return await asyncio.to_thread(compose_files, os.path.join(self.archive_dir, archive_id))

    async def stop_archive(self, archive_id: str) -> dict:
        """Finish every file of the archive; its segments and the tracks it could not write."""
        rec = self.recorders.pop(archive_id, None)
        if rec is None:
            # Not recording here (this recorder started after the one recording it died): what that
            # one wrote, its open segments finished now.
            directory = os.path.join(self.archive_dir, archive_id)
            return {"segments": recover(directory) if os.path.isdir(directory) else [], "skipped": [], "known": False}
        return {"segments": rec.stop(), "skipped": rec.skipped, "known": True}

