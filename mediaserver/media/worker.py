"""MediaWorker: one UDP port carrying ICE-lite, DTLS-SRTP and forwarded media for its sessions.

Packets are demultiplexed by first byte (RFC 7983): STUN and DTLS are handled
here in Python; RTP/RTCP go to the forwarder. With the fast path (the default on
IPv4) a C thread owns the socket, forwards RTP/RTCP itself and hands STUN and
DTLS up through an eventfd; otherwise the asyncio loop receives everything and
the pure-Python reference forwards. A transport is one peer connection of one
participant (its publish or its subscribe side).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Iterable

from mediaserver._fastpath import FastPath
from mediaserver.errors import MediaserverError
from mediaserver.media.rtp import KIND_DTLS, KIND_RTCP, KIND_RTP, KIND_STUN, classify
from mediaserver.ids import new_id
from mediaserver.media import sdp
from mediaserver.media.adaptation import INTERVAL as ADAPT_INTERVAL, Adaptation, RouteInfo
from mediaserver.media.bwe import Estimate
from mediaserver.media.dtls import DtlsServer, ServerCertificate
from mediaserver.media.forwarder import MAX_LAYER, Forwarder, Route
from mediaserver.media.ice import CONSENT_TIMEOUT, AllowedNetworks, IceCredentials, answer_binding
from mediaserver.media.speakers import Speakers
from mediaserver.media.srtp import SrtpKeys
from mediaserver.media.temporal import MAX_TEMPORAL

log = logging.getLogger(__name__)
SOCKET_BUFFER = 4 * 1024 * 1024


@dataclass
class Transport:
    id: str
    participant_id: str
    role: str  # publish | subscribe | relay (a leg to another worker: keys from the control plane, no ICE/DTLS)
    ice: IceCredentials = field(default_factory=IceCredentials)
    remote: sdp.RemoteDescription | None = None
    addr: tuple | None = None  # the selected pair's remote address: where media goes
    seen: dict = field(default_factory=dict)  # remote address -> its latest valid check
    consent_at: float = 0.0
    dtls: DtlsServer | None = None
    state: str = "new"  # new -> checking -> connected | failed; closed
    tracks: list[sdp.OfferedTrack] = field(default_factory=list)  # publish side
    version: int = 0  # subscribe side: offer version
    offered: dict = field(default_factory=dict)  # subscribe side: mid -> the OutgoingTrack offered


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, worker: "MediaWorker"):
        self.worker = worker

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            self.worker.datagram_received(data, addr)
        except Exception:  # one bad packet must never stop the port
            self.worker.counts["drop_error"] += 1
            log.exception("packet from %s not handled", addr)


class PacketTap:
    """Writes the first ``limit`` RTP packets the reference forwarder sends on, SRTP removed, one
    JSON line each (receiver, payload type, marker, payload in hex), to a file of its own in
    ``directory`` (media_tap_dir): to see what the server sees, e.g. of encrypted frames."""

    def __init__(self, directory: str, limit: int = 5000):
        import os

        os.makedirs(directory, exist_ok=True)
        self.path = os.path.join(directory, f"tap-{os.getpid()}-{id(self):x}.jsonl")
        self.left = limit

    def __call__(self, receiver: str, plain: bytes) -> None:
        if self.left <= 0:
            return
        self.left -= 1
        import json

        header = 12 + 4 * (plain[0] & 0x0F)  # (header extensions are not negotiated)
        line = {"to": receiver, "pt": plain[1] & 0x7F, "marker": bool(plain[1] & 0x80), "payload": plain[header:].hex()}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


class MediaWorker:
    def __init__(
        self,
        *,
        bind_host: str = "127.0.0.1",
        port: int = 0,
        advertised_host: str | None = None,
        allowed_networks: Iterable[str] = ("127.0.0.0/8", "::1/128"),
        clock: Callable[[], float] = time.monotonic,
        on_state: Callable[[Transport], None] | None = None,
        fastpath: bool = True,
        tap_dir: str | None = None,
        gso: bool = True,
        send_threads: int = 1,
    ):
        self.bind_host = bind_host
        self.requested_port = port
        self.advertised_host = advertised_host or bind_host
        self.allowed = AllowedNetworks(allowed_networks)
        self.clock = clock
        self.on_state = on_state
        self.cert = ServerCertificate()
        # The fast path speaks IPv4 (its endpoint keys are address:port in 48 bits).
        self.fast = fastpath and ipaddress.ip_address(socket.gethostbyname(bind_host)).version == 4
        self.forwarder: Forwarder | FastPath = FastPath(gso=gso, threads=send_threads) if self.fast else Forwarder()
        if tap_dir and not self.fast:
            self.forwarder.tap = PacketTap(tap_dir)
        self.counts: Counter = Counter()  # the slow path's own (STUN, DTLS, errors)
        self.transports: dict[str, Transport] = {}
        self._by_ufrag: dict[str, Transport] = {}
        self._by_addr: dict[tuple, Transport] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._efd: int | None = None
        # What each subscriber's link carries (mediaserver.media.adaptation), from the routes:
        # (src, src SSRC, dst) -> [out SSRC, video, simulcast layers, the layer it asked for].
        self.adaptation = Adaptation()
        self.speakers = Speakers()  # who speaks, from the audio levels publishers send (RFC 6464)
        self.links: dict[str, Estimate] = {}  # subscriber transport -> our estimate of its link (its TWCC feedback)
        self._routes: dict[tuple[str, int, str], list] = {}
        self.adaptation_events: deque[dict] = deque(maxlen=1000)
        self._adapting: asyncio.Task | None = None

    # Lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._adapting = asyncio.ensure_future(self._adapt_loop())
        if self.fast:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._tune(sock)
            sock.bind((self.bind_host, self.requested_port))
            sock.setblocking(False)
            self._sock = sock
            self._efd = self.forwarder.attach(sock.fileno())
            self.forwarder.check_consent = True
            self._thread = threading.Thread(target=self.forwarder.run, name="mediaserver-fastpath", daemon=True)
            self._thread.start()
            loop.add_reader(self._efd, self._slow_path)
            return
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.bind_host, self.requested_port)
        )
        self._tune(self._udp.get_extra_info("socket"))

    @staticmethod
    def _tune(sock) -> None:
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            # Bursts from many senders overflow the default (~200 KB) buffer and the kernel drops
            # packets; the kernel caps this at net.core.rmem_max/wmem_max.
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)

    def _slow_path(self) -> None:
        """STUN and DTLS the fast path handed up."""
        for data, addr in self.forwarder.take_slow():
            try:
                self.datagram_received(data, addr)
            except Exception:  # one bad packet must never stop the port
                self.counts["drop_error"] += 1
                log.exception("packet from %s not handled", addr)

    @property
    def port(self) -> int:
        if self._sock is not None:
            return self._sock.getsockname()[1]
        assert self._udp is not None, "start() first"
        return self._udp.get_extra_info("sockname")[1]

    @property
    def stats(self) -> Counter:
        """Every counter: the forwarder's and the slow path's."""
        return self.forwarder.stats + self.counts

    def close(self) -> None:
        if self._adapting is not None:
            self._adapting.cancel()
            self._adapting = None
        if self._udp is not None:
            self._udp.close()
        if self._thread is not None:
            self.forwarder.stop()
            try:
                asyncio.get_running_loop().remove_reader(self._efd)
            except RuntimeError:
                pass  # no loop running any more
            self._thread.join(timeout=2)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # Transports --------------------------------------------------------------------

    def create_transport(self, participant_id: str, role: str) -> Transport:
        t = Transport(new_id("tr"), participant_id, role)
        self.transports[t.id] = t
        self._by_ufrag[t.ice.ufrag] = t
        self.forwarder.add_endpoint(t.id)
        return t

    def relay(self, peer: tuple[str, int], keys: SrtpKeys) -> Transport:
        """The leg to (or from) another worker at ``peer``: one per peer worker, shared by every
        session whose media crosses between the two. Its SRTP keys come from the control plane,
        which gives the other side the mirror image; there is no ICE or DTLS on it, and consent
        never lapses. Called again (a worker restarted), it takes the new keys."""
        peer = (socket.gethostbyname(peer[0]), int(peer[1]))
        t = self._by_addr.get(peer)
        if t is None or t.role != "relay":
            t = Transport(new_id("relay"), "", "relay")
            self.transports[t.id] = t
            self.forwarder.add_endpoint(t.id)
            t.addr = peer
            self._by_addr[peer] = t
            self.forwarder.set_address(t.id, peer)
        t.consent_at = float("inf")
        if self.fast:
            self.forwarder.set_consent(t.id, 1e18)
        self.forwarder.set_keys(t.id, keys)
        self._set_state(t, "connected")
        return t

    def close_transport(self, tid: str) -> None:
        t = self.transports.pop(tid, None)
        if t is None:
            return
        self._by_ufrag.pop(t.ice.ufrag, None)
        if t.addr is not None and self._by_addr.get(t.addr) is t:
            del self._by_addr[t.addr]
        self.forwarder.remove_endpoint(tid)
        for key in [k for k in self._routes if tid in (k[0], k[2])]:
            del self._routes[key]
        self._set_state(t, "closed")

    def _transport(self, tid: str) -> Transport:
        t = self.transports.get(tid)
        if t is None:
            raise MediaserverError("not_found", f"no media transport {tid}")
        return t

    def publish(self, tid: str, offer: str) -> str:
        """Take a publish offer; return our answer."""
        t = self._transport(tid)
        remote, tracks = sdp.parse_publish_offer(offer)
        self._set_remote(t, remote)
        t.tracks = [x for x in tracks if x is not None]
        self.forwarder.set_twcc(t.id, sdp.twcc_extension(remote, tracks) or 0)
        self.forwarder.set_audio_level(t.id, sdp.audio_level_extension(remote, tracks) or 0)
        sdes = sdp.simulcast_extensions(remote, tracks)
        if sdes is not None:
            self.forwarder.set_sdes(t.id, *sdes)
        for x in t.tracks:
            if x.rtx_ssrc is not None:
                self.forwarder.set_rtx(t.id, x.rtx_ssrc, x.ssrc)
            if x.rids and sdes is not None:
                self.forwarder.add_simulcast(t.id, x.ssrc, x.mid, x.rids, x.codec.name)
            elif x.kind == "video":  # one stream: paused for a subscriber, it resumes at a keyframe
                self.forwarder.set_codec(t.id, x.ssrc, x.codec.name)
        return sdp.publish_answer(
            remote, tracks, ufrag=t.ice.ufrag, pwd=t.ice.pwd, fingerprint=self.cert.fingerprint,
            host=self.advertised_host, port=self.port,
        )

    def subscribe_offer(self, tid: str, slots: list) -> str:
        t = self._transport(tid)
        t.version += 1
        t.offered = {s.mid: s for s in slots}
        return sdp.subscribe_offer(
            slots, version=t.version, ufrag=t.ice.ufrag, pwd=t.ice.pwd, fingerprint=self.cert.fingerprint,
            host=self.advertised_host, port=self.port,
        )

    def subscribe_answer(self, tid: str, answer: str) -> None:
        t = self._transport(tid)
        remote = sdp.parse_remote(answer, "answer")
        if remote.setup != "client":  # aiortc's parser reports a=setup:active as the "client" role
            raise MediaserverError("invalid_sdp", "the answer must take the DTLS client role (a=setup:active)")
        self._set_remote(t, remote)
        # Numbered packets and feedback, where it takes them: our own estimate of its link.
        self.forwarder.set_twcc_out(tid, sdp.SUBSCRIBER_TWCC_ID if sdp.takes_twcc(remote) else 0)
        rtx = sdp.answered_rtx(remote)
        for mid, s in t.offered.items():
            if s.kind == "video" and s.active:
                # Repairs go as RTX where the subscriber took it, else as the original packet.
                taken = rtx.get(mid) == sdp.rtx_payload_type(s.codec.payload_type)
                self.forwarder.set_rtx_out(tid, s.ssrc, sdp.rtx_ssrc(s.ssrc) if taken else 0, rtx.get(mid, 0) if taken else 0)

    def _set_remote(self, t: Transport, remote: sdp.RemoteDescription) -> None:
        if t.remote is not None and (t.remote.ice_ufrag, t.remote.ice_pwd) != (remote.ice_ufrag, remote.ice_pwd):
            raise MediaserverError("invalid_sdp", "ICE restarts take a new transport")
        t.remote = remote

    def route(self, src_tid: str, src_ssrc: int, dst_tid: str, out_ssrc: int, payload_type: int, video: bool = False,
              layer: int | None = None, priority: int = 0, temporal: int = MAX_TEMPORAL) -> None:
        """``layer``: of a simulcast track, the one it starts on (0 the lowest; None: the top);
        ``priority``: the adaptation's order among the subscriber's videos (higher first);
        ``temporal``: the highest VP8 temporal layer it gets (its frame rate)."""
        top = self._layers(src_tid, src_ssrc) - 1
        layer = top if layer is None else max(0, min(layer, top))
        self.forwarder.set_route(src_tid, src_ssrc, dst_tid, Route(out_ssrc, payload_type, video=video, layer=layer))
        self._routes[(src_tid, src_ssrc, dst_tid)] = [out_ssrc, video, top + 1, layer, priority, MAX_TEMPORAL]
        if video and temporal < MAX_TEMPORAL:
            self.set_layer(src_tid, src_ssrc, dst_tid, None, temporal)
        for pkt, to in self.forwarder.keyframes_for(dst_tid, self.clock()):
            self._send_consented(pkt, to)

    def set_layer(self, src_tid: str, src_ssrc: int, dst_tid: str, layer: int | None, temporal: int | None = None) -> None:
        """Another layer of a simulcast track for one subscriber, from its next keyframe
        (None: the same), and the highest VP8 temporal layer it gets (None: the same), from the
        next frame that allows it."""
        key = (src_tid, src_ssrc, dst_tid)
        if layer is not None:
            for pkt, to in self.forwarder.set_layer(src_tid, src_ssrc, dst_tid, layer, self.clock()):
                self._send_consented(pkt, to)
            if key in self._routes:
                self._routes[key][3] = layer
        if temporal is not None and key in self._routes:
            self._routes[key][5] = temporal = max(0, min(temporal, MAX_TEMPORAL))
            v = self.adaptation.videos.get(key)  # (what the adaptation allows stays the ceiling)
            cap, tcap = (v.cap, min(v.tcap, temporal)) if v is not None else (MAX_LAYER, temporal)
            for pkt, to in self.forwarder.set_cap(src_tid, src_ssrc, dst_tid, cap, self.clock(), tcap):
                self._send_consented(pkt, to)

    def _layers(self, tid: str, ssrc: int) -> int:
        t = self.transports.get(tid)
        found = [x for x in t.tracks if x.ssrc == ssrc] if t is not None else []
        return max(len(found[0].rids), 1) if found else 1

    def unroute(self, src_tid: str, src_ssrc: int, dst_tid: str) -> None:
        self.forwarder.remove_route(src_tid, src_ssrc, dst_tid)
        self._routes.pop((src_tid, src_ssrc, dst_tid), None)

    # Adaptation ----------------------------------------------------------------------

    async def _adapt_loop(self) -> None:
        while True:
            await asyncio.sleep(ADAPT_INTERVAL)
            try:
                self.adapt(self.clock())
            except Exception:  # never the end of adaptation for everyone
                log.exception("adaptation step failed")

    def adapt(self, now: float) -> None:
        """One step of every subscriber's adaptation: caps to the forwarder, events queued (who
        started or stopped speaking among them)."""
        for (src, ssrc), speaking in self.speakers.observe(self.forwarder.audio_levels(), now):
            self.adaptation_events.append({"type": "speaking", "publisher": src, "ssrc": ssrc, "speaking": speaking})
        receivers = {tid for tid, t in self.transports.items() if t.role == "subscribe"}
        routes, audio, heard = [], Counter(), {}
        self.adaptation.measure_temporal(self.forwarder.temporal_bytes())
        for (src, ssrc, dst), (out, video, *_) in self._routes.items():
            if dst in receivers and not video:
                audio[dst] += 1
                heard.setdefault(dst, []).append((src, ssrc))
        # Each subscriber's active speaker, among those it hears: its video ranks after a screen
        # share and before the other cameras (priority: 2 per the track's own rank, 1 for that).
        speaker = {dst: self.speakers.active(streams) for dst, streams in heard.items()}
        for (src, ssrc, dst), (out, video, layers, requested, priority, trequested) in self._routes.items():
            if dst not in receivers or not video:
                continue  # legs to other workers and the recorder get what they are sent
            active = (speaker.get(dst) or ("",))[0] == src
            routes.append(RouteInfo(src, ssrc, dst, out, layers, requested, 2 * priority + active,
                                    self.adaptation.temporal_layers(src, ssrc), trequested))
        for sub, results in self.forwarder.twcc_results().items():  # (read even with no video: they pile up)
            if sub in self.transports:
                self.links.setdefault(sub, Estimate()).update(results)
        for sub in [s for s in self.links if s not in self.transports]:
            del self.links[sub]
        if not routes and not self.adaptation.videos:
            return
        self.adaptation.measure(self.forwarder.layer_bytes(), now)
        # Each subscriber's link: our own estimate where it sends transport-wide feedback, else
        # the one it sends us (REMB).
        estimates = {sub: max(by_track.values()) for sub, by_track in self.forwarder.subscriber_estimates().items()}
        estimates.update({sub: est.bitrate for sub, est in self.links.items() if est.bitrate is not None})
        changes, events = self.adaptation.step(routes, audio, estimates, self.forwarder.quality, now)
        for (src, ssrc, dst), (cap, tcap) in changes.items():
            tcap = min(tcap, self._routes[(src, ssrc, dst)][5])
            for pkt, to in self.forwarder.set_cap(src, ssrc, dst, cap, now, tcap):
                self._send_consented(pkt, to)
        self.adaptation_events.extend(events)

    def take_adaptation_events(self, transport_ids: set[str]) -> list[dict]:
        """The adaptation's events for these subscribers' transports (and who started or stopped
        speaking of these publishers'), in order; others stay."""
        mine = [e for e in self.adaptation_events if _transport_of(e) in transport_ids]
        if mine:
            rest = [e for e in self.adaptation_events if _transport_of(e) not in transport_ids]
            self.adaptation_events.clear()
            self.adaptation_events.extend(rest)
        return mine

    # Packets -------------------------------------------------------------------------

    def _send(self, data: bytes, addr: tuple) -> None:
        if self._sock is not None:
            try:
                self._sock.sendto(data, addr)
            except OSError:  # a full buffer, or an ICMP error pending from a gone client
                self.counts["drop_send"] += 1
            return
        assert self._udp is not None
        self._udp.sendto(data, addr)

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        kind = classify(data)
        if kind == KIND_RTP:
            for pkt, to in self.forwarder.handle_rtp(data, addr, self.clock()):
                self._send_consented(pkt, to)
        elif kind == KIND_RTCP:
            for pkt, to in self.forwarder.handle_rtcp(data, addr, self.clock()):
                self._send_consented(pkt, to)
        elif kind == KIND_STUN:
            self._stun(data, addr)
        elif kind == KIND_DTLS:
            self._dtls(data, addr)
        else:
            self.counts["drop_unknown"] += 1

    def _send_consented(self, pkt: bytes, to: tuple) -> None:
        t = self._by_addr.get(to)
        if t is None or self.clock() - t.consent_at > CONSENT_TIMEOUT:
            self.counts["drop_no_consent"] += 1  # RFC 7675: stop sending when consent lapses
            return
        self._send(pkt, to)

    def _stun(self, data: bytes, addr: tuple) -> None:
        if addr[0] not in self.allowed:
            self.counts["drop_stun_not_allowed"] += 1
            return

        def password_for(ufrag: str) -> str | None:
            # Checks can beat the client's SDP answer to us (it starts ICE as soon as it has
            # answered): answer them anyway, as RFC 8445 section 7.3 requires; MESSAGE-INTEGRITY
            # needs only our password. DTLS waits for the answer's fingerprint.
            t = self._by_ufrag.get(ufrag)
            return t.ice.pwd if t is not None else None

        result = answer_binding(data, addr, password_for)
        if result is None:
            self.counts["drop_stun"] += 1
            return
        t = self._by_ufrag[result.ufrag]
        self._select_pair(t, addr, result.use_candidate)
        self._send(result.response, addr)  # after the address is known: DTLS from it follows at once

    def _select_pair(self, t: Transport, addr: tuple, nominated: bool) -> None:
        """Media goes to the selected pair (RFC 8445 section 7.3.1.5: for a lite agent, the pair
        the controlling agent nominated). Checks on other pairs are answered, but move media only
        when they nominate, or when the current pair has lost consent (RFC 7675); until the
        first nomination the first valid check's address serves."""
        now = self.clock()
        t.seen[addr] = now
        current = t.addr
        lapsed = current is not None and now - t.seen.get(current, 0.0) > CONSENT_TIMEOUT
        if current is None or (addr != current and (nominated or lapsed)):
            if current is not None and self._by_addr.get(current) is t:
                del self._by_addr[current]
            t.addr = addr
            self._by_addr[addr] = t
            self.forwarder.set_address(t.id, addr)
        if t.addr != addr:
            return  # a check on a pair not in use keeps only its own consent
        t.consent_at = now
        if self.fast:
            self.forwarder.set_consent(t.id, t.consent_at)
        if t.state == "new":
            self._set_state(t, "checking")

    def _dtls(self, data: bytes, addr: tuple) -> None:
        t = self._by_addr.get(addr)
        if t is None or t.remote is None:
            self.counts["drop_dtls_no_ice"] += 1  # DTLS only after a valid ICE check from that address
            return
        if t.dtls is None:
            t.dtls = DtlsServer(self.cert, t.remote.fingerprints)
        was_done = t.dtls.done
        for out in t.dtls.feed(data):
            self._send(out, addr)
        if t.dtls.failed and t.state != "failed":
            log.info("transport %s: %s", t.id, t.dtls.failed)
            self._set_state(t, "failed")
        elif t.dtls.done and not was_done:
            self.forwarder.set_keys(t.id, t.dtls.keys)
            self._set_state(t, "connected")
            for pkt, to in self.forwarder.keyframes_for(t.id, self.clock()):
                self._send_consented(pkt, to)

    def _set_state(self, t: Transport, state: str) -> None:
        t.state = state
        if self.on_state is not None:
            self.on_state(t)


def _transport_of(event: dict) -> str:
    """The transport an adaptation event is about: its subscriber's (speaking: its publisher's)."""
    return event["publisher"] if event["type"] == "speaking" else event["subscriber"]
