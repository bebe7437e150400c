"""Forwarding of SRTP/SRTCP between endpoints: the pure-Python reference.

It defines the observable behaviour the Cython fast path must match packet for
packet: which packets are forwarded where, how headers are rewritten, which
are dropped and why. Endpoints are ``ready`` only once ICE gave them an
address and DTLS gave them keys; nothing is forwarded from or to any other.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pylibsrtp

from mediaserver.media import rtcp
from mediaserver.media.codecs import CODEC_IDS, CODEC_VP8, keyframe_start, picture, rewrite_picture
from mediaserver.media.keyframes import Keyframes
from mediaserver.media.nack import NACK_CACHE, Cache, UpstreamAsks
from mediaserver.media.feedback import Result, SentPackets
from mediaserver.media.rtp import find_extension, newer, payload_length, payload_offset, rewrite_rtp, with_only_extension
from mediaserver.media.srtp import SrtpKeys
from mediaserver.media.temporal import DROP_WINDOW, MAX_TEMPORAL, Drops, newer16, step_layer, vp8_temporal
from mediaserver.media import twcc
from mediaserver.media.twcc import MAX_MESSAGES, Twcc

__all__ = ["NACK_CACHE", "Forwarder", "Route"]

MTU = 1500  # larger datagrams are never forwarded
REMB_INTERVAL = 0.5  # the publisher hears the lowest subscriber estimate at most this often per track
# ... of a video, of the subscribers whose links carry at least 1/REMB_FOLLOW of the best one's:
# one far weaker link does not set everyone's video (its subscriber falls back to audio instead).
REMB_FOLLOW = 3
LAYER_TIMEOUT = 1.0  # a simulcast layer silent this long is not sent now (the publisher paused it)
MAX_LAYER = 2  # simulcast layers are 0-2 (RFC 8853 allows more; browsers send up to three)
# An audio packet whose level (RFC 6464: -dBov, 0 the loudest, 127 silence) is this or louder
# counts as loud: a talker is -10 to -35 dBov (after the browser's gain control), a quiet room
# under -60. (LiveKit's figure is 35.)
LOUD_LEVEL = 40
# A subscriber's repairs (NACK answers) are at most half the bytes of what it is sent, with a
# burst of this many bytes: on a link that loses much, a repair is lost as often as the
# original, and answering every NACK of every retry would bury the link.
RTX_BURST = 32768


@dataclass
class Route:
    ssrc: int  # SSRC the subscriber sees
    payload_type: int
    seq_delta: int = 0
    ts_delta: int = 0
    video: bool = False  # a new subscriber of a video track needs a keyframe
    layer: int = 0  # simulcast: the layer it should get (0: the lowest)
    cap: int = MAX_LAYER  # simulcast: the highest layer its link carries (-1: none, video paused)
    # Simulcast, the forwarder's own: the layer it gets now (None: none yet), the last packet
    # it was sent (its sequence number, timestamp, when, VP8 picture ID and TL0PICIDX), the
    # first sequence number of the current layer, and the shifts of the VP8 picture IDs.
    current: int | None = None
    last_seq: int | None = None
    last_ts: int = 0
    last_at: float = 0.0
    last_pid: int = -1
    last_tl0: int = -1
    layer_start: int = 0
    pid_delta: int = 0
    tl0_delta: int = 0
    # A video sent as one stream (cap -1: paused): on again, it waits for a keyframe (resume) and
    # its numbers go on from the last packet sent; NACKs for what it was sent before are not
    # answered from then on (resumed).
    resume: bool = False
    resumed: bool = False
    # VP8 temporal layers (``mediaserver.media.temporal``): the highest TID it may get (its frame
    # rate: 2 full, 1 half, 0 a quarter), the one it gets now, the newest publisher sequence
    # number it was routed since it last dropped one, and what it dropped lately.
    rtx_tokens: int = 0  # bytes of repairs it may be sent now (see RTX_BURST)
    tcap: int = MAX_TEMPORAL
    tcur: int = MAX_TEMPORAL
    tin_top: int | None = None
    tlast_dropped: bool = False  # the packet at tin_top was not sent
    tlast_end: bool = False  # ... ended a frame (RTP marker)
    tdrops: Drops | None = None

    @property
    def filtered(self) -> bool:
        """It has dropped or may drop frames of upper temporal layers."""
        return self.tdrops is not None or self.tcur < MAX_TEMPORAL or self.tcap < MAX_TEMPORAL


SIMULCAST_STATE = ("cap", "seq_delta", "ts_delta", "current", "last_seq", "last_ts", "last_at", "last_pid", "last_tl0",
                   "layer_start", "pid_delta", "tl0_delta", "resume", "resumed", "tcap", "tcur", "tin_top", "tlast_dropped", "tlast_end", "tdrops")


@dataclass
class Simulcast:
    """A track sent as several encodings (RFC 8853), each an RTP stream of its own whose SSRC
    we learn from its first packet's mid and rid header extensions (RFC 8852)."""

    mid: str
    rids: list[str]  # lowest first
    codec: int  # where keyframes start is read from the payload
    ssrcs: list[int | None]
    seen: list[float] = field(default_factory=lambda: [float("-inf")] * 3)  # each layer's latest packet
    bytes: list[int] = field(default_factory=lambda: [0] * 3)  # each layer's bytes received, for its bitrate

    def wanted(self, route: Route, now: float) -> int | None:
        """The layer a route gets: the one it asked for (within its cap) if sent now, else the
        next lower one sent, else the next higher up to the cap (a publisher sends only what its
        camera and link allow); None while its video is paused."""
        top = min(route.layer, route.cap)
        if top < 0:
            return None
        hi = len(self.rids) if route.cap >= route.layer else route.cap + 1
        for i in [*range(top, -1, -1), *range(top + 1, hi)]:
            if self.ssrcs[i] is not None and now - self.seen[i] < LAYER_TIMEOUT:
                return i
        return top


