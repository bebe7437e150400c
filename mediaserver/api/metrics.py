"""Prometheus metrics at /metrics: the gateway's own counters, and at scrape time the store's
live figures and every media worker's forwarding counters (so one scrape shows the whole server)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

# Worker counters exported as counters (name -> help); drops become one family with a reason label.
WORKER_COUNTERS = {
    "rtp_in": "SRTP packets received from publishers",
    "rtp_out": "SRTP packets sent to subscribers (forwarded and retransmitted)",
    "bytes_out": "bytes sent to subscribers",
    "rtcp_in": "SRTCP packets received",
    "nack_served": "lost packets resent from the cache on a NACK",
    "nack_missed": "NACKed packets no longer in the cache",
    "pli_sent": "keyframe requests passed to publishers",
    "pli_throttled": "keyframe requests held back by the 500 ms limit",
    "sr_forwarded": "sender reports translated for subscribers",
    "remb_sent": "bandwidth estimates (the lowest of the subscribers') passed to publishers",
}


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.joins = Counter("mediaserver_joins", "WebSocket joins and resumes, by result", ["result"], registry=self.registry)
        self.connections = Gauge("mediaserver_ws_connections", "open participant WebSockets on this gateway", registry=self.registry)
        self.snapshot: dict[str, Any] = {}
        self.registry.register(_Snapshot(self))

    def render(self, snapshot: dict[str, Any]) -> bytes:
        self.snapshot = snapshot
        return generate_latest(self.registry)


class _Snapshot(Collector):
    """Figures gathered asynchronously just before a scrape (store and Ray calls cannot run here)."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics

    def collect(self):
        snap = self.metrics.snapshot
        sessions = GaugeMetricFamily("mediaserver_sessions", "sessions by status (all teams)", labels=["status"])
        for status, n in snap.get("sessions", {}).items():
            sessions.add_metric([status], n)
        yield sessions
        yield GaugeMetricFamily("mediaserver_participants", "connected participants (all sessions)", value=snap.get("participants", 0))
        workers = snap.get("workers", {})
        transports = GaugeMetricFamily("mediaserver_media_transports", "open peer-connection transports", labels=["worker"])
        threads = GaugeMetricFamily("mediaserver_media_send_threads", "threads the worker's fast path sends with", labels=["worker"])
        cpu = CounterMetricFamily("mediaserver_media_worker_cpu_seconds", "CPU time of the media worker process", labels=["worker"])
        drops = CounterMetricFamily("mediaserver_media_drops", "packets not forwarded, by reason", labels=["worker", "reason"])
        counters = {k: CounterMetricFamily(f"mediaserver_media_{k}", h, labels=["worker"]) for k, h in WORKER_COUNTERS.items()}
        for w, stats in workers.items():
            transports.add_metric([w], stats.get("transports", 0))
            cpu.add_metric([w], stats.get("cpu_seconds", 0.0))
            threads.add_metric([w], stats.get("send_threads", 1))
            for k, fam in counters.items():
                fam.add_metric([w], stats.get(k, 0))
            for k, v in stats.items():
                if k.startswith("drop_"):
                    drops.add_metric([w, k[5:]], v)
        yield transports
        yield cpu
        yield threads
        yield drops
        yield from counters.values()
        calls = CounterMetricFamily("mediaserver_host_calls", "session operations this gateway sent to session hosts (kind: calls or long polls)", labels=["kind"])
        messages = CounterMetricFamily("mediaserver_host_messages", "messages they went in (calls made in one turn of the event loop go as one)", labels=["kind"])
        for kind, n in snap.get("host_calls", {}).items():
            calls.add_metric([kind], n["calls"])
            messages.add_metric([kind], n["messages"])
        yield calls
        yield messages
        yield GaugeMetricFamily("mediaserver_scrape_timestamp_seconds", "when these figures were gathered", value=time.time())
