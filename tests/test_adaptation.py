"""The per-subscriber adaptation's rules (mediaserver.media.adaptation), on plain data: layers
down under congestion, a warning, then audio only; back up by trial when the link is clean;
one subscriber's trouble never changes another's caps."""

from __future__ import annotations

from mediaserver.media.adaptation import HOLD, MAX_UP_WAIT, TRIAL, UP_WAIT, Adaptation, RouteInfo

PUB, TRACK = "pub", 0x1000
A, B = "sub-a", "sub-b"


def routes(requested_a: int = 2, requested_b: int = 2) -> list[RouteInfo]:
    return [RouteInfo(PUB, TRACK, A, 0x3001, 3, requested_a), RouteInfo(PUB, TRACK, B, 0x3002, 3, requested_b)]


class Link:
    """Receiver reports and estimates as a subscriber would send them, one step at a time."""

    def __init__(self, adaptation: Adaptation):
        self.ad = adaptation
        self.seq = {A: 0, B: 0}
        self.events: list[dict] = []
        self.caps: dict[str, int] = {}
        self.tcaps: dict[str, int] = {}
        self.now = 0.0

    def step(self, loss: dict[str, float], estimates: dict[str, int] | None = None, rs=None, dt: float = 0.5) -> dict:
        self.now += dt
        quality = {}
        for sub, fraction in loss.items():
            self.seq[sub] += 50  # a new report
            quality[(sub, 0x3001 if sub == A else 0x3002)] = {"fraction_lost": fraction, "highest_seq": self.seq[sub],
                                                              "lost": 0, "jitter": 1, "lsr": 0}
        changes, events = self.ad.step(rs or routes(), {A: 1, B: 1}, estimates or {}, quality, self.now)
        self.events += events
        for (_, _, sub), (cap, tcap) in changes.items():
            self.caps[sub] = cap
            self.tcaps[sub] = tcap
        return changes

    def kinds(self, sub: str) -> list[str]:
        return [e["type"] for e in self.events if e["subscriber"] == sub]


def measured() -> Adaptation:
    ad = Adaptation()
    ad.measure({(PUB, TRACK): [0, 0, 0]}, 0.0)
    ad.measure({(PUB, TRACK): [10_000, 40_000, 120_000]}, 1.0)  # 80 / 320 / 960 kbit/s
    return ad


def test_layer_bitrates_are_measured_from_the_bytes_counted():
    ad = measured()
    assert ad.rates[(PUB, TRACK)] == [80_000, 320_000, 960_000]
    ad.measure({(PUB, TRACK): [20_000, 40_000, 120_000]}, 2.0)  # layers 1 and 2 switched off: they keep theirs
    assert ad.rates[(PUB, TRACK)] == [80_000, 320_000, 960_000]
    assert ad.rate(PUB, TRACK, 2) == 960_000
    fresh = Adaptation()
    assert fresh.rate(PUB, TRACK, 0) > 0  # unmeasured: assumed, not free


def test_congestion_steps_down_then_warns_then_falls_back_to_audio_for_that_subscriber_only():
    link = Link(measured())
    seen = []
    while link.caps.get(A) != -1:
        if link.step({A: 0.3, B: 0.0}):
            seen.append((link.now, link.caps[A], link.kinds(A)))
        assert link.now < 10
    # One notch per HOLD seconds: two layers down, a warning on the lowest, then audio only.
    assert [(cap, kinds) for _, cap, kinds in seen] == [(1, []), (0, []), (-1, ["video_disabled_warning", "video_disabled"])]
    assert all(b[0] - a[0] >= HOLD for a, b in zip(seen, seen[1:]))
    assert link.kinds(A) == ["video_disabled_warning", "video_disabled"]
    assert link.kinds(B) == [] and B not in link.caps
    assert {e["reason"] for e in link.events} == {"bandwidth"} and all(e["publisher"] == PUB for e in link.events)