@dataclass
class Endpoint:
    id: str
    addr: tuple | None = None
    rx: pylibsrtp.Session | None = None
    tx: pylibsrtp.Session | None = None
    twcc: Twcc | None = None  # transport-wide feedback we owe it, when negotiated
    sdes: tuple[int, int, int] | None = None  # its mid, rid and repaired-rid extension IDs
    level_ext: int = 0  # its audio level extension's ID (RFC 6464; 0: none)
    sent: SentPackets | None = None  # what we send it, numbered, and its feedback (when it takes transport-cc)

    @property
    def ready(self) -> bool:
        return self.addr is not None and self.rx is not None


@dataclass
class Forwarder:
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    by_addr: dict[tuple, Endpoint] = field(default_factory=dict)
    # (publisher endpoint, publisher SSRC) -> {subscriber endpoint id: Route}
    routes: dict[tuple[str, int], dict[str, Route]] = field(default_factory=dict)
    # (subscriber endpoint, SSRC it sees) -> (publisher endpoint, publisher SSRC), for feedback
    reverse: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    # (publisher endpoint, publisher SSRC) -> its keyframe-request throttle
    keyframes: dict[tuple[str, int], Keyframes] = field(default_factory=dict)
    # (publisher endpoint, publisher SSRC) -> its recent packets (plaintext)
    cache: dict[tuple[str, int], Cache] = field(default_factory=dict)
    # (subscriber endpoint, SSRC it sees) -> its latest reception report (loss, jitter)
    quality: dict[tuple[str, int], dict] = field(default_factory=dict)
    # (publisher endpoint, publisher SSRC) -> {subscriber: its latest bandwidth estimate in bit/s}
    estimates: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    last_remb: dict[tuple[str, int], float] = field(default_factory=dict)
    # (publisher endpoint, publisher SSRC) -> what was asked of its publisher lately
    asked: dict[tuple[str, int], UpstreamAsks] = field(default_factory=dict)
    # (publisher endpoint, its RTX SSRC) -> the media SSRC it repairs (RFC 4588)
    rtx: dict[tuple[str, int], int] = field(default_factory=dict)
    # (subscriber endpoint, SSRC it sees) -> [RTX SSRC, RTX payload type, next RTX sequence number]
    rtx_out: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    # (publisher endpoint, track SSRC) -> its encodings, for simulcast tracks
    simulcast: dict[tuple[str, int], Simulcast] = field(default_factory=dict)
    # (publisher endpoint, an encoding's SSRC) -> (track SSRC, layer)
    layer_of: dict[tuple[str, int], tuple[int, int]] = field(default_factory=dict)
    # (publisher endpoint, publisher SSRC) -> the highest sequence number received (modulo 2^16)
    highest: dict[tuple[str, int], int] = field(default_factory=dict)
    # (publisher endpoint, SSRC) -> [codec, bytes received] of a video track sent as one stream
    single: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    # (publisher endpoint, track SSRC) -> bytes received in each VP8 temporal layer (all its encodings)
    tbytes: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    # (publisher endpoint, SSRC) -> [packets with an audio level, loud ones, sum of 127 - level]
    levels: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)
    # Sees each RTP packet forwarded, SRTP removed (receiver id, plaintext): a debugging and test
    # aid (what the server sees of an end-to-end encrypted frame); the fast path has none.
    tap: Callable[[str, bytes], None] | None = None

    # Control -------------------------------------------------------------------

    def add_endpoint(self, eid: str) -> None:
        self.endpoints.setdefault(eid, Endpoint(eid))

    def set_address(self, eid: str, addr: tuple) -> None:
        ep = self.endpoints[eid]
        if ep.addr is not None and self.by_addr.get(ep.addr) is ep:
            del self.by_addr[ep.addr]
        ep.addr = addr
        self.by_addr[addr] = ep

    def set_keys(self, eid: str, keys: SrtpKeys) -> None:
        ep = self.endpoints[eid]
        ep.rx, ep.tx = keys.sessions()

    def set_twcc(self, eid: str, ext_id: int) -> None:
        """Send the endpoint transport-wide feedback for the packets carrying extension ``ext_id``
        (0: none)."""
        if not 0 <= ext_id <= 255:
            raise ValueError("a header extension ID is 1-255")
        self.endpoints[eid].twcc = Twcc(ext_id) if ext_id else None

    def set_twcc_out(self, eid: str, ext_id: int) -> None:
        """Number what goes to the endpoint in header extension ``ext_id`` (1-14; 0: not) and
        pair its transport-wide feedback with it (``twcc_results``): for its bandwidth estimate."""
        if not 0 <= ext_id <= 14:
            raise ValueError("a one-byte header extension ID is 1-14")
        ep = self.endpoints[eid]
        if not ext_id:
            ep.sent = None
        elif ep.sent is None or ep.sent.ext_id != ext_id:
            ep.sent = SentPackets(ext_id)

    def twcc_results(self) -> dict[str, list[Result]]:
        """{subscriber: what its feedback said of the packets we sent it, since the last call}."""
        out = {}
        for eid, ep in self.endpoints.items():
            if ep.sent is not None and ep.sent.results:
                out[eid] = ep.sent.take()
        return out

    def set_audio_level(self, eid: str, ext_id: int) -> None:
        """Count the audio levels (RFC 6464) the endpoint's packets carry in extension ``ext_id``
        (0: none), for who is speaking (``audio_levels``)."""
        if not 0 <= ext_id <= 255:
            raise ValueError("a header extension ID is 1-255")
        self.endpoints[eid].level_ext = ext_id

    def audio_levels(self) -> dict[tuple[str, int], list[int]]:
        """{(publisher, SSRC): [packets with an audio level, loud ones (LOUD_LEVEL or louder),
        sum of 127 - level]} so far."""
        return {key: list(counts) for key, counts in self.levels.items()}

    def set_rtx(self, eid: str, rtx_ssrc: int, media_ssrc: int) -> None:
        """The endpoint repairs ``media_ssrc`` with RTX (RFC 4588) on ``rtx_ssrc``."""
        self.endpoints[eid]  # noqa: B018 - a KeyError for an unknown endpoint, as the fast path's
        self.rtx[(eid, rtx_ssrc)] = media_ssrc

    def set_rtx_out(self, eid: str, ssrc: int, rtx_ssrc: int, rtx_pt: int) -> None:
        """Repairs of what the endpoint receives as ``ssrc`` go as RTX (RFC 4588) on ``rtx_ssrc``
        (0: as the original packet)."""
        self.endpoints[eid]  # noqa: B018 - a KeyError for an unknown endpoint, as the fast path's
        if not rtx_ssrc:
            self.rtx_out.pop((eid, ssrc), None)
        elif (eid, ssrc) in self.rtx_out:
            self.rtx_out[(eid, ssrc)][:2] = [rtx_ssrc, rtx_pt]
        else:
            self.rtx_out[(eid, ssrc)] = [rtx_ssrc, rtx_pt, 1]

    def set_sdes(self, eid: str, mid_id: int, rid_id: int, rrid_id: int) -> None:
        """The header extension IDs of the endpoint's mid, rid and repaired rid (RFC 8852), by
        which its simulcast encodings are told apart."""
        self.endpoints[eid].sdes = (mid_id, rid_id, rrid_id)

    def add_simulcast(self, eid: str, track_ssrc: int, mid: str, rids: list[str], codec: str) -> None:
        """A simulcast track of the endpoint, known to routes as ``track_ssrc`` (its encodings'
        SSRCs are learnt from their packets), with its encodings' rids, lowest first."""
        if not 1 <= len(rids) <= 3 or not all(0 < len(r) <= 16 for r in rids + [mid]):
            raise ValueError("one to three rids, and rids and mid of 1-16 characters")
        self.endpoints[eid]  # noqa: B018 - a KeyError for an unknown endpoint, as the fast path's
        self.simulcast[(eid, track_ssrc)] = Simulcast(mid, list(rids), CODEC_IDS.get(codec, 0), [None] * len(rids))
        self.routes.setdefault((eid, track_ssrc), {})

    def set_codec(self, eid: str, ssrc: int, codec: str) -> None:
        """A video track of the endpoint sent as one stream, and its codec: a route of it that
        was paused resumes at a keyframe (read from the payload; unknown codec: at once)."""
        self.endpoints[eid]  # noqa: B018 - a KeyError for an unknown endpoint, as the fast path's
        self.single[(eid, ssrc)] = [CODEC_IDS.get(codec, 0), 0]

    def set_layer(self, src: str, track_ssrc: int, dst: str, layer: int, now: float) -> list[tuple[bytes, tuple]]:
        """Send ``dst`` another layer of a simulcast track, from the layer's next keyframe (asked for now)."""
        sim = self.simulcast.get((src, track_ssrc))
        route = self.routes.get((src, track_ssrc), {}).get(dst)
        if sim is None or route is None:
            return []
        route.layer = max(0, min(layer, len(sim.rids) - 1))
        return self._toward_wanted(src, track_ssrc, sim, route, now)

    def set_cap(self, src: str, track_ssrc: int, dst: str, cap: int, now: float,
                tcap: int = MAX_TEMPORAL) -> list[tuple[bytes, tuple]]:
        """The highest layer of a video track ``dst``'s link carries (the adaptation's choice,
        under the layer it asked for); -1 pauses its video, which resumes from a keyframe. A
        video sent as one stream has one layer: on (0) or paused. ``tcap``: the highest VP8
        temporal layer it gets (2: every frame, 1: half of them, 0: a quarter), from the next
        frame down, or from the next frame that allows it up."""
        sim = self.simulcast.get((src, track_ssrc))
        route = self.routes.get((src, track_ssrc), {}).get(dst)
        if route is None or not route.video:
            return []
        route.tcap = max(0, min(tcap, MAX_TEMPORAL))
        was = route.cap
        route.cap = max(-1, min(cap, MAX_LAYER))
        if route.cap < 0:
            route.current = None  # (its numbers go on from the last packet sent when it resumes)
            route.resume = False
            return []
        if sim is not None:
            return self._toward_wanted(src, track_ssrc, sim, route, now)
        if was >= 0:
            return []
        route.resume = True
        return self._request_keyframe((src, track_ssrc), now)

    def _toward_wanted(self, src: str, track_ssrc: int, sim: "Simulcast", route: Route, now: float) -> list:
        want = sim.wanted(route, now)
        if want is None or route.current == want or sim.ssrcs[want] is None:
            return []
        return self._request_keyframe((src, sim.ssrcs[want]), now)

    def layer_bytes(self) -> dict[tuple[str, int], list[int]]:
        """{(publisher, track SSRC): bytes received so far in each of its simulcast layers (one
        for a video sent as one stream)}."""
        out = {key: sim.bytes[:len(sim.rids)] for key, sim in self.simulcast.items()}
        out.update({key: [single[1]] for key, single in self.single.items()})
        return out

    def temporal_bytes(self) -> dict[tuple[str, int], list[int]]:
        """{(publisher, track SSRC): bytes received so far in each VP8 temporal layer, TID 0-2}
        for the video tracks whose packets name one (all in TID 0 where none does)."""
        return {key: list(counts) for key, counts in self.tbytes.items()}

    def subscriber_estimates(self) -> dict[str, dict[tuple[str, int], int]]:
        """{subscriber: {(publisher, track SSRC): its latest REMB estimate, bit/s}}, for the
        routes it has now."""
        out: dict[str, dict[tuple[str, int], int]] = {}
        for source, estimates in self.estimates.items():
            for sub, bitrate in estimates.items():
                if sub in self.routes.get(source, {}):
                    out.setdefault(sub, {})[source] = bitrate
        return out

    def remove_endpoint(self, eid: str) -> None:
        for key in [k for k in self.rtx if k[0] == eid]:
            del self.rtx[key]
        for table in (self.simulcast, self.layer_of, self.rtx_out, self.single, self.tbytes, self.levels):
            for key in [k for k in table if k[0] == eid]:
                del table[key]
        ep = self.endpoints.pop(eid, None)
        if ep and ep.addr is not None and self.by_addr.get(ep.addr) is ep:
            del self.by_addr[ep.addr]
        for key in [k for k in self.routes if k[0] == eid]:
            for dst, route in self.routes.pop(key).items():
                self.reverse.pop((dst, route.ssrc), None)
        for routes in self.routes.values():
            route = routes.pop(eid, None)
            if route:
                self.reverse.pop((eid, route.ssrc), None)

    def set_route(self, src: str, src_ssrc: int, dst: str, route: Route) -> None:
        old = self.routes.get((src, src_ssrc), {}).get(dst)
        if old is not None and old.ssrc == route.ssrc and (
                (src, src_ssrc) in self.simulcast or old.cap < 0 or old.resumed or old.filtered):
            # The same stream to the same subscriber, routed again (a renegotiation): a simulcast
            # route, or one paused, resumed or thinned to fewer frames, keeps where it is, or its
            # numbers would jump (and SRTP refuse them).
            for name in SIMULCAST_STATE:
                setattr(route, name, getattr(old, name))
        self.routes.setdefault((src, src_ssrc), {})[dst] = route
        self.reverse[(dst, route.ssrc)] = (src, src_ssrc)

    def remove_route(self, src: str, src_ssrc: int, dst: str) -> None:
        routes = self.routes.get((src, src_ssrc), {})
        route = routes.pop(dst, None)
        if route:
            self.reverse.pop((dst, route.ssrc), None)

    # Data ----------------------------------------------------------------------

    def _drop(self, reason: str) -> list:
        self.stats[f"drop_{reason}"] += 1
        return []

    def handle_rtp(self, data: bytes, addr: tuple, now: float = 0.0) -> list[tuple[bytes, tuple]]:
        ep = self.by_addr.get(addr)
        if ep is None or not ep.ready:
            return self._drop("not_ready")  # no ICE and DTLS from this address: never forwarded
        if len(data) > MTU:
            return self._drop("too_big")
        try:
            plain = ep.rx.unprotect(data)
        except pylibsrtp.Error:
            return self._drop("srtp")  # authentication or replay check failed
        self.stats["rtp_in"] += 1
        seq, ssrc = struct.unpack_from("!H", plain, 2)[0], struct.unpack_from("!I", plain, 8)[0]
        out = []
        if ep.level_ext:
            value = find_extension(plain, ep.level_ext)
            if value:
                level = value[0] & 0x7F  # (the top bit is the voice-activity flag, which not every sender sets)
                counts = self.levels.setdefault((ep.id, ssrc), [0, 0, 0])
                counts[0] += 1
                counts[1] += level <= LOUD_LEVEL
                counts[2] += 127 - level
        if ep.twcc is not None:
            value = find_extension(plain, ep.twcc.ext_id)
            if value is not None and len(value) >= 2:
                ep.twcc.record(struct.unpack_from("!H", value)[0], now)
                out += self._send_twcc(ep, ssrc, now)
        if (ep.id, ssrc) in self.simulcast:
            return out + self._drop("unknown_ssrc")  # a simulcast track's own SSRC names no stream
        layer = self.layer_of.get((ep.id, ssrc))
        if layer is None and (ep.id, ssrc) not in self.routes and ep.sdes is not None:
            self._discover(ep, plain, ssrc)
            layer = self.layer_of.get((ep.id, ssrc))
        routes = self.routes.get((ep.id, layer[0])) if layer else self.routes.get((ep.id, ssrc))
        if routes is None:
            media = self.rtx.get((ep.id, ssrc))
            if media is None:
                return out + self._drop("unknown_ssrc")
            # RTX (RFC 4588 section 4): the original sequence number leads the payload. A packet
            # with nothing but padding is the publisher probing its bandwidth: not media.
            size = payload_length(plain)
            if size is None or size < 2:
                self.stats["padding_in"] += 1
                return out
            off = payload_offset(plain)
            seq, ssrc = struct.unpack_from("!H", plain, off)[0], media
            plain = plain[:2] + struct.pack("!H", seq) + plain[4:8] + struct.pack("!I", ssrc) + plain[12:off] + plain[off + 2:]
            layer = self.layer_of.get((ep.id, ssrc))
            routes = self.routes.get((ep.id, layer[0])) if layer else self.routes.get((ep.id, ssrc))
            if routes is None:
                return out + self._drop("unknown_ssrc")
            if (ep.id, ssrc) in self.cache and self.cache[(ep.id, ssrc)].get(seq) is not None:
                self.stats["rtx_redundant"] += 1  # we have it: a probe with payload, or a late repair
                return out
            self.stats["rtx_repaired"] += 1
        source = (ep.id, ssrc)
        self.cache.setdefault(source, Cache()).put(seq, plain)
        top = self.highest.get(source)
        if top is None or newer(seq, top):
            self.highest[source] = seq
        if layer is not None:
            out += self._forward_layer(ep.id, layer, routes, plain, seq, now)
        else:
            out += self._forward_single(source, routes, plain, seq, now)
        if source in self.keyframes and self.keyframes[source].due(now):
            # A keyframe request the throttle held back (a subscriber ready just after another):
            # sent with the publisher's first packet after the window, not dropped.
            self.stats["pli_deferred"] += 1
            out += self._request_keyframe(source, now)
        return out

    def _discover(self, ep: Endpoint, plain: bytes, ssrc: int) -> None:
        """The first packet of a simulcast encoding (or of its RTX stream): which track and
        layer it is, from its mid and rid (or repaired rid) header extensions."""
        mid_id, rid_id, rrid_id = ep.sdes
        mid = find_extension(plain, mid_id)
        rid = find_extension(plain, rid_id)
        rrid = find_extension(plain, rrid_id) if rid is None else None
        if mid is None or (rid or rrid) is None:
            return
        for (eid, track_ssrc), sim in self.simulcast.items():
            if eid != ep.id or sim.mid.encode() != mid:
                continue
            for i, name in enumerate(sim.rids):
                if rid is not None and name.encode() == rid and sim.ssrcs[i] is None:
                    sim.ssrcs[i] = ssrc
                    self.layer_of[(ep.id, ssrc)] = (track_ssrc, i)
                    self.stats["layers_found"] += 1
                elif rrid is not None and name.encode() == rrid and sim.ssrcs[i] is not None:
                    self.rtx[(ep.id, ssrc)] = sim.ssrcs[i]
            return

    def _forward_layer(self, pub: str, layer: tuple[int, int], routes: dict, plain: bytes, seq: int, now: float) -> list:
        """A packet of one simulcast layer goes to the routes that get that layer, and starts it
        for those waiting for it if a keyframe starts here."""
        track_ssrc, index = layer
        sim = self.simulcast[(pub, track_ssrc)]
        sim.seen[index] = now
        sim.bytes[index] += len(plain)
        payload = plain[payload_offset(plain) or len(plain):]
        self._count_temporal((pub, track_ssrc), sim.codec, payload, len(plain))
        key, out, waiting = None, [], False
        for dst_id, route in routes.items():
            if route.current != index:
                if sim.wanted(route, now) != index:
                    continue
                if key is None:
                    key = keyframe_start(sim.codec, payload)
                if not key:
                    waiting = True
                    continue
                self._switch(route, index, sim.codec, plain, payload, seq, now)
            sent = self._send_to(dst_id, route, plain, sim.codec, now)
            if sent:
                out.append(sent)
        if waiting and self.keyframes.setdefault((pub, sim.ssrcs[index]), Keyframes()).ready(now):
            out += self._request_keyframe((pub, sim.ssrcs[index]), now)  # its keyframe is late: ask again
        return out

    def _forward_single(self, source: tuple[str, int], routes: dict, plain: bytes, seq: int, now: float) -> list:
        """A packet of a track sent as one stream goes to every route of it but the paused ones;
        a route on again starts at a keyframe (asked for again if it is late)."""
        single = self.single.get(source)
        if single is not None:
            single[1] += len(plain)
            off = payload_offset(plain)
            self._count_temporal(source, single[0], plain[off:] if off is not None else b"", len(plain))
        key, out, waiting = None, [], False
        for dst_id, route in routes.items():
            if route.cap < 0:
                continue  # its video is paused: audio only
            if route.resume:
                if single is not None and single[0]:
                    if key is None:
                        off = payload_offset(plain)
                        key = off is not None and keyframe_start(single[0], plain[off:])
                    if not key:
                        waiting = True
                        continue
                self._go_on(route, plain, seq, now)
                route.resume, route.resumed = False, True
                route.layer_start = (seq + route.seq_delta) & 0xFFFF
                self.stats["video_resumed"] += 1
            sent = self._send_to(dst_id, route, plain, single[0] if single is not None else None, now)
            if sent:
                out.append(sent)
        if waiting and self.keyframes.setdefault(source, Keyframes()).ready(now):
            out += self._request_keyframe(source, now)  # its keyframe is late: ask again
        return out

    def _count_temporal(self, track: tuple[str, int], codec: int, payload: bytes, size: int) -> None:
        if codec != CODEC_VP8:
            return
        t = vp8_temporal(payload)
        if t is not None:
            self.tbytes.setdefault(track, [0, 0, 0])[max(t.tid, 0)] += size

    @staticmethod
    def _go_on(route: Route, plain: bytes, seq: int, now: float) -> bool:
        """A route's sequence numbers and timestamps go on from the last ones it was sent, from
        this packet on, so the subscriber sees one stream. False if it was sent nothing yet."""
        route.tdrops, route.tin_top = None, None  # (numbers of another stream from here on)
        if route.last_seq is None:
            return False
        route.seq_delta = (route.last_seq + 1 - seq) & 0xFFFF
        gap = max(1, int((now - route.last_at) * 90000))  # video's 90 kHz clock
        route.ts_delta = (route.last_ts + gap - struct.unpack_from("!I", plain, 4)[0]) & 0xFFFFFFFF
        return True

    def _switch(self, route: Route, index: int, codec: int, plain: bytes, payload: bytes, seq: int, now: float) -> None:
        """Start a route on another layer: its sequence numbers, timestamps and picture IDs go
        on from the last ones it was sent, so the subscriber sees one stream."""
        if self._go_on(route, plain, seq, now):
            found = picture(codec, payload)
            if found is not None:
                if found[0] >= 0 and route.last_pid >= 0:
                    route.pid_delta = (route.last_pid + 1 - found[0]) & 0x7FFF
                if found[1] >= 0 and route.last_tl0 >= 0:
                    route.tl0_delta = (route.last_tl0 + 1 - found[1]) & 0xFF
        route.current = index
        route.layer_start = (seq + route.seq_delta) & 0xFFFF
        self.stats["layer_switches"] += 1

    def _send_twcc(self, ep: Endpoint, media_ssrc: int, now: float) -> list[tuple[bytes, tuple]]:
        if not ep.twcc.due(now):
            return []
        out = []
        for _ in range(MAX_MESSAGES):
            if ep.twcc.end <= ep.twcc.base:
                break
            msg = ep.twcc.feedback(media_ssrc, now)
            if msg is not None:
                self.stats["twcc_sent"] += 1
                out.append((ep.tx.protect_rtcp(msg), ep.addr))
        return out

    def _send_to(self, dst_id: str, route: Route, plain: bytes, codec: int | None = None, now: float = 0.0,
                 repair: bool = False) -> tuple[bytes, tuple] | None:
        """``codec``: a video packet whose codec is known (a simulcast layer's, or a video sent
        as one stream whose codec we were told): its picture IDs are kept track of, and VP8
        frames of temporal layers above the route's are not sent; ``repair``: a retransmission,
        sent as RTX where the subscriber takes it."""
        dst = self.endpoints.get(dst_id)
        if dst is None or not dst.ready:
            self.stats["drop_subscriber_not_ready"] += 1
            return None
        extra_seq = extra_pid = 0
        if codec == CODEC_VP8 and route.video:
            shift = self._temporal(route, plain, repair)
            if shift is None:
                return None
            extra_seq, extra_pid = shift
        if repair:
            if route.rtx_tokens < len(plain):
                self.stats["nack_throttled"] += 1
                return None
            route.rtx_tokens -= len(plain)
        else:
            route.rtx_tokens = min(route.rtx_tokens + len(plain) // 2, RTX_BURST)
        if self.tap is not None:
            self.tap(dst_id, plain)
        pkt = bytearray(plain)
        rewrite_rtp(pkt, route.ssrc, route.seq_delta + extra_seq, route.ts_delta)
        pkt[1] = (pkt[1] & 0x80) | route.payload_type
        if codec is not None:
            off = payload_offset(pkt)
            if off is not None:
                rewrite_picture(codec, pkt, off, route.pid_delta + extra_pid, route.tl0_delta)
        if codec is not None or route.video:
            out_seq = struct.unpack_from("!H", pkt, 2)[0]
            if route.last_seq is None or newer(out_seq, route.last_seq):
                route.last_seq, route.last_ts, route.last_at = out_seq, struct.unpack_from("!I", pkt, 4)[0], now
                found = picture(codec, bytes(pkt[off:])) if codec is not None and off is not None else None
                if found is not None:
                    route.last_pid, route.last_tl0 = found
        rtx = self.rtx_out.get((dst_id, route.ssrc)) if repair else None
        off = payload_offset(pkt) if rtx else None
        if rtx and off is not None:
            # RFC 4588 section 4: its own SSRC, payload type and sequence number, the original
            # sequence number first in the payload.
            pkt[off:off] = pkt[2:4]
            struct.pack_into("!H", pkt, 2, rtx[2])
            struct.pack_into("!I", pkt, 8, rtx[0])
            pkt[1] = (pkt[1] & 0x80) | rtx[1]
            rtx[2] = (rtx[2] + 1) & 0xFFFF
            self.stats["rtx_sent"] += 1
        seq = None
        if dst.sent is not None:
            if payload_offset(pkt) is None:
                self.stats["drop_malformed"] += 1  # (its header extensions run past its end)
                return None
            seq = dst.sent.number()
            pkt = with_only_extension(pkt, dst.sent.ext_id, seq)
        protected = dst.tx.protect(bytes(pkt))
        if seq is not None:
            dst.sent.record(seq, now, len(protected))
        self.stats["rtp_out"] += 1
        self.stats["bytes_out"] += len(protected)
        return protected, dst.addr

    def _temporal(self, route: Route, plain: bytes, repair: bool) -> tuple[int, int] | None:
        """Whether a VP8 packet goes to a route thinned to fewer frames (None: dropped), and if
        so what its sequence number and picture ID are shifted by beyond the route's own shifts
        (a late packet: the drops after it are given back)."""
        if not (route.filtered or repair):
            route.tin_top = None  # (its numbers are not followed while it gets every frame)
            return 0, 0
        off = payload_offset(plain)
        t = vp8_temporal(plain[off:]) if off is not None else None
        if t is None or t.tid < 0:
            return 0, 0
        seq = struct.unpack_from("!H", plain, 2)[0]
        drops = route.tdrops
        if repair or (route.tin_top is not None and not newer16(seq, route.tin_top)):
            if drops is None:
                return 0, 0
            if drops.dropped_picture(t.pid) or (route.tin_top - seq) & 0xFFFF >= DROP_WINDOW:
                self.stats["temporal_dropped"] += 1  # of a frame it does not get, or too late to place
                return None
            return drops.after(seq, t.pid)
        route.tcur = step_layer(route.tcur, route.tcap, t)
        keep = t.tid <= route.tcur
        if route.tin_top is not None:
            # What never came between the last packet and this one was of dropped frames when it
            # follows a dropped packet and comes before another or a kept frame's start, or
            # follows a frame's end and comes before the rest of a dropped frame: counted as
            # dropped, or the subscriber would see it lost (ask for it, and report the loss).
            gap = (seq - route.tin_top - 1) & 0xFFFF
            if 0 < gap < DROP_WINDOW and ((route.tlast_dropped and (not keep or t.start))
                                          or (route.tlast_end and not keep and not t.start)):
                if drops is None:
                    drops = route.tdrops = Drops()
                for k in range(1, gap + 1):
                    drops.add((route.tin_top + k) & 0xFFFF, -1)
                route.seq_delta = (route.seq_delta - gap) & 0xFFFF
        route.tin_top, route.tlast_dropped, route.tlast_end = seq, not keep, bool(plain[1] & 0x80)
        if keep:
            return 0, 0
        if drops is None:
            drops = route.tdrops = Drops()
        route.seq_delta = (route.seq_delta - 1) & 0xFFFF
        if drops.add(seq, t.pid):
            route.pid_delta = (route.pid_delta - 1) & 0x7FFF
        self.stats["temporal_dropped"] += 1
        return None

    def handle_rtcp(self, data: bytes, addr: tuple, now: float) -> list[tuple[bytes, tuple]]:
        ep = self.by_addr.get(addr)
        if ep is None or not ep.ready:
            return self._drop("not_ready")
        if len(data) > MTU:
            return self._drop("too_big")
        try:
            plain = ep.rx.unprotect_rtcp(data)
        except pylibsrtp.Error:
            return self._drop("srtcp")
        self.stats["rtcp_in"] += 1
        out = []
        for pt, fmt, packet in rtcp.packets(plain):
            for block in rtcp.report_blocks(pt, fmt, packet):
                if (ep.id, block["ssrc"]) in self.reverse:  # what a subscriber says of what we send it
                    self.quality[(ep.id, block["ssrc"])] = block
            if pt == rtcp.SR and len(packet) >= 28:
                out += self._forward_sr(ep.id, packet)
                continue
            if pt == rtcp.RTPFB and fmt == twcc.FMT_TWCC:
                if ep.sent is not None:  # (a subscriber's, about what we send it)
                    self.stats["twcc_in" if ep.sent.feedback(packet, now) else "drop_twcc_malformed"] += 1
                continue
            estimate = rtcp.remb_request(pt, fmt, packet)
            if estimate is not None:
                out += self._pass_remb(ep.id, *estimate, now)
                continue
            lost = rtcp.nack_request(pt, fmt, packet)
            if lost is not None:
                out += self._answer_nack(ep.id, *lost, now)
                continue
            media_ssrc = rtcp.keyframe_request_ssrc(pt, fmt, packet)
            if media_ssrc is None:
                continue  # reports and other feedback are consumed here
            source = self._source_for(ep.id, media_ssrc, now)
            if source is None:
                continue
            out += self._request_keyframe(source, now)
        return out

    def _source_for(self, subscriber: str, ssrc: int, now: float, target: bool = False) -> tuple[str, int] | None:
        """The publisher stream a subscriber's SSRC comes from: for a simulcast track, the layer
        it gets now (``target``: the one it should get)."""
        source = self.reverse.get((subscriber, ssrc))
        sim = self.simulcast.get(source) if source else None
        if sim is None:
            return source
        route = self.routes[source][subscriber]
        index = sim.wanted(route, now) if target or route.current is None else route.current
        if index is None:
            return None  # its video is paused
        return (source[0], sim.ssrcs[index]) if sim.ssrcs[index] is not None else None

    def _request_keyframe(self, source: tuple[str, int], now: float) -> list[tuple[bytes, tuple]]:
        throttle = self.keyframes.setdefault(source, Keyframes())
        if throttle.throttled(now):
            self.stats["pli_throttled"] += 1  # at most one per track per 500 ms
            return []
        publisher = self.endpoints.get(source[0])
        if publisher is None or not publisher.ready:
            return []
        throttle.sent(now)
        self.stats["pli_sent"] += 1
        return [(publisher.tx.protect_rtcp(rtcp.pli(source[1])), publisher.addr)]

    def keyframes_for(self, subscriber: str, now: float) -> list[tuple[bytes, tuple]]:
        """Keyframe requests for every video track routed to a subscriber that just became able
        to receive: a decoder can start only on a keyframe, and encoders send them on request."""
        sub = self.endpoints.get(subscriber)
        if sub is None or not sub.ready:
            return []
        out = []
        for source, routes in list(self.routes.items()):
            route = routes.get(subscriber)
            if route is not None and route.video:
                layer = self._source_for(subscriber, route.ssrc, now, target=True)
                if layer is not None:
                    out += self._request_keyframe(layer, now)
        return out

    def _pass_remb(self, subscriber: str, bitrate: int, ssrcs: list[int], now: float) -> list[tuple[bytes, tuple]]:
        """Without simulcast one stream serves everyone, so the publisher is told the lowest
        estimate among its subscribers (the slowest sets the pace)."""
        out = []
        for ssrc in ssrcs:
            source = self.reverse.get((subscriber, ssrc))
            if source is None:
                continue
            estimates = self.estimates.setdefault(source, {})
            estimates[subscriber] = bitrate
            if source in self.simulcast:
                continue  # its layers serve subscribers apart: none sets its publisher's pace
            # Forget the estimates of subscribers that no longer receive this track.
            routes = self.routes.get(source, {})
            for gone in [s for s in estimates if s not in routes]:
                del estimates[gone]
            publisher = self.endpoints.get(source[0])
            if publisher is None or not publisher.ready or now - self.last_remb.get(source, float("-inf")) < REMB_INTERVAL:
                continue
            # Of a video: the lowest of those whose video plays, unless far under the best (see
            # REMB_FOLLOW). Of audio: the lowest (a browser applies any REMB to its whole
            # connection, and following a weak link's there keeps that link's trials from flooding it).
            video = routes[subscriber].video
            playing = [b for s, b in estimates.items() if routes[s].cap >= 0]
            if not playing:
                continue
            best = max(playing)
            low = min(b for b in playing if not video or b * REMB_FOLLOW >= best)
            self.last_remb[source] = now
            out.append((publisher.tx.protect_rtcp(rtcp.remb(low, [source[1]])), publisher.addr))
            self.stats["remb_sent"] += 1
        return out

    def _forward_sr(self, publisher: str, packet: bytes) -> list[tuple[bytes, tuple]]:
        """Each subscriber of the stream gets the publisher's sender report as its own (lip sync, RTT)."""
        ssrc = struct.unpack_from("!I", packet, 4)[0]
        layer = self.layer_of.get((publisher, ssrc))
        out = []
        for dst_id, route in self.routes.get((publisher, layer[0] if layer else ssrc), {}).items():
            dst = self.endpoints.get(dst_id)
            if dst is None or not dst.ready or (layer is not None and route.current != layer[1]):
                continue
            out.append((dst.tx.protect_rtcp(rtcp.translate_sr(packet, route.ssrc, route.ts_delta)), dst.addr))
            self.stats["sr_forwarded"] += 1
        return out

    def _answer_nack(self, subscriber: str, media_ssrc: int, lost: list[int], now: float) -> list[tuple[bytes, tuple]]:
        """Resend what a subscriber lost from the cache, rather than asking the publisher (which
        costs it a round trip and every other subscriber the duplicate); what never reached us
        is asked of the publisher, whose retransmission then reaches everyone."""
        track = self.reverse.get((subscriber, media_ssrc))
        route = self.routes.get(track, {}).get(subscriber) if track else None
        source = self._source_for(subscriber, media_ssrc, now)
        if route is None or source is None:
            return []
        layered = track in self.simulcast
        single = self.single.get(track)
        codec = self.simulcast[track].codec if layered else single[0] if single is not None else None
        cache = self.cache.get(source) or Cache()
        out, missing = [], []
        for out_seq in lost:
            if (layered or route.resumed) and (out_seq - route.layer_start) & 0xFFFF >= 0x8000:
                self.stats["nack_missed"] += 1  # sent from another layer, or before a pause: gone with it
                continue
            seq = (out_seq - route.seq_delta) & 0xFFFF
            if route.tdrops is not None:
                seq = route.tdrops.publisher_seq(seq)  # past the frames it was not sent
            cached = cache.get(seq)
            if cached is None:
                self.stats["nack_missed"] += 1
                missing.append(seq)
                continue
            sent = self._send_to(subscriber, route, cached, codec, now, repair=True)
            if sent:
                out.append(sent)
                self.stats["nack_served"] += 1
        return out + self._ask_publisher(source, missing, now)

    def _ask_publisher(self, source: tuple[str, int], seqs: list[int], now: float) -> list[tuple[bytes, tuple]]:
        """A Generic NACK (RFC 4585 6.2.1) to the publisher for packets we never got, each at
        most once per UPSTREAM_HOLD however many subscribers ask."""
        publisher = self.endpoints.get(source[0])
        if not seqs or publisher is None or not publisher.ready:
            return []
        wanted = self.asked.setdefault(source, UpstreamAsks()).to_ask(self.highest.get(source, 0), seqs, now)
        if not wanted:
            return []
        self.stats["nack_upstream"] += 1
        return [(publisher.tx.protect_rtcp(rtcp.nack(source[1], wanted)), publisher.addr)]
