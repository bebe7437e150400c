"""ICE-lite (RFC 8445 section 2.5): answer authenticated binding requests, learn the peer's address.

A lite agent never sends checks; it answers the full agent's checks when USERNAME
is ``<our ufrag>:<their ufrag>`` and MESSAGE-INTEGRITY verifies with our password
(RFC 8445 section 7.3, RFC 5389 section 10.1.2), and sends traffic to the
address the latest valid check came from. Consent (RFC 7675) lapses when no
valid check arrives for ``CONSENT_TIMEOUT`` seconds.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Callable, Iterable

from aioice import stun

CONSENT_TIMEOUT = 30.0  # RFC 7675 section 5.1
_ALPHABET = string.ascii_letters + string.digits


def random_ice_string(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


@dataclass
class IceCredentials:
    # RFC 8445 section 5.3: ufrag at least 4 characters, password at least 22.
    ufrag: str = field(default_factory=lambda: random_ice_string(8))
    pwd: str = field(default_factory=lambda: random_ice_string(24))


class AllowedNetworks:
    """The client networks the worker answers; anything else is ignored (no amplification)."""

    def __init__(self, networks: Iterable[str]):
        self.networks = [ip_network(n, strict=False) for n in networks]

    def __contains__(self, host: str) -> bool:
        try:
            addr = ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(addr in n for n in self.networks)


@dataclass
class CheckResult:
    response: bytes
    ufrag: str
    use_candidate: bool


def answer_binding(
    data: bytes, addr: tuple[str, int], password_for: Callable[[str], str | None]
) -> CheckResult | None:
    """The response to a valid binding request, or None for anything we must ignore.

    ``password_for(local_ufrag)`` gives our password for an issued ufrag.
    """
    try:
        msg = stun.parse_message(data)  # also verifies FINGERPRINT when present
    except ValueError:
        return None
    if msg.message_method != stun.Method.BINDING or msg.message_class != stun.Class.REQUEST:
        return None  # lite agents send no requests, so responses and indications are not for us
    username = msg.attributes.get("USERNAME")
    if not isinstance(username, str) or ":" not in username:
        return None
    local_ufrag = username.split(":", 1)[0]
    pwd = password_for(local_ufrag)
    if pwd is None or not msg.check_message_integrity(pwd.encode()):
        return None  # RFC 5389 10.1.2 would answer 401; silence leaks nothing to a prober
    response = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.RESPONSE,
        transaction_id=msg.transaction_id,
    )
    response.attributes["XOR-MAPPED-ADDRESS"] = addr
    response.add_message_integrity(pwd.encode())  # adds FINGERPRINT too
    return CheckResult(bytes(response), local_ufrag, "USE-CANDIDATE" in msg.attributes)
