"""Where a new session's media goes: the region first, then the worker with the most headroom.

- **Region.** The room's ``location_hint`` (an IP address) picks the region its network is
  mapped to (``region_networks``: CIDR -> region); without a hint, the address of the first
  client to connect does; else any region will do. A region with no room left falls back to
  any other (media far away beats no media).
- **Headroom.** Each worker declares a capacity in forwarded packets per second
  (``media_worker_capacity``); its load is what it forwards now, plus what the sessions placed
  on it in the last ``RECENT_SECONDS`` will soon forward (``session_load_estimate`` each: a
  session that just opened forwards nothing yet, and a burst of new ones must not all land on
  the worker that looked idlest). Draining nodes and nodes that are gone take no new sessions.
- **Full.** A worker is full when what it forwards leaves no room for one more session's
  estimate (the sessions just placed steer the choice between workers, but do not make one
  full: a session that never sends media costs nothing). When every worker is full, the
  session is refused with ``no_media_capacity``; sessions already placed are never squeezed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mediaserver.errors import MediaserverError

RECENT_SECONDS = 10.0  # a session placed this recently counts by its estimate, not its traffic


@dataclass
class WorkerLoad:
    name: str
    node: str
    region: str
    available: bool  # its node is alive and not draining
    capacity: float  # forwarded packets/s it takes
    rate: float = 0.0  # forwarded packets/s now
    sessions: int = 0  # unended sessions placed on it
    recent: int = 0  # of those, placed in the last RECENT_SECONDS (their media may not flow yet)


class Placement:
    def __init__(self, *, region_networks: dict[str, str] | None = None, session_load_estimate: float = 1000.0):
        self.networks = [(ipaddress.ip_network(cidr, strict=False), region) for cidr, region in (region_networks or {}).items()]
        # Longest prefix first: a /24 mapped to one region inside a /8 mapped to another wins.
        self.networks.sort(key=lambda nr: -nr[0].prefixlen)
        self.estimate = session_load_estimate

    def region_of(self, address: str | None) -> str | None:
        if not address:
            return None
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        return next((region for net, region in self.networks if ip.version == net.version and ip in net), None)

    def headroom(self, w: WorkerLoad) -> float:
        return w.capacity - w.rate - w.recent * self.estimate

    def choose(self, workers: list[WorkerLoad], *, region: str | None = None, exclude_nodes: set[str] = frozenset()) -> WorkerLoad:
        """The worker a new session goes to (its region's with the most headroom, else anyone's)."""
        room = [w for w in workers if w.available and w.node not in exclude_nodes and w.capacity - w.rate >= self.estimate]
        if not room:
            raise MediaserverError(
                "no_media_capacity",
                "every media server is full (or draining): no new session can start now; try again shortly, "
                "or ask the operator to add capacity",
            )
        local = [w for w in room if region is not None and w.region == region]
        return max(local or room, key=lambda w: (self.headroom(w), -w.sessions, w.name))
