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

from mediaserver.fastpath_ref import rewrite_rtp
from mediaserver.media import rtcp
from mediaserver.media.srtp import SrtpKeys

MTU = 1500  # larger datagrams are never forwarded
PLI_INTERVAL = 0.5  # at most one keyframe request per track per 500 ms
NACK_CACHE = 512  # recent packets kept per track to answer NACKs (about 1 s of 4 Mbps video)
REMB_INTERVAL = 0.5  # the publisher hears the lowest subscriber estimate at most this often per track
UPSTREAM_HOLD = 0.2  # a packet lost before it reached us is asked of its publisher at most once per 200 ms
UPSTREAM_RING = 64  # sequence numbers remembered per track for that
UPSTREAM_MAX = 256  # sequence numbers per NACK sent upstream (it must fit in one datagram)


@dataclass
class Route:
    ssrc: int  # SSRC the subscriber sees
    payload_type: int
    seq_delta: int = 0
    ts_delta: int = 0
    video: bool = False  # a new subscriber of a video track needs a keyframe


@dataclass
class Endpoint:
    id: str
    addr: tuple | None = None
    rx: pylibsrtp.Session | None = None
    tx: pylibsrtp.Session | None = None

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
    last_pli: dict[tuple[str, int], float] = field(default_factory=dict)
    pli_held: set[tuple[str, int]] = field(default_factory=set)  # throttled requests, sent when the window ends
    # (publisher endpoint, publisher SSRC) -> ring of (sequence number, plaintext packet), slot seq % NACK_CACHE
    cache: dict[tuple[str, int], list] = field(default_factory=dict)
    # (subscriber endpoint, SSRC it sees) -> its latest reception report (loss, jitter)
    quality: dict[tuple[str, int], dict] = field(default_factory=dict)
    # (publisher endpoint, publisher SSRC) -> {subscriber: its latest bandwidth estimate in bit/s}
    estimates: dict[tuple[str, int], dict[str, int]] = field(default_factory=dict)
    last_remb: dict[tuple[str, int], float] = field(default_factory=dict)
    # (publisher endpoint, publisher SSRC) -> ring of (sequence number, when it was asked upstream)
    asked: dict[tuple[str, int], list] = field(default_factory=dict)
    # (publisher endpoint, publisher SSRC) -> the highest sequence number received (modulo 2^16)
    highest: dict[tuple[str, int], int] = field(default_factory=dict)
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

    def remove_endpoint(self, eid: str) -> None:
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
        routes = self.routes.get((ep.id, ssrc))
        if routes is None:
            return self._drop("unknown_ssrc")
        self.cache.setdefault((ep.id, ssrc), [None] * NACK_CACHE)[seq % NACK_CACHE] = (seq, plain)
        top = self.highest.get((ep.id, ssrc))
        if top is None or 0 < (seq - top) & 0xFFFF < 0x8000:  # newer, modulo 2^16 (RFC 3550 A.1)
            self.highest[(ep.id, ssrc)] = seq
        out = []
        for dst_id, route in routes.items():
            sent = self._send_to(dst_id, route, plain)
            if sent:
                out.append(sent)
        source = (ep.id, ssrc)
        if source in self.pli_held and now - self.last_pli.get(source, float("-inf")) >= PLI_INTERVAL:
            # A keyframe request the throttle held back (a subscriber ready just after another):
            # sent with the publisher's first packet after the window, not dropped.
            self.stats["pli_deferred"] += 1
            out += self._request_keyframe(source, now)
        return out

    def _send_to(self, dst_id: str, route: Route, plain: bytes) -> tuple[bytes, tuple] | None:
        dst = self.endpoints.get(dst_id)
        if dst is None or not dst.ready:
            self.stats["drop_subscriber_not_ready"] += 1
            return None
        if self.tap is not None:
            self.tap(dst_id, plain)
        pkt = bytearray(plain)
        rewrite_rtp(pkt, route.ssrc, route.seq_delta, route.ts_delta)
        pkt[1] = (pkt[1] & 0x80) | route.payload_type
        protected = dst.tx.protect(bytes(pkt))
        self.stats["rtp_out"] += 1
        self.stats["bytes_out"] += len(protected)
        return protected, dst.addr

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
            source = self.reverse.get((ep.id, media_ssrc))
            if source is None:
                continue
            out += self._request_keyframe(source, now)
        return out

    def _request_keyframe(self, source: tuple[str, int], now: float) -> list[tuple[bytes, tuple]]:
        if now - self.last_pli.get(source, float("-inf")) < PLI_INTERVAL:
            self.stats["pli_throttled"] += 1
            self.pli_held.add(source)
            return []
        publisher = self.endpoints.get(source[0])
        if publisher is None or not publisher.ready:
            return []
        self.last_pli[source] = now
        self.pli_held.discard(source)
        self.stats["pli_sent"] += 1
        return [(publisher.tx.protect_rtcp(rtcp.pli(source[1])), publisher.addr)]

    def keyframes_for(self, subscriber: str, now: float) -> list[tuple[bytes, tuple]]:
        """Keyframe requests for every video track routed to a subscriber that just became able
        to receive: a decoder can start only on a keyframe, and encoders send them on request."""
        sub = self.endpoints.get(subscriber)
        if sub is None or not sub.ready:
            return []
        out = []
        for source, routes in self.routes.items():
            route = routes.get(subscriber)
            if route is not None and route.video:
                out += self._request_keyframe(source, now)
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
            # Forget the estimates of subscribers that no longer receive this track.
            for gone in [s for s in estimates if s not in self.routes.get(source, {})]:
                del estimates[gone]
            publisher = self.endpoints.get(source[0])
            if publisher is None or not publisher.ready or now - self.last_remb.get(source, float("-inf")) < REMB_INTERVAL:
                continue
            self.last_remb[source] = now
            out.append((publisher.tx.protect_rtcp(rtcp.remb(min(estimates.values()), [source[1]])), publisher.addr))
            self.stats["remb_sent"] += 1
        return out

    def _forward_sr(self, publisher: str, packet: bytes) -> list[tuple[bytes, tuple]]:
        """Each subscriber of the stream gets the publisher's sender report as its own (lip sync, RTT)."""
        ssrc = struct.unpack_from("!I", packet, 4)[0]
        out = []
        for dst_id, route in self.routes.get((publisher, ssrc), {}).items():
            dst = self.endpoints.get(dst_id)
            if dst is None or not dst.ready:
                continue
            out.append((dst.tx.protect_rtcp(rtcp.translate_sr(packet, route.ssrc, route.ts_delta)), dst.addr))
            self.stats["sr_forwarded"] += 1
        return out

    def _answer_nack(self, subscriber: str, media_ssrc: int, lost: list[int], now: float) -> list[tuple[bytes, tuple]]:
        """Resend what a subscriber lost from the cache, rather than asking the publisher (which
        costs it a round trip and every other subscriber the duplicate); what never reached us
        is asked of the publisher, whose retransmission then reaches everyone."""
        source = self.reverse.get((subscriber, media_ssrc))
        route = self.routes.get(source, {}).get(subscriber) if source else None
        if route is None:
            return []
        ring = self.cache.get(source, [None] * NACK_CACHE)
        out, missing = [], []
        for out_seq in lost:
            seq = (out_seq - route.seq_delta) & 0xFFFF
            cached = ring[seq % NACK_CACHE]
            if cached is None or cached[0] != seq:
                self.stats["nack_missed"] += 1
                missing.append(seq)
                continue
            sent = self._send_to(subscriber, route, cached[1])
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
        ring = self.asked.setdefault(source, [None] * UPSTREAM_RING)
        top = self.highest.get(source, 0)
        wanted = []
        for seq in seqs:
            if len(wanted) == UPSTREAM_MAX:
                break
            if (top - seq) & 0xFFFF >= NACK_CACHE:
                continue  # older than what we keep (or not sent yet): too late to be worth asking
            slot = ring[seq % UPSTREAM_RING]
            if slot is not None and slot[0] == seq and now - slot[1] < UPSTREAM_HOLD:
                continue
            ring[seq % UPSTREAM_RING] = (seq, now)
            wanted.append(seq)
        if not wanted:
            return []
        self.stats["nack_upstream"] += 1
        return [(publisher.tx.protect_rtcp(rtcp.nack(source[1], wanted)), publisher.addr)]
