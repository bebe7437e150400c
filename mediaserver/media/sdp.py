"""SDP for routed media (RFC 8829 JSEP, RFC 8843 BUNDLE, RFC 5761 rtcp-mux, RFC 8445 ice-lite).

Signaling model (as LiveKit's): each participant has a *publish* peer
connection, where the client offers its tracks and we answer recvonly, and a
*subscribe* peer connection, where we offer the tracks it receives (sendonly)
and the client answers. We are always the DTLS server (``setup:passive`` in
answers, ``actpass`` in offers, which clients answer ``active``).

Offers are parsed with aiortc's SDP parser; what we send is written here.
"""

from __future__ import annotations

import secrets
import zlib
from dataclasses import dataclass, field

from aiortc import sdp as aiortc_sdp

from mediaserver.errors import MediaserverError
from mediaserver.media import twcc
from mediaserver.media.dtls import Fingerprint

# What we route, in preference order: a subscriber gets the publisher's codec.
AUDIO_CODECS = ("opus",)
VIDEO_CODECS = ("VP8", "H264", "VP9")
VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir", "goog-remb")
# RFC 8852: how the encodings of a simulcast track (RFC 8853) name themselves in their packets.
MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"  # RFC 6464
# The ID of the transport-wide sequence numbers we put on what goes to a subscriber (its only
# header extension: mediaserver.media.feedback).
SUBSCRIBER_TWCC_ID = 5
SIMULCAST_CODECS = ("VP8", "H264", "VP9")  # where the forwarder finds keyframes to switch on
MAX_LAYERS = 3


@dataclass(frozen=True)
class Codec:
    name: str  # e.g. "VP8"
    clock_rate: int
    channels: int | None
    payload_type: int
    fmtp: str = ""
    feedback: tuple[str, ...] = ()

    @property
    def rtpmap(self) -> str:
        return f"{self.name}/{self.clock_rate}" + (f"/{self.channels}" if self.channels else "")


@dataclass
class OfferedTrack:
    mid: str
    kind: str  # audio | video
    ssrc: int
    codec: Codec
    stream_id: str
    track_id: str
    rtx_ssrc: int | None = None  # the SSRC its repairs come on (RFC 4588), when RTX is negotiated
    rtx_payload_type: int | None = None
    # Simulcast: its encodings' rids, lowest first (the offer's order); ``ssrc`` is then ours,
    # what routes know the track by: the encodings' SSRCs are learnt from their packets.
    rids: list[str] = field(default_factory=list)


@dataclass
class RemoteDescription:
    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[Fingerprint]
    setup: str | None
    mids: list[str]
    media: list[aiortc_sdp.MediaDescription] = field(default_factory=list)
    raw: list[list[str]] = field(default_factory=list)  # each section's lines (what aiortc does not parse)


def _parse(text: str, expected: str) -> aiortc_sdp.SessionDescription:
    if not isinstance(text, str) or not text.startswith("v=0"):
        raise MediaserverError("invalid_sdp", f"the {expected} is not an SDP description (it must start with v=0)")
    try:
        return aiortc_sdp.SessionDescription.parse(text)
    except Exception as e:  # the parser raises assorted errors on malformed input
        raise MediaserverError("invalid_sdp", f"the {expected} cannot be parsed: {e}") from None


def parse_remote(text: str, expected: str) -> RemoteDescription:
    desc = _parse(text, expected)
    media = [m for m in desc.media if m.kind in ("audio", "video")]
    if not media:
        raise MediaserverError("invalid_sdp", f"the {expected} has no audio or video section")
    first = media[0]
    if first.ice is None or not first.ice.usernameFragment or not first.ice.password:
        raise MediaserverError("invalid_sdp", f"the {expected} has no ICE credentials")
    if first.dtls is None or not first.dtls.fingerprints:
        raise MediaserverError("invalid_sdp", f"the {expected} has no DTLS fingerprint")
    if not all(m.rtcp_mux for m in media if m.port != 0):
        raise MediaserverError("invalid_sdp", "rtcp-mux is required (RFC 5761)")
    fps = [Fingerprint(f.algorithm, f.value) for f in first.dtls.fingerprints]
    if not any(f.algorithm.lower() == "sha-256" for f in fps):
        raise MediaserverError("invalid_sdp", "a sha-256 DTLS fingerprint is required")
    sections: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("m="):
            sections.append([])
        if sections:
            sections[-1].append(line.strip())
    raw = [sec for sec in sections if sec[0][2:].split(" ", 1)[0] in ("audio", "video")]
    return RemoteDescription(
        ice_ufrag=first.ice.usernameFragment,
        ice_pwd=first.ice.password,
        fingerprints=fps,
        setup=first.dtls.role,
        mids=[m.rtp.muxId for m in media],
        media=media,
        raw=raw if len(raw) == len(media) else [[] for _ in media],
    )


