"""What each subscriber's link carries (issue 12, parts 3 and 4): per subscriber, the simulcast
layer of each video it receives, down to none (audio fallback), and back (video recovery). A
video sent as one stream (a screen share, an end-to-end encrypted camera, a client without
simulcast) has one layer: on or paused.

The signals are the subscriber's own: its receive-side estimate (REMB, delay-based: Chrome's
and aiortc's receivers send it) and the loss in its receiver reports (RFC 3550 6.4.1). The
controller moves layer by layer, the way GCC's loss-based controller moves a bitrate
(draft-ietf-rmcat-gcc-02 section 6: more than 10% lost is congestion, less than 2% is room):

- congested (a new report says more than 10% lost, or the estimate fell well under what is
  being sent: Chrome's receiver drops its estimate to 85% of what arrives when it sees queueing;
  a low estimate alone is no sign, since a receiver's estimate lags what it is sent by seconds):
  the lowest-priority video goes one layer down; a video already on its lowest layer gets a
  warning (``video_disabled_warning``), and is paused if the congestion goes on, or if no clean
  report comes for a few seconds (``video_disabled``): the subscriber keeps its audio. Only
  loss warns or pauses a video sent as one stream: a falling estimate alone (it lags, and a busy
  CPU lowers it too) could cost it all its video, where a simulcast one loses a layer;
- clean for a while (reports under 2%, the estimate not under what is sent): the highest-priority
  video goes one layer up, a paused one back on its lowest (``video_enabled`` once it has stayed
  clean for ``TRIAL`` seconds). A step up that congests is taken back, and the next waits
  twice as long (up to ``MAX_UP_WAIT``): sending the layer is the probe.

A video whose frames carry VP8 temporal layers (TIDs) has more steps: on its lowest layer it
loses frames before its picture, half then three quarters of them (the forwarder's temporal
cap; ``mediaserver.media.temporal``), and gets them back before a layer up; a paused one comes
back on trial at its lowest layer and a quarter of its frames. A falling estimate alone may take
frames from a video sent as one stream too (they come back as cheaply), never its picture.

Plain code over plain data: the media worker feeds it every ``INTERVAL`` and applies the caps
it returns to its forwarder (fast path or reference alike); the events go to the session.
Other subscribers and the publisher are not touched: each route has its own cap, and the
publisher's layers are governed by who wants them (dynacast), not by this.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mediaserver.media.temporal import MAX_TEMPORAL

INTERVAL = 0.5  # seconds between two steps
CONGESTED_LOSS = 0.10  # GCC's thresholds (draft-ietf-rmcat-gcc-02 section 6)
CLEAN_LOSS = 0.02
FALL = 0.95  # an estimate below this share of the previous one has fallen
# ... and names a bottleneck when it is under this share of what is sent. Chrome's receiver sets
# 85% of what arrives when it sees queueing, so on a link that carries what is sent that is 85%
# of it (a busy CPU's delays do that too); behind a bottleneck, 85% of much less.
BOTTLENECK = 0.7
HOLD = 1.0  # after a step down, wait for reports that reflect it
UP_WAIT = 3.0  # clean this long before a step up
FRAMES_UP_WAIT = 1.5  # ... before a step up that gives a playing video frames back
MAX_UP_WAIT = 4.0
TRIAL = 2.0  # a paused video back on is enabled after this long clean
WARNED_HOLD = 4.0  # a warned video with no clean report this long is paused
RELAPSE = 10.0  # struggling again this soon after a warning was lifted: paused at once
RATE_SMOOTHING = 0.3  # weight of the newest interval in a layer's bitrate
UNMEASURED = 300_000  # bit/s assumed for a lowest layer not measured yet
AUDIO = 40_000  # bit/s reserved for each audio stream a subscriber receives


@dataclass
class RouteInfo:
    """One video a subscriber receives, as the worker routes it."""

    publisher: str
    track_ssrc: int
    subscriber: str
    out_ssrc: int  # the SSRC the subscriber sees (its reports name it)
    layers: int  # simulcast encodings (1: a video sent as one stream, on or paused)
    requested: int  # the layer it asked for
    priority: int = 0  # higher first (a screen share, the active speaker)
    temporal: int = 1  # VP8 temporal layers its frames come in (1: none to thin)
    trequested: int = MAX_TEMPORAL  # the temporal layer it asked for (its frame rate: 2 full, 1 half, 0 a quarter)


@dataclass
class _Video:
    cap: int  # the highest layer its link carries now (-1: paused)
    tcap: int = MAX_TEMPORAL  # the highest temporal layer, on its lowest layer
    warned: bool = False
    warned_at: float = 0.0
    lifted_at: float = -1e9  # its warning was last lifted
    paused: bool = False  # paused, or back on trial and not enabled yet
    trial_since: float | None = None


@dataclass
class _Subscriber:
    reports: dict[int, tuple] = field(default_factory=dict)  # out SSRC -> the last report seen
    estimate: int | None = None  # its previous REMB
    clean_report_at: float = -1e9  # its latest report of less than CLEAN_LOSS lost
    clean_reports: int = 0  # such reports in a row
    clean_since: float = 0.0
    changed_at: float = -1e9  # the last step down or up
    up_wait: float = UP_WAIT
    frames_wait: float = FRAMES_UP_WAIT  # (its own: a frame-rate step that fails does not slow layers and trials)
    last_up: float | None = None  # when the last step up was (a congestion soon after takes it back)
    last_up_frames: bool = False  # ... and whether it gave frames back


class Adaptation:
    def __init__(self) -> None:
        self.videos: dict[tuple[str, int, str], _Video] = {}
        self.subscribers: dict[str, _Subscriber] = {}
        self.rates: dict[tuple[str, int], list[float]] = {}  # (publisher, track SSRC) -> bit/s per layer
        self._bytes: dict[tuple[str, int], tuple[list[int], float]] = {}
        self.tshares: dict[tuple[str, int], list[float]] = {}  # -> share of its bitrate up to each temporal layer

    def measure(self, layer_bytes: dict[tuple[str, int], list[int]], now: float) -> None:
        """Each layer's bitrate, from the bytes the forwarder counted since the last call."""
        for key, counts in layer_bytes.items():
            before = self._bytes.get(key)
            self._bytes[key] = (list(counts), now)
            if before is None or now <= before[1]:
                continue
            rates = self.rates.setdefault(key, [0.0] * len(counts))
            for i, (b, a) in enumerate(zip(counts, before[0])):
                rate = max(0, b - a) * 8 / (now - before[1])
                if rate > 0:  # a layer switched off keeps what it last measured
                    rates[i] = rate if rates[i] == 0 else (1 - RATE_SMOOTHING) * rates[i] + RATE_SMOOTHING * rate
        for key in [k for k in self._bytes if k not in layer_bytes]:
            self._bytes.pop(key)
            self.rates.pop(key, None)

    def measure_temporal(self, temporal_bytes: dict[tuple[str, int], list[int]]) -> None:
        """What share of a VP8 track's bitrate its temporal layers take, from the bytes the
        forwarder counted in each (since it started: the shares hardly move)."""
        self.tshares = {}
        for key, counts in temporal_bytes.items():
            total = sum(counts)
            if total:
                self.tshares[key] = [sum(counts[:t + 1]) / total for t in range(len(counts))]

    def temporal_layers(self, publisher: str, track_ssrc: int) -> int:
        """How many temporal layers a track's frames come in (1: none to thin)."""
        shares = self.tshares.get((publisher, track_ssrc))
        return 1 + sum(1 for a, b in zip(shares, shares[1:]) if b > a) if shares else 1

    def _sent(self, r: RouteInfo, v: _Video) -> float:
        rate = self.rate(r.publisher, r.track_ssrc, min(v.cap, r.requested))
        shares = self.tshares.get((r.publisher, r.track_ssrc))
        return rate * shares[min(v.tcap, r.trequested)] if shares else rate

    def rate(self, publisher: str, track_ssrc: int, layer: int) -> float:
        rates = self.rates.get((publisher, track_ssrc), [])
        if layer < len(rates) and rates[layer] > 0:
            return rates[layer]
        known = [r for r in rates[:layer] if r > 0]
        return known[-1] * 3 if known else UNMEASURED  # (a layer up is about three times the one below)

    def step(
        self, routes: list[RouteInfo], audio: dict[str, int], estimates: dict[str, int], quality: dict[tuple[str, int], dict],
        now: float,
    ) -> tuple[dict[tuple[str, int, str], int], list[dict]]:
        """The caps that changed ({(publisher, track SSRC, subscriber): (cap, temporal cap)}) and the events
        ([{"type", "subscriber", "publisher", "ssrc", "reason"}]). ``audio``: audio streams per
        subscriber; ``estimates``: each subscriber's latest REMB; ``quality``: the latest
        receiver report of each (subscriber, SSRC it sees)."""
        changes: dict[tuple[str, int, str], int] = {}
        events: list[dict] = []
        by_sub: dict[str, list[RouteInfo]] = {}
        for r in routes:  # (every video: one sent as one stream has one layer)
            by_sub.setdefault(r.subscriber, []).append(r)
        live = {(r.publisher, r.track_ssrc, r.subscriber) for r in routes}
        for key in [k for k in self.videos if k not in live]:
            del self.videos[key]
        for sid in [s for s in self.subscribers if s not in by_sub]:
            del self.subscribers[sid]
        for sid, rs in by_sub.items():
            self._step_subscriber(sid, rs, audio.get(sid, 0), estimates.get(sid), quality, now, changes, events)
        return changes, events

    def _step_subscriber(self, sid, rs, audio_streams, estimate, quality, now, changes, events) -> None:
        sub = self.subscribers.setdefault(sid, _Subscriber(clean_since=now))
        videos = []
        for r in sorted(rs, key=lambda r: -r.priority):
            key = (r.publisher, r.track_ssrc, r.subscriber)
            v = self.videos.get(key)
            if v is None:
                v = self.videos[key] = _Video(cap=r.layers - 1)
            videos.append((key, r, v))
        # New reports only: the same report read twice is not twice the loss.
        loss = None
        for key, r, v in videos:
            q = quality.get((sid, r.out_ssrc))
            if q is None:
                continue
            ident = (q.get("highest_seq"), q.get("lost"), q.get("jitter"), q.get("lsr"))
            if sub.reports.get(r.out_ssrc) != ident:
                sub.reports[r.out_ssrc] = ident
                loss = max(loss or 0.0, q["fraction_lost"])
        if loss is not None and loss < CLEAN_LOSS:
            sub.clean_report_at = now
            sub.clean_reports += 1
        elif loss is not None:
            sub.clean_reports = 0
        sending = audio_streams * AUDIO + sum(self._sent(r, v) for _, r, v in videos if v.cap >= 0)
        fell = (estimate is not None and sub.estimate is not None and estimate < FALL * sub.estimate
                and estimate < BOTTLENECK * sending)
        sub.estimate = estimate
        lossy = loss is not None and loss > CONGESTED_LOSS
        congested = lossy or fell
        clean = not congested and (loss is None or loss < CLEAN_LOSS)
        if not clean:
            sub.clean_since = now
        if congested:
            if sub.last_up is not None and now - sub.last_up < TRIAL + HOLD:  # that step up was too much
                if sub.last_up_frames:
                    sub.frames_wait = min(sub.frames_wait * 2, MAX_UP_WAIT)
                else:
                    sub.up_wait = min(sub.up_wait * 2, MAX_UP_WAIT)
            sub.last_up = None
            if now - sub.changed_at >= HOLD:
                self._down(videos, now, sub, changes, events, lossy)
            return
        if not clean:  # between 2% and 10% lost: GCC holds; a warned or trial video does not
            if now - sub.changed_at >= HOLD:
                self._struggling(videos, now, sub, changes, events)
            return
        # Trials that stayed clean: the video is on again.
        for key, r, v in videos:
            if v.paused and v.cap >= 0 and v.trial_since is not None and now - v.trial_since >= TRIAL:
                v.paused, v.trial_since, v.warned = False, None, False
                sub.up_wait, sub.frames_wait = UP_WAIT, FRAMES_UP_WAIT  # the link has changed: what is above may fit again too
                events.append(_event("video_enabled", key))
        # A warning is lifted, and a video that plays goes up, on a clean report: silence between
        # two reports is no news. (A paused video has no reports: its trial is the news.)
        if clean and now - sub.clean_since >= UP_WAIT and sub.clean_reports >= 2:
            for key, r, v in videos:
                if v.warned and not v.paused and sub.clean_report_at > v.warned_at:
                    v.warned, v.lifted_at = False, now
                    events.append(_event("video_disabled_warning_lifted", key))
        # Frames back (a quarter of the rate, then half) come sooner than a layer up: each is a
        # small step, and cheap to take back.
        wait = sub.frames_wait if self._frames_next(videos, sub) else sub.up_wait
        if clean and now - sub.clean_since >= wait and now - sub.changed_at >= wait:
            self._up(videos, now, sub, changes)
        if clean and now - sub.changed_at >= 4 * MAX_UP_WAIT:
            sub.up_wait, sub.frames_wait = UP_WAIT, FRAMES_UP_WAIT  # long clean: the link may have changed

    def _down(self, videos, now, sub, changes, events, lossy: bool) -> None:
        # The lowest priority first; a video above its lowest layer (or with frames to lose on it)
        # goes down before any is paused.
        for key, r, v in reversed(videos):
            effective, teffective = min(v.cap, r.requested), min(v.tcap, r.trequested)
            if effective > 0:
                v.cap = effective - 1
            elif effective == 0 and r.temporal > 1 and teffective > 0:
                v.tcap = teffective - 1
            else:
                continue
            changes[key] = (v.cap, v.tcap)
            sub.changed_at = now
            return
        for key, r, v in reversed(videos):
            if v.cap < 0 or (r.layers < 2 and not lossy):
                continue
            if v.paused:  # a trial that congested: paused again, still disabled
                v.cap, v.trial_since = -1, None
                changes[key] = (-1, v.tcap)
            elif not v.warned and now - v.lifted_at >= RELAPSE:
                v.warned, v.warned_at = True, now
                events.append(_event("video_disabled_warning", key))
            elif not v.warned:  # warned, lifted and struggling again at once: the link cannot carry it
                v.cap, v.paused, v.warned, v.warned_at = -1, True, True, now
                changes[key] = (-1, v.tcap)
                events += [_event("video_disabled_warning", key), _event("video_disabled", key)]
            else:
                v.cap, v.paused = -1, True
                changes[key] = (-1, v.tcap)
                events.append(_event("video_disabled", key))
            sub.changed_at = now
            return

    def _struggling(self, videos, now, sub, changes, events) -> None:
        """A video on its lowest layer that was warned and has had no clean report for
        ``WARNED_HOLD`` seconds is paused; a trial with losses is paused again."""
        for key, r, v in reversed(videos):
            if v.cap < 0:
                continue
            if v.paused:  # a trial
                v.cap, v.trial_since = -1, None
                changes[key] = (-1, v.tcap)
            elif v.warned and now - v.warned_at >= WARNED_HOLD and now - sub.clean_report_at >= WARNED_HOLD:
                v.cap, v.paused = -1, True
                changes[key] = (-1, v.tcap)
                events.append(_event("video_disabled", key))
            else:
                continue
            sub.changed_at = now
            return

    @staticmethod
    def _frames_next(videos, sub) -> bool:
        """Whether the next step up gives a playing video frames back (not a layer, not a trial)."""
        for key, r, v in videos:  # the highest priority first, as _up
            if v.cap < 0:
                return False
            if sub.clean_report_at < sub.clean_since:
                continue
            if v.tcap < min(r.trequested, MAX_TEMPORAL):
                return True
            if v.cap < r.requested:
                return False
        return False

    def _up(self, videos, now, sub, changes) -> None:
        for key, r, v in videos:  # the highest priority first
            frames = False
            if v.cap < 0:  # a trial: its lowest layer, a quarter of its frames if it has them
                v.cap, v.trial_since = 0, now
                v.tcap = 0 if r.temporal > 1 else MAX_TEMPORAL
            elif sub.clean_report_at < sub.clean_since:
                continue
            elif v.tcap < min(r.trequested, MAX_TEMPORAL):
                v.tcap += 1  # its frames back before a layer up
                frames = True
            elif v.cap < r.requested:
                v.cap += 1
            else:
                continue
            changes[key] = (v.cap, v.tcap)
            sub.changed_at = now
            sub.last_up, sub.last_up_frames = now, frames
            return


def _event(kind: str, key: tuple[str, int, str]) -> dict:
    return {"type": kind, "publisher": key[0], "ssrc": key[1], "subscriber": key[2], "reason": "bandwidth"}
