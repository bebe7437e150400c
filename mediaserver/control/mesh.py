"""A relayed (peer-to-peer) session's media: the server carries signaling, the peers carry media.

Each publisher offers one peer connection to each room mate (publisher -> receiver, so the
offerer of a link is always its publisher and offers never cross); the server passes the offer,
the answer and trickled ICE candidates between the two over their WebSockets, and keeps the
rules: only a participant on the stage publishes, a link joins two participants of the same
room (breakout rooms split the mesh), and a participant who leaves the stage, the room or the
session loses its links (the server tells both ends; the peers close them). Media never reaches
a media worker. The same calls as ``MediaSession`` where they mean something here, so a
``SessionUnit`` holds either.
"""

from __future__ import annotations

from typing import Any, Callable

from mediaserver.control.media import Track
from mediaserver.errors import MediaserverError

MAX_TRACKS = 4  # per publisher: camera, microphone, a screen and its audio
MAX_PENDING = 256  # signaling messages waiting for one participant (a client that stopped reading)


class PeerMesh:
    def __init__(self, room_of: Callable[[str], str | None] = lambda pid: None):
        self.room_of = room_of
        self.present: set[str] = set()
        self.tracks: dict[str, Track] = {}
        self.outbox: dict[str, list[dict]] = {}
        self.subscribers: dict[str, Any] = {}  # (none: nobody receives from the server)
        self.publish_transport: dict[str, str] = {}

    # Publishing ---------------------------------------------------------------------

    def publishing(self, participant_id: str) -> list[Track]:
        return [t for t in self.tracks.values() if t.participant_id == participant_id]

    def _drop_tracks(self, participant_id: str) -> list[Track]:
        gone = self.publishing(participant_id)
        for t in gone:
            del self.tracks[t.id]
        return gone

    def publish(self, participant_id: str, tracks: list[dict]) -> tuple[list[Track], list[Track]]:
        """What a participant now sends its room mates ([{"name", "kind"}]): (added, removed)."""
        if len(tracks) > MAX_TRACKS:
            raise MediaserverError("invalid_request", f"at most {MAX_TRACKS} tracks per participant")
        wanted = {f"{participant_id}/{t['name']}": t["kind"] for t in tracks}
        removed = [t for t in self.publishing(participant_id) if t.id not in wanted]
        for t in removed:
            del self.tracks[t.id]
        added = []
        for tid, kind in wanted.items():
            if tid not in self.tracks:
                t = Track(id=tid, participant_id=participant_id, kind=kind, ssrc=0, codec={"name": "peer"})
                self.tracks[tid] = added.append(t) or t
        return added, removed

    async def unpublish(self, participant_id: str) -> list[Track]:
        """Off the stage: its links close (the server tells each receiver; the publisher's client
        closes its side on its own stage_left)."""
        gone = self._drop_tracks(participant_id)
        if gone:
            self._close_links(participant_id, "off_stage")
        return gone

    async def set_muted(self, participant_id: str, track_id: str, muted: bool) -> Track:
        t = self.tracks.get(track_id)
        if t is None or t.participant_id != participant_id:
            raise MediaserverError("track_not_found", "no such track of yours")
        t.muted = muted
        return t

    async def set_subscribed(self, participant_id: str, track_id: str, subscribed: bool) -> None:
        raise MediaserverError("relayed_media", "in a relayed room, receiving is up to your peer connections")

    # Signaling ------------------------------------------------------------------------

    def signal(self, sender: str, to: str, link: str, payload: dict) -> None:
        """Pass one offer, answer or candidate from ``sender`` to ``to`` on the link whose
        publisher is ``link`` (``sender`` or ``to``)."""
        if to == sender or to not in self.present:
            raise MediaserverError("participant_not_found", "that participant is not in this session")
        if link not in (sender, to):
            raise MediaserverError("invalid_request", "a link joins its publisher and one receiver: link must be one of you")
        if self.room_of(sender) != self.room_of(to):
            raise MediaserverError("not_in_your_room", "that participant is in another room")
        if not self.publishing(link):
            raise MediaserverError("not_publishing", "that link's publisher sends nothing now: publish first")
        kind = payload.get("kind")
        if kind == "offer" and sender != link:
            raise MediaserverError("invalid_request", "only a link's publisher makes offers on it")
        if kind == "answer" and sender == link:
            raise MediaserverError("invalid_request", "only a link's receiver answers on it")
        box = self.outbox.setdefault(to, [])
        if len(box) >= MAX_PENDING:
            raise MediaserverError("rate_limited", "that participant is not reading its messages; try again later")
        box.append({"type": "signal", "from": sender, "link": link, **payload})

    def _close_links(self, participant_id: str, reason: str, only_as_publisher: bool = True) -> None:
        for other in self.present:
            if other != participant_id:
                self._tell(other, {"type": "peer_closed", "participant_id": participant_id,
                                   "as_publisher_only": only_as_publisher, "reason": reason})

    def _tell(self, pid: str, msg: dict) -> None:
        box = self.outbox.setdefault(pid, [])
        box[:] = [m for m in box if not (m["type"] == "signal" and m.get("from") == msg.get("participant_id"))]
        box.append(msg)

    # Membership --------------------------------------------------------------------------

    async def join(self, participant_id: str) -> None:
        self.present.add(participant_id)

    async def leave(self, participant_id: str) -> list[Track]:
        gone = self._drop_tracks(participant_id)
        self.present.discard(participant_id)
        self.outbox.pop(participant_id, None)
        self._close_links(participant_id, "left", only_as_publisher=False)
        return gone

    async def restart(self, participant_id: str, reason: str) -> list[Track]:
        """It reconnected: its peer connections went with its old page; it publishes again."""
        gone = await self.leave(participant_id)
        await self.join(participant_id)
        self.outbox[participant_id] = [{"type": "media_reset", "reason": reason}]
        return gone

    def reset(self, reason: str) -> list[Track]:
        """Everyone starts over (the session was rebuilt after a fault: who published is lost)."""
        gone = list(self.tracks.values())
        self.tracks.clear()
        for pid in self.present:
            self.outbox[pid] = [{"type": "media_reset", "reason": reason}]
        return gone

    async def refresh_all(self) -> None:
        """Rooms changed (breakout rooms opened, closed, someone moved): links across rooms close;
        the clients open the ones their new room needs."""
        for pid in self.present:
            self._tell(pid, {"type": "peers_changed"})

    # What a MediaSession also answers -------------------------------------------------------

    async def lose_worker(self, name: str, reason: str) -> None:
        return None

    def worker_names(self) -> list[str]:
        return []

    def transports(self, worker: str | None = None) -> dict[str, tuple[str, str]]:
        return {}

    def take_outbox(self, participant_id: str) -> list[dict]:
        return self.outbox.pop(participant_id, [])

    def track_list(self) -> list[dict[str, Any]]:
        return [t.public() for t in self.tracks.values()]