def _rids(m: aiortc_sdp.MediaDescription, lines: list[str]) -> list[str]:
    """The encodings a section sends as simulcast (RFC 8853 a=simulcast, RFC 8851 a=rid), in
    the offer's order, first choices only (no alternatives), paused ones ("~") included."""
    sending = {line[6:].split(" ")[0] for line in lines if line.startswith("a=rid:") and " send" in line}
    for line in lines:
        if line.startswith("a=simulcast:"):
            parts = line[len("a=simulcast:"):].split()
            if len(parts) >= 2 and parts[0] == "send":
                rids = [alt.split(",")[0].lstrip("~") for alt in parts[1].split(";")]
                return [r for r in rids if r in sending][:MAX_LAYERS]
    return []


def _pick_codec(m: aiortc_sdp.MediaDescription) -> Codec | None:
    names = AUDIO_CODECS if m.kind == "audio" else VIDEO_CODECS
    for wanted in names:
        for c in m.rtp.codecs:
            if c.mimeType.split("/", 1)[1].lower() != wanted.lower():
                continue
            fmtp = ";".join(f"{k}={v}" if v is not None else k for k, v in (c.parameters or {}).items())
            if wanted == "H264" and "packetization-mode=1" not in fmtp.replace(" ", ""):
                continue  # we forward FU-A (mode 1) streams only
            fb = VIDEO_FEEDBACK if m.kind == "video" else ()
            return Codec(wanted, c.clockRate, c.channels, c.payloadType, fmtp, fb)
    return None


def parse_publish_offer(text: str) -> tuple[RemoteDescription, list[OfferedTrack | None]]:
    """The client's publish offer and, per m-section, the track we accept (None: rejected)."""
    remote = parse_remote(text, "offer")
    tracks: list[OfferedTrack | None] = []
    for m, lines in zip(remote.media, remote.raw):
        if m.port == 0 or m.direction in ("recvonly", "inactive"):
            tracks.append(None)
            continue
        codec = _pick_codec(m)
        if codec is None:
            raise MediaserverError(
                "unsupported_codec",
                f"the {m.kind} section offers none of {', '.join(AUDIO_CODECS if m.kind == 'audio' else VIDEO_CODECS)}",
            )
        rtx = {g.items[1] for g in m.ssrc_group if g.semantic == "FID" and len(g.items) > 1}
        primary = [s for s in m.ssrc if s.ssrc not in rtx]
        rtx_pt = next((c.payloadType for c in m.rtp.codecs if c.mimeType.lower().endswith("/rtx")
                       and str((c.parameters or {}).get("apt")) == str(codec.payload_type)), None)
        rids = _rids(m, lines) if m.kind == "video" and codec.name in SIMULCAST_CODECS and sdes_ids(m) else []
        if rids:
            msid = (m.msid or f"- {m.rtp.muxId}").split()
            tracks.append(OfferedTrack(
                mid=m.rtp.muxId, kind=m.kind, ssrc=zlib.crc32(f"simulcast/{m.rtp.muxId}/{msid[-1]}".encode()),
                codec=codec, stream_id=msid[0], track_id=msid[1] if len(msid) > 1 else msid[0],
                rtx_payload_type=rtx_pt if sdes_ids(m)[2] else None, rids=rids,  # RTX is told apart by its repaired rid
            ))
            continue
        if not primary:
            raise MediaserverError("invalid_sdp", f"the {m.kind} section (mid {m.rtp.muxId}) announces no SSRC")
        msid = (m.msid or primary[0].msid or f"- {m.rtp.muxId}").split()
        rtx_ssrc = next((g.items[1] for g in m.ssrc_group if g.semantic == "FID" and len(g.items) > 1
                         and g.items[0] == primary[0].ssrc), None)
        tracks.append(
            OfferedTrack(
                mid=m.rtp.muxId,
                kind=m.kind,
                ssrc=primary[0].ssrc,
                codec=codec,
                stream_id=msid[0],
                track_id=msid[1] if len(msid) > 1 else msid[0],
                # Repairs are taken only on an SSRC the offer names for them, in a payload type it maps.
                rtx_ssrc=rtx_ssrc if rtx_pt is not None else None,
                rtx_payload_type=rtx_pt if rtx_ssrc is not None else None,
            )
        )
    return remote, tracks


