"""Opening sessions and placing them, and the per-team limit on live sessions, without Ray.

The Directory is the store's placement columns (each session's host and media worker, chosen
when it opens) read through this class: any gateway, and any restarted host, finds a session
where it was put. A new session's media goes where ``Placement`` says (its region, the worker
with the most headroom) and its host is the least loaded one on that worker's node.
"""

from __future__ import annotations

import random
import time
from typing import Any, Awaitable, Callable

from mediaserver.control.placement import Placement, WorkerLoad
from mediaserver.control.topology import node_of
from mediaserver.ids import new_id
from mediaserver.store import Store, new_session_row

LOADS_TTL = 1.0  # seconds the hosts' and workers' session counts are reused between placements
UNREAD = object()  # (``open``'s caller has not read the room's session)


class DirectoryCore:
    def __init__(
        self, store: Store, *, default_max_live_sessions: int, hosts: Callable[[], list[str]] | None = None,
        workers: Callable[[], Awaitable[list[WorkerLoad]]] | None = None, placement: Placement | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.default_max_live_sessions = default_max_live_sessions
        self.hosts = hosts or (lambda: [])  # the session hosts there are now
        self.workers = workers  # the media workers there are now, with their loads
        self.placement = placement or Placement()
        self.clock = clock
        self._loads: dict[str, int] = {}
        self._loads_at = -1e9
        self._worker_loads: list[WorkerLoad] = []
        self._workers_at = -1e9

    async def limit_for(self, team_id: str) -> int:
        team = await self.store.get_team(team_id)
        if team and team["max_live_sessions"] is not None:
            return int(team["max_live_sessions"])
        return self.default_max_live_sessions

    async def open_session(self, room: dict, client_address: str | None = None) -> dict:
        """The room's unended session, started (and placed) if there is none (see ``open``)."""
        return (await self.open(room, client_address))[0]

    async def open(self, room: dict, client_address: str | None = None, *, existing: Any = UNREAD) -> tuple[dict, bool]:
        """The room's unended session, started (and placed) if there is none, and whether this
        call created it. ``existing``: the room's unended session (or None) as the caller has
        just read it, so it is not read again.

        A session that is ``ending_soon`` does not count against the team's limit; a join
        that would bring it back to ``live`` is checked like a new session. The store checks
        the limit in the transaction that opens the session, so concurrent first joins of a
        team's rooms cannot pass it together. A session is placed in the region of its room's
        location hint, else of the first client's address.
        """
        if existing is UNREAD:
            existing = await self.store.unended_session(room["id"])
        if existing and existing["status"] == "live":
            return existing, False  # (a join into a live session writes nothing here)
        placement = None
        if existing is None:
            placement = await self.place(new_id("sess"), self.region_for(room, client_address))
        return await self.store.open_session(
            room, self.clock(), default_limit=self.default_max_live_sessions, placement=placement, none_seen=existing is None,
        )

    def region_for(self, room: dict, client_address: str | None = None) -> str | None:
        """The region a room's new session goes to: its location hint's, else its first client's."""
        return self.placement.region_of(room.get("location_hint")) or self.placement.region_of(client_address)

    async def plan(self, room: dict, region: str | None = None) -> dict:
        """A new session for a room that has none, placed (in ``region`` if it can be) but not
        written: its first join writes it, in the transaction that admits that participant
        (``SessionChange.opens``), where the team's limit and the room's one unended session are
        checked. One write per cold join, in the session's host, instead of one here and one there."""
        return new_session_row(room, self.clock(), await self.place(new_id("sess"), region))

    async def place(self, session_id: str, region: str | None = None) -> dict:
        """Where a new session goes: a media worker (by region and headroom), and the host with
        the fewest unended sessions on that worker's node."""
        placement: dict = {"id": session_id}
        hosts = self.hosts()
        if self.workers is not None:
            now = time.monotonic()
            if now - self._workers_at > LOADS_TTL:
                self._worker_loads, self._workers_at = await self.workers(), now
            worker = self.placement.choose(self._worker_loads, region=region)
            worker.sessions += 1  # (counted here until the next look, so a burst spreads too)
            worker.recent += 1
            placement["media_worker"] = worker.name
            near = [h for h in hosts if node_of(h) == worker.node]
            hosts = near or hosts  # (a node's hosts are restarted elsewhere when it goes)
        if hosts:
            placement["host"] = await self._least_loaded(hosts)
        return placement

    def forget_loads(self) -> None:
        """Look at the workers' and hosts' loads afresh at the next placement (a node just went)."""
        self._workers_at = self._loads_at = -1e9

    async def _least_loaded(self, hosts: list[str]) -> str:
        now = time.monotonic()
        if now - self._loads_at > LOADS_TTL:
            self._loads, self._loads_at = await self.store.host_loads(), now
        fewest = min(self._loads.get(h, 0) for h in hosts)
        host = random.choice([h for h in hosts if self._loads.get(h, 0) == fewest])
        self._loads[host] = self._loads.get(host, 0) + 1
        return host

    async def host_of(self, session_id: str) -> str | None:
        """The host a session lives on. One placed nowhere we know (older, or on a host that no
        longer exists) moves to one we do, by a conditional write every gateway agrees on."""
        row = await self.store.get_session(session_id)
        if row is None:
            return None
        hosts = self.hosts()
        if row.get("host") in hosts or not hosts:
            return row.get("host")
        moved = await self.store.place_session(session_id, host=await self._least_loaded(hosts), only_if_host=row.get("host"))
        return moved["host"] if moved else None

    async def live_session_ids(self) -> list[str]:
        return await self.store.unended_session_ids()
