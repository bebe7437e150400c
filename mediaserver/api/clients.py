"""Where a client connects from, as far as this gateway can tell."""

from __future__ import annotations

import ipaddress
from typing import Iterable


class ClientAddress:
    """The peer's address, or, when the peer is a trusted proxy, the address the proxies say
    they saw: the rightmost entry of ``X-Forwarded-For`` that is not itself a trusted proxy
    (an entry further left could have been written by the client)."""

    def __init__(self, trusted_proxies: Iterable[str]):
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in trusted_proxies]

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip.version == n.version and ip in n for n in self.trusted)

    def __call__(self, peer: str | None, forwarded_for: str | None) -> str | None:
        if peer is None or not forwarded_for or not self._trusted(peer):
            return peer
        for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
            if not self._trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer  # a garbled header: believe the peer
        return peer