def sdes_ids(m: aiortc_sdp.MediaDescription) -> tuple[int, int, int] | None:
    """The section's mid, rid and repaired-rid extension IDs (0: repaired rid not offered);
    None without mid and rid."""
    ids = {e.uri: e.id for e in m.rtp.headerExtensions}
    if MID_URI not in ids or RID_URI not in ids:
        return None
    return ids[MID_URI], ids[RID_URI], ids.get(RRID_URI, 0)


def simulcast_extensions(remote: RemoteDescription, tracks: list[OfferedTrack | None]) -> tuple[int, int, int] | None:
    """The mid, rid and repaired-rid IDs of the offer's simulcast sections (one transport: the
    same in each); None when it has none."""
    found = {sdes_ids(m) for m, t in zip(remote.media, tracks) if t is not None and t.rids}
    return found.pop() if len(found) == 1 else None


def twcc_extension(remote: RemoteDescription, tracks: list[OfferedTrack | None]) -> int | None:
    """The header extension ID the offer numbers packets with for transport-wide congestion
    control, when every accepted section offers it with the same ID (BUNDLE shares one
    transport, so one numbering); else None (no feedback)."""
    ids = set()
    for m, t in zip(remote.media, tracks):
        if t is None:
            continue
        found = [e.id for e in m.rtp.headerExtensions if e.uri == twcc.URI]
        if not found:
            return None
        ids.add(found[0])
    return ids.pop() if len(ids) == 1 else None


def takes_twcc(answer: RemoteDescription) -> bool:
    """Whether a subscriber's answer takes our transport-wide sequence numbers (every section
    it accepts names the extension with our ID)."""
    active = [m for m in answer.media if m.port != 0 and m.direction != "inactive"]
    return bool(active) and all(
        any(e.uri == twcc.URI and e.id == SUBSCRIBER_TWCC_ID for e in m.rtp.headerExtensions) for m in active
    )


def audio_level_extension(remote: RemoteDescription, tracks: list[OfferedTrack | None]) -> int | None:
    """The header extension ID the offer's audio carries its level in (RFC 6464), when every
    accepted audio section offers it with the same ID (one transport: one ID); else None."""
    ids = set()
    for m, t in zip(remote.media, tracks):
        if t is None or t.kind != "audio":
            continue
        found = [e.id for e in m.rtp.headerExtensions if e.uri == AUDIO_LEVEL_URI]
        if not found:
            return None
        ids.add(found[0])
    return ids.pop() if len(ids) == 1 else None


def _session_head(version: int, mids: list[str]) -> list[str]:
    return [
        "v=0",
        f"o=mediaserver {secrets.randbelow(2**62)} {version} IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=ice-lite",
        f"a=group:BUNDLE {' '.join(mids)}",
        "a=msid-semantic: WMS *",
    ]


def _transport_lines(ufrag: str, pwd: str, fp: Fingerprint, setup: str, host: str, port: int) -> list[str]:
    return [
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:{fp.algorithm} {fp.value}",
        f"a=setup:{setup}",
        f"a=candidate:1 1 udp 2130706431 {host} {port} typ host",
        "a=end-of-candidates",
    ]


def _codec_lines(c: Codec) -> list[str]:
    lines = [f"a=rtpmap:{c.payload_type} {c.rtpmap}"]
    lines += [f"a=rtcp-fb:{c.payload_type} {fb}" for fb in c.feedback]
    if c.fmtp:
        lines.append(f"a=fmtp:{c.payload_type} {c.fmtp}")
    return lines