def test_the_same_report_read_twice_is_not_twice_the_loss():
    ad = measured()
    quality = {(A, 0x3001): {"fraction_lost": 0.5, "highest_seq": 7, "lost": 3, "jitter": 1, "lsr": 0}}
    caps = []
    for i in range(3):  # (within UP_WAIT: no step up yet)
        changes, _ = ad.step(routes(), {}, {}, quality, 1.0 + i * HOLD)
        caps += [cap for cap, _ in changes.values()]
    assert caps == [1]  # one step down; then no news (not more loss)


def test_a_paused_video_comes_back_by_trial_when_the_link_clears():
    link = Link(measured())
    while link.caps.get(A) != -1:
        link.step({A: 0.3})
    paused_at = link.now
    # Clean from now on: after UP_WAIT a trial on the lowest layer, enabled TRIAL seconds later.
    while link.caps.get(A) == -1:
        link.step({A: 0.0})
    assert link.caps[A] == 0 and UP_WAIT <= link.now - paused_at <= UP_WAIT + 1
    assert link.kinds(A)[-1] == "video_disabled"
    trial = link.now
    while link.kinds(A)[-1] != "video_enabled":
        link.step({A: 0.0})
        assert link.now - trial <= TRIAL + 0.5
    # And up again, layer by layer, to what it asked for.
    while link.caps[A] < 2:
        link.step({A: 0.0})
        assert link.now - trial < 30
    assert link.kinds(A).count("video_enabled") == 1


def test_a_trial_that_congests_is_paused_again_and_the_next_waits_longer():
    link = Link(measured())
    while link.caps.get(A) != -1:
        link.step({A: 0.3})
    while link.caps[A] == -1:
        link.step({A: 0.0})
    first_trial = link.now
    while link.caps[A] != -1:
        link.step({A: 0.4})  # the link still cannot carry it
        assert link.now - first_trial <= HOLD + 0.5
    assert link.kinds(A)[-1] == "video_disabled" and link.kinds(A).count("video_disabled") == 1  # still disabled
    while link.caps[A] == -1:
        link.step({A: 0.0})
    assert link.now - first_trial >= min(2 * UP_WAIT, MAX_UP_WAIT)


def test_an_estimate_fallen_far_under_what_is_sent_is_congestion_a_low_one_alone_is_not():
    link = Link(measured())
    link.step({}, {A: 400_000})  # under the 1,000 kbit/s it receives (video and audio), but only lagging: nothing
    link.step({}, {A: 1_200_000})
    link.step({}, {A: 850_000})  # fell to 85% of what arrives: queueing on a link that carries it (or a busy CPU)
    assert link.caps == {}
    link.step({}, {A: 250_000})  # fell far under what is sent: a bottleneck
    assert link.caps == {A: 1}


def test_a_subscriber_that_asked_for_less_steps_down_from_what_it_gets():
    link = Link(measured())
    link.step({A: 0.3}, rs=routes(requested_a=1))
    assert link.caps == {A: 0}  # from layer 1 (what it gets), not from the unused top
    # Routes that go drop their state.
    link.ad.step([], {}, {}, {}, link.now + 1)
    assert link.ad.videos == {} and link.ad.subscribers == {}


def test_a_warning_is_lifted_on_clean_reports_only_and_a_relapse_soon_after_pauses_at_once():
    link = Link(measured())
    rs = routes(requested_a=0)  # A is on the lowest layer already: its first congestion warns
    link.step({A: 0.3}, rs=rs)
    assert link.kinds(A) == ["video_disabled_warning"]
    for _ in range(10):
        link.step({}, rs=rs)  # silence between reports is no news: not lifted
    assert link.kinds(A) == ["video_disabled_warning"]
    while link.kinds(A)[-1] != "video_disabled_warning_lifted":
        link.step({A: 0.0}, rs=rs)
        assert link.now < 30
    # Struggling again right after: the link cannot carry even this layer; no second round of warnings.
    link.step({A: 0.3}, rs=rs)
    assert link.kinds(A)[-2:] == ["video_disabled_warning", "video_disabled"] and link.caps[A] == -1


