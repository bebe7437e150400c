"""The send-side bandwidth estimate (mediaserver.media.bwe) on a simulated link: what it says of
a link that carries what is sent, of a bottleneck (a queue builds: delay), and of loss."""

from __future__ import annotations

import random

from mediaserver.media.bwe import Estimate
from mediaserver.media.feedback import Result


class Link:
    """A camera's frames (30 a second, 1200-byte packets sent as a burst) through a bottleneck
    with a drop-tail queue of ``buffer_s``, 20 ms away, random ``loss``; the subscriber's
    feedback every 100 ms."""

    def __init__(self, capacity_bps: float, loss: float = 0.0, buffer_s: float = 0.2, seed: int = 1):
        self.capacity, self.loss, self.buffer = capacity_bps, loss, buffer_s
        self.rng = random.Random(seed)
        self.free_at, self.seq, self.pending, self.t, self.next_fb = 0.0, 0, [], 0.0, 0.1

    def run(self, send_bps: float, seconds: float) -> list[list[Result]]:
        per_frame, messages = max(1, round(send_bps / 8 / 1200 / 30)), []
        for _ in range(int(seconds * 30)):
            for i in range(per_frame):
                sent = self.t + i * 0.0001
                self.seq = (self.seq + 1) & 0xFFFF
                start = max(sent, self.free_at)
                if start - sent > self.buffer or self.rng.random() < self.loss:
                    self.pending.append((self.seq, sent, None))  # dropped (queue full) or lost on the way
                    continue
                self.free_at = start + 1200 * 8 / self.capacity
                self.pending.append((self.seq, sent, self.free_at + 0.02))
            while self.next_fb <= self.t:
                ready = [p for p in self.pending if p[1] + 0.03 <= self.next_fb]
                if ready:
                    messages.append([Result(q, sent, 1200, arrival, self.next_fb + 0.03) for q, sent, arrival in ready])
                    self.pending = [p for p in self.pending if p not in ready]
                self.next_fb += 0.1
            self.t += 1 / 30
        return messages


def link(send_bps: float, capacity_bps: float, seconds: float, loss: float = 0.0) -> list[list[Result]]:
    return Link(capacity_bps, loss).run(send_bps, seconds)


def run(messages: list[list[Result]]) -> tuple[Estimate, list[int | None]]:
    est = Estimate()
    return est, [est.update(m) for m in messages]


def test_a_link_that_carries_what_is_sent_is_estimated_above_it():
    est, rates = run(link(1_000_000, 5_000_000, 10))
    assert rates[0] is None or rates[0] > 0
    assert all(r >= 900_000 for r in rates[20:] if r is not None)  # never a fall below what it carries
    assert 1_100_000 < rates[-1] <= 1.6 * 1_000_000  # above what it gets, capped at 1.5 times it
    assert est.loss == 0.0


def test_a_bottleneck_is_found_from_the_delay_it_builds():
    est, rates = run(link(1_000_000, 300_000, 4))
    at = next(i for i, r in enumerate(rates) if r is not None and r < 400_000)
    assert at <= 30  # under what the link carries within 3 s (feedback every 100 ms)


def test_a_sender_that_follows_the_estimate_settles_on_what_fits():
    """Closed loop, as the adaptation does it with layers: each second the sender takes the
    highest of 150, 500 and 1,000 kbit/s under the estimate, on a 300 kbit/s link."""
    net, est, send, sent = Link(300_000), Estimate(), 1_000_000, []
    for _ in range(20):
        for m in net.run(send, 1.0):
            est.update(m)
        rate = est.bitrate or send
        send = max([r for r in (150_000, 500_000, 1_000_000) if r <= rate] or [150_000])
        sent.append(send)
    assert sent[-10:] == [150_000] * 10 and 150_000 <= est.bitrate <= 500_000


def test_loss_takes_the_estimate_down_and_a_clean_link_lets_it_grow():
    est, rates = run(link(1_000_000, 5_000_000, 8, loss=0.25))
    assert rates[-1] < 600_000 and est.loss > 0.15
    clean, rates = run(link(1_000_000, 5_000_000, 8, loss=0.01))
    assert rates[-1] > 1_000_000


def test_a_report_read_twice_counts_once():
    messages = link(1_000_000, 5_000_000, 3)
    once, twice = Estimate(), Estimate()
    for m in messages:
        once.update(m)
        twice.update(m)
        twice.update([r._replace(reported=r.reported + 0.01) for r in m])
    assert once.loss == twice.loss and abs(once.bitrate - twice.bitrate) / once.bitrate < 0.1
