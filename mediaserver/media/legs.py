"""The keys of media legs between workers (a session whose receivers span several workers has
each track relayed once per extra worker, over SRTP between the two).

Kept apart from the worker so session hosts derive keys without loading the media plane.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

LEG_PROFILE = "SRTP_AEAD_AES_128_GCM"  # the cheaper profile (RFC 7714)
LEG_KEY_SIZE = 16 + 12  # its master key and salt


def leg_keys(secret: str | None = None, a: str = "", b: str = "") -> tuple[str, str]:
    """Key material (key + salt, hex) for each direction of the leg from worker ``a`` to worker
    ``b``: derived from the deployment's ``secret`` (every owner of a session that crosses
    between the two derives the same, so a leg shared by many sessions keeps one pair of keys),
    or fresh random ones without it."""
    if secret is None:
        return secrets.token_hex(LEG_KEY_SIZE), secrets.token_hex(LEG_KEY_SIZE)

    def derive(frm: str, to: str) -> str:
        return hmac.new(secret.encode(), f"media leg {frm} > {to}".encode(), hashlib.sha256).digest()[:LEG_KEY_SIZE].hex()

    return derive(a, b), derive(b, a)