def test_a_warned_video_that_keeps_losing_a_little_is_paused_and_so_is_a_lossy_trial():
    link = Link(measured())
    rs = routes(requested_a=0)
    link.step({A: 0.3}, rs=rs)
    assert link.kinds(A) == ["video_disabled_warning"]
    warned = link.now
    while link.caps.get(A) != -1:
        link.step({A: 0.05}, rs=rs)  # GCC's hold zone: not congestion, not room either
        assert link.now - warned < 10
    assert link.kinds(A) == ["video_disabled_warning", "video_disabled"] and link.now - warned >= 4
    while link.caps[A] == -1:
        link.step({}, rs=rs)  # paused: no reports; a trial comes
    link.step({A: 0.05}, rs=rs)
    link.step({A: 0.05}, rs=rs)
    link.step({A: 0.05}, rs=rs)
    assert link.caps[A] == -1 and "video_enabled" not in link.kinds(A)


def single_routes() -> list[RouteInfo]:
    """A video each subscriber receives as one stream (a screen share, say): one layer."""
    return [RouteInfo(PUB, TRACK, A, 0x3001, 1, 0), RouteInfo(PUB, TRACK, B, 0x3002, 1, 0)]


def test_a_video_sent_as_one_stream_is_warned_then_paused_on_loss_and_comes_back_by_trial():
    ad = Adaptation()
    ad.measure({(PUB, TRACK): [0]}, 0.0)
    ad.measure({(PUB, TRACK): [100_000]}, 1.0)  # 800 kbit/s
    link = Link(ad)
    while link.caps.get(A) != -1:
        link.step({A: 0.3, B: 0.0}, rs=single_routes())
        assert link.now < 10
    # Nothing to step down to: a warning, then audio only; the other subscriber untouched.
    assert link.kinds(A) == ["video_disabled_warning", "video_disabled"] and B not in link.caps
    while link.caps[A] == -1:
        link.step({A: 0.0, B: 0.0}, rs=single_routes())
    assert link.caps[A] == 0  # on trial: its one layer
    while link.kinds(A)[-1] != "video_enabled":
        link.step({A: 0.0, B: 0.0}, rs=single_routes())
        assert link.now < 30
    assert link.caps == {A: 0}  # and nothing above it to go to


def test_a_falling_estimate_alone_never_pauses_a_video_sent_as_one_stream():
    ad = Adaptation()
    ad.measure({(PUB, TRACK): [0]}, 0.0)
    ad.measure({(PUB, TRACK): [100_000]}, 1.0)
    link = Link(ad)
    estimate = 2_000_000
    for _ in range(40):  # 20 s of an estimate falling far under what is sent, without loss
        estimate = int(estimate * 0.8)
        link.step({A: 0.0}, {A: estimate}, rs=single_routes())
    assert link.caps == {} and link.kinds(A) == []
    # The same fall on a simulcast video steps it down (a layer is cheap to lose).
    link = Link(measured())
    estimate = 2_000_000
    for _ in range(6):
        estimate = int(estimate * 0.8)
        link.step({A: 0.0}, {A: estimate})
    assert link.caps.get(A) == 1


def test_a_screen_share_goes_before_a_camera_down_and_comes_back_first():
    """A subscriber with a camera (three layers) and a screen share (one stream, priority 1):
    the camera gives up its layers, then its picture, before the screen is touched; back up,
    the screen comes first."""
    ad = measured()
    ad.measure({(PUB, TRACK + 1): [0]}, 0.0)
    ad.measure({(PUB, TRACK + 1): [60_000]}, 1.0)
    rs = [RouteInfo(PUB, TRACK, A, 0x3001, 3, 2), RouteInfo(PUB, TRACK + 1, A, 0x3003, 1, 0, priority=1)]
    link = Link(ad)
    order = []
    while not (order and order[-1] == (TRACK + 1, -1)):
        changes = link.step({A: 0.3}, rs=rs)
        order += [(ssrc, cap) for (_, ssrc, _), (cap, _) in changes.items()]
        assert link.now < 30
    assert order == [(TRACK, 1), (TRACK, 0), (TRACK, -1), (TRACK + 1, -1)]
    back = []
    while len(back) < 2:
        changes = link.step({A: 0.0}, rs=rs)
        back += [ssrc for (_, ssrc, _), (cap, _) in changes.items() if cap == 0]
        assert link.now < 60
    assert back == [TRACK + 1, TRACK]


