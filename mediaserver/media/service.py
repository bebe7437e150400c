"""The media worker's control API in plain data (dicts), as the SessionActor calls it.

The Ray actor in ``actors/media.py`` is a shell over this class; tests use it directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import resource
from typing import Iterable

from mediaserver.ids import new_id
from mediaserver.media.sdp import Codec, OutgoingTrack
from mediaserver.media.legs import LEG_PROFILE
from mediaserver.media.srtp import BY_NAME, SrtpKeys
from mediaserver.media.temporal import MAX_TEMPORAL
from mediaserver.media.worker import MediaWorker


RELAY_PROFILE = BY_NAME[LEG_PROFILE]


class WorkerService:
    def __init__(
        self, *, bind_host: str, port: int, advertised_host: str | None, allowed_networks: Iterable[str],
        fastpath: bool = True, tap_dir: str | None = None, gso: bool = True, send_threads: int = 1,
    ):
        self.worker = MediaWorker(
            bind_host=bind_host, port=port, advertised_host=advertised_host, allowed_networks=allowed_networks,
            fastpath=fastpath, tap_dir=tap_dir, gso=gso, send_threads=send_threads,
        )
        self.started = False
        # Changes when the process restarts (and with it every transport): owners compare it.
        self.incarnation = new_id("inc")

    async def start(self) -> dict:
        if not self.started:
            await self.worker.start()
            self.started = True
        return {"port": self.worker.port, "host": self.worker.advertised_host, "incarnation": self.incarnation,
                "relay": self.relay_address()}

    async def watch(self) -> None:
        """Never returns: owners keep this call open, and its failure tells them at once that the
        worker (and every transport on it) is gone."""
        await asyncio.Event().wait()

    async def relay(self, peer_host: str, peer_port: int, rx: str, tx: str) -> dict:
        """The leg to or from the worker at ``peer_host:peer_port`` (``MediaWorker.relay``), with
        SRTP keys (hex, AEAD_AES_128_GCM key + salt) for what it receives and what it sends."""
        keys = SrtpKeys(RELAY_PROFILE, rx=bytes.fromhex(rx), tx=bytes.fromhex(tx))
        t = self.worker.relay((peer_host, peer_port), keys)
        return {"id": t.id, **self.relay_address()}

    def relay_address(self) -> dict:
        """Where other workers reach this one, and where its packets come from: its bind
        address (a wildcard bind answers from the advertised one, which must then be its own)."""
        bind = self.worker.bind_host
        return {"host": self.worker.advertised_host if bind in ("0.0.0.0", "::") else bind, "port": self.worker.port}

    async def create_transport(self, participant_id: str, role: str) -> dict:
        t = self.worker.create_transport(participant_id, role)
        return {"id": t.id}

    async def close_transport(self, transport_id: str) -> None:
        self.worker.close_transport(transport_id)

    async def close_participants(self, participant_ids: list[str]) -> int:
        """Close every transport of these participants (their session lost track of them)."""
        gone = [t.id for t in self.worker.transports.values() if t.participant_id in set(participant_ids)]
        for tid in gone:
            self.worker.close_transport(tid)
        return len(gone)

    async def publish(self, transport_id: str, offer: str) -> dict:
        answer = self.worker.publish(transport_id, offer)
        tracks = self.worker.transports[transport_id].tracks
        return {
            "answer": answer,
            "tracks": [
                {"mid": t.mid, "kind": t.kind, "ssrc": t.ssrc, "codec": dataclasses.asdict(t.codec), "layers": len(t.rids)}
                for t in tracks
            ],
        }

    async def subscribe_offer(self, transport_id: str, slots: list[dict]) -> str:
        out = []
        for s in slots:
            codec = {**s["codec"], "feedback": tuple(s["codec"].get("feedback", ()))}
            out.append(
                OutgoingTrack(
                    mid=s["mid"], kind=s["kind"], ssrc=s["ssrc"], codec=Codec(**codec),
                    stream_id=s["stream_id"], track_id=s["track_id"], active=s["active"],
                )
            )
        return self.worker.subscribe_offer(transport_id, out)

    async def subscribe_answer(self, transport_id: str, answer: str) -> None:
        self.worker.subscribe_answer(transport_id, answer)

    async def route(self, src: str, src_ssrc: int, dst: str, out_ssrc: int, payload_type: int, video: bool = False,
                    layer: int | None = None, priority: int = 0, temporal: int = MAX_TEMPORAL) -> None:
        self.worker.route(src, src_ssrc, dst, out_ssrc, payload_type, video, layer, priority, temporal)

    async def set_layer(self, src: str, src_ssrc: int, dst: str, layer: int | None, temporal: int | None = None) -> None:
        self.worker.set_layer(src, src_ssrc, dst, layer, temporal)

    async def unroute(self, src: str, src_ssrc: int, dst: str) -> None:
        self.worker.unroute(src, src_ssrc, dst)

    async def reports(self, transport_ids: list[str], quality: bool = False) -> dict:
        """What a session host reads of its transports every tick, in one call: their
        connection states, the adaptation's events since the last call (a subscriber's video
        paused or back; of a publisher, that it speaks or stopped) and, with ``quality``, what
        their receiver reports say."""
        return {
            "states": {tid: t.state for tid in transport_ids if (t := self.worker.transports.get(tid))},
            "events": self.worker.take_adaptation_events(set(transport_ids)),
            "quality": self._quality(transport_ids) if quality else {},
        }

    def _quality(self, transport_ids: list[str]) -> dict[str, dict]:
        """What subscribers report of what they receive (RFC 3550 receiver reports), per transport:
        the worst fraction lost and the mean interarrival jitter (in timestamp units) of its streams."""
        wanted = set(transport_ids)
        by_transport: dict[str, list[dict]] = {}
        for (tid, _ssrc), block in self.worker.forwarder.quality.items():
            if tid in wanted:
                by_transport.setdefault(tid, []).append(block)
        return {
            tid: {
                "fraction_lost": max(b["fraction_lost"] for b in blocks),
                "jitter": sum(b["jitter"] for b in blocks) / len(blocks),
                "streams": len(blocks),
            }
            for tid, blocks in by_transport.items()
        }

    async def stats(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "port": self.worker.port,
            "transports": len(self.worker.transports),
            "fastpath": self.worker.fast,
            "send_threads": self.worker.forwarder.threads if self.worker.fast else 1,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            **self.worker.stats,
        }
