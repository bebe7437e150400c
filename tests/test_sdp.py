"""What we answer a publisher: transport-wide congestion control and RTX when offered, the
way Chrome offers them (RFC 8285 extmap, draft-holmer-rmcat-transport-wide-cc-extensions-01,
RFC 4588)."""

from __future__ import annotations

from mediaserver.media import sdp, twcc
from mediaserver.media.dtls import Fingerprint

FP = Fingerprint("sha-256", ":".join(["AB"] * 32))


def chrome_offer(audio_ext: int | None = 3, video_ext: int | None = 3, rtx: bool = True) -> str:
    lines = ["v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0 1", "a=msid-semantic: WMS s"]
    common = ["c=IN IP4 0.0.0.0", "a=ice-ufrag:abcd", "a=ice-pwd:abcdefghijklmnopqrstuvwx", f"a=fingerprint:sha-256 {FP.value}",
              "a=setup:actpass", "a=sendonly", "a=rtcp-mux", "a=msid:s t"]
    lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 111", "a=mid:0", *common, "a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level"]
    if audio_ext:
        lines.append(f"a=extmap:{audio_ext} {twcc.URI}")
    lines += ["a=rtpmap:111 opus/48000/2", "a=rtcp-fb:111 transport-cc", "a=fmtp:111 minptime=10;useinbandfec=1", "a=ssrc:1001 cname:c"]
    lines += ["m=video 9 UDP/TLS/RTP/SAVPF 96 97" + (" 98" if rtx else ""), "a=mid:1", *common]
    if video_ext:
        lines.append(f"a=extmap:{video_ext} {twcc.URI}")
    lines += ["a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 transport-cc", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli",
              "a=rtpmap:97 H264/90000", "a=fmtp:97 packetization-mode=1;profile-level-id=42e01f"]
    if rtx:
        lines += ["a=rtpmap:98 rtx/90000", "a=fmtp:98 apt=96", "a=ssrc-group:FID 2001 2002", "a=ssrc:2002 cname:c"]
    lines += ["a=ssrc:2001 cname:c"]
    return "\r\n".join(lines) + "\r\n"


def answer(offer: str) -> tuple[str, list]:
    remote, tracks = sdp.parse_publish_offer(offer)
    return sdp.publish_answer(remote, tracks, ufrag="u", pwd="p" * 24, fingerprint=FP, host="127.0.0.1", port=5000), tracks


def section(text: str, kind: str) -> list[str]:
    out, inside = [], False
    for line in text.split("\r\n"):
        if line.startswith("m="):
            inside = line.startswith(f"m={kind}")
        if inside:
            out.append(line)
    return out


def test_transport_cc_and_rtx_are_answered_when_offered():
    text, tracks = answer(chrome_offer())
    audio, video = section(text, "audio"), section(text, "video")
    for lines, pt in ((audio, 111), (video, 96)):
        assert f"a=extmap:3 {twcc.URI}" in lines and f"a=rtcp-fb:{pt} transport-cc" in lines
    # Audio says how loud it is (RFC 6464: who speaks); only what we use is taken.
    assert f"a=extmap:1 {sdp.AUDIO_LEVEL_URI}" in audio and not any("ssrc-audio-level" in line for line in video)
    assert video[0] == "m=video 5000 UDP/TLS/RTP/SAVPF 96 98"
    assert "a=rtpmap:98 rtx/90000" in video and "a=fmtp:98 apt=96" in video
    assert (tracks[1].ssrc, tracks[1].rtx_ssrc, tracks[1].rtx_payload_type) == (2001, 2002, 98)
    assert tracks[0].rtx_ssrc is None
    # What the answer says is what a browser would parse back (aiortc's parser here).
    remote = sdp.parse_remote(text, "answer")
    assert [e.id for m in remote.media for e in m.rtp.headerExtensions] == [3, 1, 3]


def test_no_feedback_unless_every_section_numbers_packets_alike():
    for offer in (chrome_offer(audio_ext=None), chrome_offer(video_ext=5)):
        text, _ = answer(offer)
        assert "transport-cc" not in text and twcc.URI not in text
        remote, tracks = sdp.parse_publish_offer(offer)
        assert sdp.twcc_extension(remote, tracks) is None


def test_rtx_needs_both_its_payload_type_and_its_ssrc():
    text, tracks = answer(chrome_offer(rtx=False))
    assert "rtx" not in text and tracks[1].rtx_ssrc is None
    # An rtx payload type for another codec (apt=97, H264) does not repair the VP8 we take.
    offer = chrome_offer().replace("a=fmtp:98 apt=96", "a=fmtp:98 apt=97")
    text, tracks = answer(offer)
    assert "rtx" not in text and tracks[1].rtx_ssrc is None and tracks[1].rtx_payload_type is None


def test_subscribers_are_offered_rtx_for_video():
    codec = sdp.Codec("VP8", 90000, None, 96, "", sdp.VIDEO_FEEDBACK)
    opus = sdp.Codec("opus", 48000, 2, 111)
    slots = [sdp.OutgoingTrack("0", "audio", 5, opus, "s", "a"), sdp.OutgoingTrack("1", "video", 7, codec, "s", "v")]
    text = sdp.subscribe_offer(slots, version=1, ufrag="u", pwd="p" * 24, fingerprint=FP, host="127.0.0.1", port=5000)
    audio, video = section(text, "audio"), section(text, "video")
    assert not any("rtx" in line for line in audio)
    assert video[0] == "m=video 5000 UDP/TLS/RTP/SAVPF 96 97" and "a=fmtp:97 apt=96" in video
    assert "a=ssrc-group:FID 7 8" in video and "a=ssrc:8 cname:mediaserver" in video
    # An answer that takes it names it; one that does not, does not.
    answer = text.replace("a=sendonly", "a=recvonly").replace("a=setup:actpass", "a=setup:active")
    assert sdp.answered_rtx(sdp.parse_remote(answer, "answer")) == {"1": 97}
    without = answer.replace(" 96 97", " 96").replace("a=rtpmap:97 rtx/90000\r\n", "").replace("a=fmtp:97 apt=96\r\n", "")
    assert sdp.answered_rtx(sdp.parse_remote(without, "answer")) == {}