def temporal(ad: Adaptation, *tracks: int) -> Adaptation:
    """Tracks whose frames come in three VP8 temporal layers (bytes: TID 0 half, TIDs 1 and 2 a quarter each)."""
    ad.measure_temporal({(PUB, t): [50_000, 25_000, 25_000] for t in tracks})
    return ad


def test_temporal_layers_are_measured_from_the_bytes_counted():
    ad = temporal(Adaptation(), TRACK)
    ad.measure_temporal({(PUB, TRACK): [50_000, 25_000, 25_000], (PUB, TRACK + 1): [9_000, 0, 0]})
    assert ad.tshares[(PUB, TRACK)] == [0.5, 0.75, 1.0]
    assert ad.temporal_layers(PUB, TRACK) == 3 and ad.temporal_layers(PUB, TRACK + 1) == 1
    assert ad.temporal_layers(PUB, 0x999) == 1  # never seen


def test_a_camera_with_temporal_layers_loses_frames_on_its_lowest_layer_before_its_picture():
    ad = temporal(measured(), TRACK)
    rs = [RouteInfo(PUB, TRACK, A, 0x3001, 3, 2, temporal=3), RouteInfo(PUB, TRACK, B, 0x3002, 3, 2, temporal=3)]
    link = Link(ad)
    steps = []
    while link.caps.get(A) != -1:
        changes = link.step({A: 0.3, B: 0.0}, rs=rs)
        steps += [caps for (_, _, sub), caps in changes.items() if sub == A]
        assert link.now < 30
    assert steps == [(1, 2), (0, 2), (0, 1), (0, 0), (-1, 0)]
    assert link.kinds(A) == ["video_disabled_warning", "video_disabled"] and B not in link.caps
    # Back by trial on the lightest: the lowest layer and a quarter of the frames; then its
    # frames, then its layers.
    up = []
    while link.caps[A] != 2:
        changes = link.step({A: 0.0, B: 0.0}, rs=rs)
        up += [caps for (_, _, sub), caps in changes.items() if sub == A]
        assert link.now < 90
    assert up == [(0, 0), (0, 1), (0, 2), (1, 2), (2, 2)] and link.kinds(A)[-1] == "video_enabled"


def test_a_video_sent_as_one_stream_with_temporal_layers_loses_frames_on_a_falling_estimate_alone():
    ad = temporal(Adaptation(), TRACK)
    ad.measure({(PUB, TRACK): [0]}, 0.0)
    ad.measure({(PUB, TRACK): [100_000]}, 1.0)
    rs = [RouteInfo(PUB, TRACK, A, 0x3001, 1, 0, temporal=3)]
    link = Link(ad)
    estimate = 2_000_000
    for _ in range(40):  # 20 s of an estimate falling far under what is sent, without loss
        estimate = int(estimate * 0.8)
        link.step({A: 0.0}, {A: estimate}, rs=rs)
    assert link.caps == {A: 0} and link.tcaps == {A: 0} and link.kinds(A) == []  # a quarter of its frames, never paused


def test_the_frame_rate_a_subscriber_asked_for_is_the_ceiling():
    ad = temporal(measured(), TRACK)
    rs = [RouteInfo(PUB, TRACK, A, 0x3001, 3, 0, temporal=3, trequested=1)]  # the lowest layer at half the frames
    link = Link(ad)
    while link.caps.get(A) != -1:
        link.step({A: 0.3}, rs=rs)
        assert link.now < 30
    assert link.tcaps[A] == 0
    while link.kinds(A)[-1] != "video_enabled" or link.now < 60:
        link.step({A: 0.0}, rs=rs)
        assert link.now < 90
    assert (link.caps[A], link.tcaps[A]) == (0, 1)  # never above what it asked for
