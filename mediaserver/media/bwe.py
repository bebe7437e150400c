"""A subscriber's bandwidth estimate, worked out by us, the sender (issue 12, part 3): from its
transport-wide feedback (``mediaserver.media.feedback``), the way a browser's send-side
estimator does it (Google Congestion Control, draft-ietf-rmcat-gcc-02), kept small:

- **Delay**: packets sent within ``GROUP`` of each other are one group (a video frame leaves as
  a burst). Between two groups, the arrival gap minus the send gap is the change in queueing
  delay; its running sum, smoothed, goes through a line fitted over the last ``WINDOW`` groups
  (the trendline filter, section 5 of the draft in libwebrtc's form). A slope above the
  adaptive threshold (section 5.4) for long enough is *overuse* (a queue is building), below
  its negative *underuse* (a queue draining).
- **Rate** (section 6): on overuse the estimate falls to ``BETA`` of what the subscriber
  received lately; on underuse it holds; otherwise it grows, by 8% a second while far from
  the rate of its last fall, additively near it, never past 1.5 times what was received.
- **Loss** (section 6, the loss-based controller): more than 10% lost in a second takes the
  estimate down by half the loss, under 2% lets it grow 5% a second; the estimate is the lower
  of the two.

Arrival times are the subscriber's clock and send times ours: only differences are used.
Plain code over plain data, fed by the media worker every adaptation step.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from mediaserver.media.feedback import Result

GROUP = 0.005  # seconds: packets sent this close are one group
WINDOW = 20  # groups in the trendline's fit
SMOOTHING = 0.9  # of the accumulated delay
GAIN = 4.0  # threshold gain of the trend
THRESHOLD = 12.5  # ms, the adaptive threshold's start
K_UP, K_DOWN = 0.0087, 0.039  # its adaptation (draft section 5.4)
OVERUSE_TIME = 0.01  # seconds over the threshold before it counts as overuse
BETA = 0.85
ACKED_WINDOW = 1.0  # seconds of received packets the received rate is measured over
LOSS_WINDOW = 1.0  # seconds of reports the loss is measured over
MIN_RATE, MAX_RATE = 30_000, 50_000_000


class Estimate:
    """One subscriber's link, from us to it."""

    def __init__(self) -> None:
        self.rate: float | None = None  # delay-based, bit/s (None until something was received)
        self.loss_rate: float | None = None  # loss-based
        self.state = "normal"  # the detector's: overuse, normal, underuse
        self.loss = 0.0  # the share lost over the last LOSS_WINDOW
        self._seen: deque[int] = deque(maxlen=4096)  # sequence numbers reported (a report read twice counts once)
        self._seen_set: set[int] = set()
        self._group: list[float] | None = None  # [first send, last send, last arrival]
        self._prev: list[float] | None = None  # the group before, once complete
        self._acc = self._smoothed = 0.0
        self._first_arrival: float | None = None
        self._trend: deque[tuple[float, float]] = deque(maxlen=WINDOW)
        self._deltas = 0
        self._threshold = THRESHOLD
        self._threshold_at: float | None = None
        self._over_time = -1.0
        self._over_count = 0
        self._last_slope = 0.0
        self._received: deque[tuple[float, int]] = deque()  # (arrival, bytes)
        self._reports: deque[tuple[float, bool]] = deque()  # (reported, lost)
        self._updated: float | None = None
        self._fall_rate: float | None = None  # the received rate at the last fall (where the link ends)
        self._loss_updated: float | None = None

    @property
    def bitrate(self) -> int | None:
        """The estimate in bit/s: the lower of the delay and loss controllers' (None: not yet)."""
        if self.rate is None:
            return None
        low = self.rate if self.loss_rate is None else min(self.rate, self.loss_rate)
        return int(max(MIN_RATE, min(low, MAX_RATE)))

    def update(self, results: Iterable[Result]) -> int | None:
        """Read what the subscriber's feedback said (in the order it said it) and return the
        estimate. Results of one feedback message share ``reported``: the rate moves once per message."""
        batch: list[Result] = []
        for r in results:
            if batch and r.reported != batch[0].reported:
                self._message(batch)
                batch = []
            batch.append(r)
        if batch:
            self._message(batch)
        return self.bitrate

    # One feedback message ----------------------------------------------------------------

    def _message(self, results: list[Result]) -> None:
        now = results[0].reported
        for r in results:
            if r.seq in self._seen_set:
                continue
            if len(self._seen) == self._seen.maxlen:
                self._seen_set.discard(self._seen[0])
            self._seen.append(r.seq)
            self._seen_set.add(r.seq)
            self._reports.append((now, r.arrival is None))
            if r.arrival is not None:
                self._received.append((r.arrival, r.size))
                self._delay(r)
        while self._reports and now - self._reports[0][0] > LOSS_WINDOW:
            self._reports.popleft()
        if self._received:
            newest = self._received[-1][0]
            while self._received and newest - self._received[0][0] > ACKED_WINDOW:
                self._received.popleft()
        self.loss = sum(lost for _, lost in self._reports) / len(self._reports) if self._reports else 0.0
        self._control(now)

    def _delay(self, r: Result) -> None:
        """One received packet into its send group; a group that closes gives a delay change."""
        g = self._group
        if g is None or r.sent < g[0]:  # (the first, or one sent before the group: reordered by us)
            if g is None:
                self._group = [r.sent, r.sent, r.arrival]
            return
        if r.sent - g[0] <= GROUP:
            g[1] = max(g[1], r.sent)
            g[2] = max(g[2], r.arrival)
            return
        prev, self._prev, self._group = self._prev, g, [r.sent, r.sent, r.arrival]
        if prev is None:
            return
        send_delta, arrival_delta = g[1] - prev[1], g[2] - prev[2]
        self._trendline((arrival_delta - send_delta) * 1000, g[2], send_delta)

    def _trendline(self, delta_ms: float, arrival: float, send_delta: float) -> None:
        if self._first_arrival is None:
            self._first_arrival = arrival
        self._deltas = min(self._deltas + 1, 1000)
        self._acc += delta_ms
        self._smoothed = SMOOTHING * self._smoothed + (1 - SMOOTHING) * self._acc
        self._trend.append(((arrival - self._first_arrival) * 1000, self._smoothed))
        slope = self._slope() if len(self._trend) == WINDOW else self._last_slope
        modified = min(self._deltas, 60) * slope * GAIN
        self._detect(modified, slope, send_delta, arrival)
        self._last_slope = slope

    def _slope(self) -> float:
        n = len(self._trend)
        mx = sum(x for x, _ in self._trend) / n
        my = sum(y for _, y in self._trend) / n
        den = sum((x - mx) ** 2 for x, _ in self._trend)
        return sum((x - mx) * (y - my) for x, y in self._trend) / den if den else 0.0

    def _detect(self, modified: float, slope: float, send_delta: float, now: float) -> None:
        if modified > self._threshold:
            self._over_time = send_delta / 2 if self._over_time < 0 else self._over_time + send_delta
            self._over_count += 1
            if self._over_time > OVERUSE_TIME and self._over_count > 1 and slope >= self._last_slope:
                self._over_time, self._over_count = 0.0, 0
                self.state = "overuse"
        elif modified < -self._threshold:
            self._over_time, self._over_count = -1.0, 0
            self.state = "underuse"
        else:
            self._over_time, self._over_count = -1.0, 0
            self.state = "normal"
        # The threshold follows the trend, slowly up and faster down (section 5.4); a spike far
        # over it (a route change, say) does not move it.
        dt = min(now - self._threshold_at, 0.1) * 1000 if self._threshold_at is not None else 0.0
        self._threshold_at = now
        if abs(modified) <= self._threshold + 15:
            k = K_DOWN if abs(modified) < self._threshold else K_UP
            self._threshold = min(max(self._threshold + k * (abs(modified) - self._threshold) * dt, 6.0), 600.0)

    def _acked(self) -> float | None:
        """What the subscriber received lately, bit/s (None: too little to say)."""
        if len(self._received) < 2:
            return None
        span = self._received[-1][0] - self._received[0][0]
        # (the first packet's bytes arrived before the span began)
        return (sum(size for _, size in self._received) - self._received[0][1]) * 8 / span if span >= 0.1 else None

    def _control(self, now: float) -> None:
        acked = self._acked()
        dt = min(now - self._updated, 1.0) if self._updated is not None else 0.0
        self._updated = now
        if self.rate is None:
            if acked is None or self._received[-1][0] - self._received[0][0] < 0.4 * ACKED_WINDOW:
                return
            self.rate = self.loss_rate = acked  # (a start from what it is getting now)
        if self.state == "overuse":
            if acked is not None:
                self.rate = min(self.rate, BETA * acked)
                self._fall_rate = acked
            self.state = "normal"  # (one fall per overuse)
        elif self.state == "normal":
            grown = self.rate + 8 * 1200 * dt / 0.2 if self._fall_rate is not None and self.rate > 0.9 * self._fall_rate \
                else self.rate * 1.08 ** dt  # (near where it fell: a packet per 200 ms response time; else 8% a second)
            if acked is not None:
                # What it receives without a queue building, the link carries; more than half as
                # much again is not known to, so the estimate does not grow past that (but a
                # sender that sends less for a while, a camera between frames, lowers nothing).
                grown = max(min(grown, max(self.rate, 1.5 * acked + 10_000)), acked)
            self.rate = grown
        # The loss-based controller: the estimate's floor when clean, a cut when lossy.
        if self.loss > 0.10:
            if self._loss_updated is None or now - self._loss_updated >= 0.3:
                self.loss_rate = self.loss_rate * (1 - 0.5 * self.loss)
                self._loss_updated = now
        elif self.loss < 0.02:
            self.loss_rate = max(self.loss_rate * 1.05 ** dt, self.rate)