def _ip(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def publish_answer(
    remote: RemoteDescription, tracks: list[OfferedTrack | None], *, ufrag: str, pwd: str, fingerprint: Fingerprint,
    host: str, port: int,
) -> str:
    accepted = [t.mid for t in tracks if t is not None]
    lines = _session_head(1, accepted)
    ext = twcc_extension(remote, tracks)
    level = audio_level_extension(remote, tracks)
    for m, t in zip(remote.media, tracks):
        if t is None:
            lines += [f"m={m.kind} 0 UDP/TLS/RTP/SAVPF {m.fmt[0] if m.fmt else 0}", f"c=IN {_ip(host)} {host}", f"a=mid:{m.rtp.muxId}", "a=inactive"]
            continue
        pts = f"{t.codec.payload_type}" + (f" {t.rtx_payload_type}" if t.rtx_payload_type is not None else "")
        lines += [
            f"m={t.kind} {port} UDP/TLS/RTP/SAVPF {pts}",
            f"c=IN {_ip(host)} {host}",
            f"a=mid:{t.mid}",
            "a=recvonly",
            "a=rtcp-mux",
            *_transport_lines(ufrag, pwd, fingerprint, "passive", host, port),
        ]
        if ext is not None:
            # The publisher numbers its packets and we say when each arrived: its own
            # estimator sets its bitrate (draft-holmer-rmcat-transport-wide-cc-extensions-01).
            lines.append(f"a=extmap:{ext} {twcc.URI}")
        if level is not None and t.kind == "audio":
            # Its packets say how loud they are: who speaks (mediaserver.media.speakers).
            lines.append(f"a=extmap:{level} {AUDIO_LEVEL_URI}")
        if t.rids:
            mid_id, rid_id, rrid_id = sdes_ids(m)
            lines += [f"a=extmap:{mid_id} {MID_URI}", f"a=extmap:{rid_id} {RID_URI}"]
            if rrid_id:
                lines.append(f"a=extmap:{rrid_id} {RRID_URI}")
            lines += [f"a=rid:{r} recv" for r in t.rids] + [f"a=simulcast:recv {';'.join(t.rids)}"]
        lines += _codec_lines(t.codec)
        if ext is not None:
            lines.append(f"a=rtcp-fb:{t.codec.payload_type} transport-cc")
        if t.rtx_payload_type is not None:
            lines += [f"a=rtpmap:{t.rtx_payload_type} rtx/{t.codec.clock_rate}", f"a=fmtp:{t.rtx_payload_type} apt={t.codec.payload_type}"]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class OutgoingTrack:
    """A section of a subscriber's offer: a track it receives, or (``active`` false) a section whose
    track has gone; those stay, inactive, so m-lines keep their order across renegotiations."""

    mid: str
    kind: str
    ssrc: int
    codec: Codec
    stream_id: str
    track_id: str
    active: bool = True


def rtx_payload_type(payload_type: int) -> int:
    """The payload type we offer a subscriber RTX on (RFC 4588) for a video codec's."""
    return next(p for p in (97, 99, 101, 123) if p != payload_type)


def rtx_ssrc(ssrc: int) -> int:
    """The SSRC of the RTX stream that repairs ``ssrc`` towards a subscriber."""
    return (ssrc + 1) & 0xFFFFFFFF


def answered_rtx(remote: RemoteDescription) -> dict[str, int]:
    """mid -> the RTX payload type a subscriber's answer takes (apt naming one of its codecs)."""
    out = {}
    for m in remote.media:
        codecs = {c.payloadType for c in m.rtp.codecs if not c.mimeType.lower().endswith("/rtx")}
        for c in m.rtp.codecs:
            if c.mimeType.lower().endswith("/rtx") and str((c.parameters or {}).get("apt")) in {str(p) for p in codecs}:
                out[m.rtp.muxId] = c.payloadType
    return out


def subscribe_offer(
    slots: list[OutgoingTrack], *, version: int, ufrag: str, pwd: str, fingerprint: Fingerprint, host: str, port: int,
) -> str:
    """Our offer to a subscriber. Video comes with RTX (RFC 4588): what it lost is resent on a
    stream of its own, so a repair is told from the original."""
    lines = _session_head(version, [s.mid for s in slots])
    for s in slots:
        rtx = rtx_payload_type(s.codec.payload_type) if s.kind == "video" else None
        lines += [
            f"m={s.kind} {port} UDP/TLS/RTP/SAVPF {s.codec.payload_type}" + (f" {rtx}" if rtx else ""),
            f"c=IN {_ip(host)} {host}",
            f"a=mid:{s.mid}",
            "a=sendonly" if s.active else "a=inactive",
            "a=rtcp-mux",
        ]
        if s.active:
            lines.append(f"a=msid:{s.stream_id} {s.track_id}")
        lines += [*_transport_lines(ufrag, pwd, fingerprint, "actpass", host, port), *_codec_lines(s.codec)]
        # Transport-wide feedback on what we send: our own estimate of its link (mediaserver.media.bwe).
        lines += [f"a=extmap:{SUBSCRIBER_TWCC_ID} {twcc.URI}", f"a=rtcp-fb:{s.codec.payload_type} transport-cc"]
        if rtx:
            lines += [f"a=rtpmap:{rtx} rtx/{s.codec.clock_rate}", f"a=fmtp:{rtx} apt={s.codec.payload_type}"]
        if s.active:
            if rtx:
                lines.append(f"a=ssrc-group:FID {s.ssrc} {rtx_ssrc(s.ssrc)}")
            lines += [f"a=ssrc:{s.ssrc} cname:mediaserver", f"a=ssrc:{s.ssrc} msid:{s.stream_id} {s.track_id}"]
            if rtx:
                lines += [f"a=ssrc:{rtx_ssrc(s.ssrc)} cname:mediaserver", f"a=ssrc:{rtx_ssrc(s.ssrc)} msid:{s.stream_id} {s.track_id}"]
    return "\r\n".join(lines) + "\r\n"
