"""Participant tokens and reconnect tokens (JWT, HS256).

PyJWT writes participant tokens and reads reconnect tokens; a participant token is checked on
every join by ``verify`` with ``hmac`` (a tenth of PyJWT's cost), held to PyJWT's answers by
tests/test_tokens.py.

A participant token is minted with an API key's secret; its header carries the
key id (``kid``) so the gateway knows which secret verifies it. Claims:
``room``, ``sub`` (identity), ``name``, ``role``, ``exp``, ``nbf``, ``iat``, ``jti``.

A reconnect token is signed with the server's own secret and names one
participant of one session; whether it may still resume is the session's call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

import jwt
import orjson

from mediaserver.errors import MediaserverError

ROLES = ("moderator", "publisher", "subscriber")
ALGORITHM = "HS256"
RECONNECT_AUDIENCE = "mediaserver:reconnect"


@dataclass(frozen=True)
class Grant:
    room_id: str
    identity: str
    name: str
    role: str
    key_id: str
    expires_at: float
    token_id: str


def mint(
    *,
    key_id: str,
    secret: str,
    room_id: str,
    identity: str,
    role: str,
    name: str | None = None,
    ttl: int,
    max_ttl: int,
    not_before: float | None = None,
    now: float | None = None,
) -> tuple[str, Grant]:
    if role not in ROLES:
        raise MediaserverError("invalid_request", f"role must be one of {', '.join(ROLES)}")
    if ttl <= 0:
        raise MediaserverError("invalid_request", "ttl must be a positive number of seconds")
    if ttl > max_ttl:
        raise MediaserverError("token_ttl_too_long", f"ttl may be at most {max_ttl} seconds ({max_ttl // 86400} days)")
    now = time.time() if now is None else now
    nbf = now if not_before is None else not_before
    if nbf + ttl > now + max_ttl:
        # The cap is from when the token is made: a later not_before must not stretch it.
        raise MediaserverError(
            "token_ttl_too_long",
            f"a token expires at most {max_ttl // 86400} days after it is made; with this not_before and ttl it would "
            f"expire {(nbf + ttl - now) / 86400:.1f} days from now: bring not_before closer or shorten the ttl",
        )
    grant = Grant(
        room_id=room_id,
        identity=identity,
        name=name or identity,
        role=role,
        key_id=key_id,
        expires_at=int(nbf + ttl),
        token_id=uuid.uuid4().hex,
    )
    claims = {
        "iss": key_id,
        "sub": identity,
        "room": room_id,
        "name": grant.name,
        "role": role,
        "iat": int(now),
        "nbf": int(nbf),
        "exp": grant.expires_at,
        "jti": grant.token_id,
    }
    token = jwt.encode(claims, secret, algorithm=ALGORITHM, headers={"kid": key_id})
    return token, grant


def peek(token: str, room: bool = True) -> tuple[str | None, str | None]:
    """The key ID (``kid``) and (``room``: if asked) room claim of a token, not verified: what to
    fetch before verifying it (``verify`` says what is wrong with a token this cannot read;
    None then)."""
    header = _unverified(token, 0)
    claims = _unverified(token, 1) if room else None
    kid = header.get("kid") if header else None
    claim = claims.get("room") if claims else None
    return (kid if isinstance(kid, str) else None), (claim if isinstance(claim, str) else None)


def _unverified(token: str, part: int) -> dict | None:
    """A token's header (0) or claims (1) as written, None if unreadable. Only for what to look
    up before verifying it: ``verify`` is the one that checks."""
    try:
        value = orjson.loads(_segment(token.split(".", 2)[part], "header" if part == 0 else "payload"))
    except (AttributeError, IndexError, _Refused, orjson.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


class _Refused(Exception):
    """A token the checks below refuse: ``kind`` is the PyJWT error it corresponds to."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64(data: bytes) -> bytes:
    """base64url without padding (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _segment(text: str, name: str) -> bytes:
    """One base64url segment of a compact JWS (RFC 7515 §2, §7.1: no padding; a trailing "=" or
    two is let through, as PyJWT does), decoded. Refused: characters outside the alphabet, and
    encodings that are not the canonical one (stray bits in the last character)."""
    stripped = text.rstrip("=")
    if len(text) - len(stripped) > 2 or (stripped != text and len(text) % 4) or len(stripped) % 4 == 1:
        raise _Refused("decode", f"invalid {name} padding")
    if not _BASE64URL.fullmatch(stripped):
        raise _Refused("decode", f"invalid {name} padding")
    raw = base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    if _b64(raw).decode() != stripped:
        raise _Refused("decode", f"invalid {name} padding")
    return raw


def _extensions_understood(header: dict) -> bool:
    """RFC 7515 §4.1.11: the extensions a token marks critical must be understood. As with
    PyJWT, that is only "b64" (RFC 7797), and only its default (a payload encoded as usual)."""
    crit = header.get("crit")
    if crit is not None or "crit" in header:
        if not isinstance(crit, list) or not crit or any(ext != "b64" or ext not in header for ext in crit):
            return False
    return header.get("b64", True) is not False


def _numeric(claims: dict, name: str) -> int:
    try:
        return int(claims[name])  # (as PyJWT reads NumericDate claims)
    except (ValueError, TypeError, OverflowError):
        raise _Refused("decode", f"the {name} claim must be an integer") from None


def _check_hs256(token: str, secret: str, leeway: float) -> dict:
    """The claims of an HS256 token after the checks ``jwt.decode`` makes for ``verify``'s
    options (RFC 7515 §5.2 for the signature, RFC 7519 §7.2 and §4.1 for the claims), in
    PyJWT's order, so a token fails the way it fails there. PyJWT 2.15 takes 0.18 ms a token
    (character by character base64 checks, key-format probes); this, 20 us. tests/test_tokens.py
    holds the two to the same answer on tokens made to fail every check."""
    head, payload_text, signature_text = token.split(".")  # (the header is read by the caller)
    payload = _segment(payload_text, "payload")
    signature = _segment(signature_text, "crypto")
    expected = hmac.new(secret.encode(), f"{head}.{payload_text}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise _Refused("signature", "Signature verification failed")
    try:
        claims = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise _Refused("decode", "invalid payload string") from None
    if not isinstance(claims, dict):
        raise _Refused("decode", "invalid payload string: must be a json object")
    for name in ("exp", "nbf", "sub", "jti"):
        if claims.get(name) is None:
            raise _Refused("decode", f'token is missing the "{name}" claim')
    now = time.time()
    if "iat" in claims and _numeric(claims, "iat") > now + leeway:
        raise _Refused("immature", "the token is not yet valid (iat)")
    if _numeric(claims, "nbf") > now + leeway:
        raise _Refused("immature", "the token is not yet valid (nbf)")
    if _numeric(claims, "exp") <= now - leeway:
        raise _Refused("expired", "signature has expired")
    if claims.get("aud"):  # (an audience we were not asked to accept: a reconnect token, say)
        raise _Refused("decode", "invalid audience")
    if not isinstance(claims["sub"], str):
        raise _Refused("decode", "subject must be a string")
    if not isinstance(claims["jti"], str):
        raise _Refused("decode", "JWT ID must be a string")
    return claims


async def verify(
    token: str,
    *,
    room_id: str | None,
    secret_for: Callable[[str], Awaitable[str | None]],
    leeway: float = 5.0,
) -> Grant:
    """Check a participant token; each way of failing has its own error code."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise MediaserverError("token_malformed", "the token is not a JWT (expected three dot-separated parts)")
    header = _unverified(token, 0)
    if header is None:
        raise MediaserverError("token_malformed", "the token header cannot be decoded")
    kid = header.get("kid")
    if header.get("alg") != ALGORITHM or not isinstance(kid, str) or not _extensions_understood(header):
        raise MediaserverError("token_malformed", f"the token must be {ALGORITHM} with a 'kid' header naming the API key")
    secret = await secret_for(kid)
    if secret is None:
        raise MediaserverError("token_unknown_key", f"the API key {kid!r} that signed this token does not exist or was revoked")
    try:
        claims = _check_hs256(token, secret, leeway)
    except _Refused as e:
        if e.kind == "expired":
            raise MediaserverError("token_expired", "the token has expired; ask the application for a new one")
        if e.kind == "immature":
            raise MediaserverError("token_not_yet_valid", "the token is not valid yet (its nbf is in the future)")
        if e.kind == "signature":
            raise MediaserverError("token_invalid_signature", "the token's signature does not match; it was altered or signed with another secret")
        raise MediaserverError("token_malformed", f"the token is not acceptable: {e}")
    role = claims.get("role")
    token_room = claims.get("room")
    if role not in ROLES or not isinstance(token_room, str):
        raise MediaserverError("token_malformed", "the token lacks a valid 'room' or 'role' claim")
    if room_id is not None and token_room != room_id:
        raise MediaserverError("token_wrong_room", f"this token is for room {token_room!r}, not {room_id!r}")
    return Grant(
        room_id=token_room,
        identity=str(claims["sub"]),
        name=str(claims.get("name") or claims["sub"]),
        role=role,
        key_id=kid,
        expires_at=float(claims["exp"]),
        token_id=str(claims["jti"]),
    )


def mint_reconnect(secret: str, *, session_id: str, participant_id: str, ttl: float, now: float | None = None) -> str:
    now = time.time() if now is None else now
    claims = {
        "aud": RECONNECT_AUDIENCE,
        "sid": session_id,
        "pid": participant_id,
        "iat": int(now),
        "exp": int(now + ttl),
    }
    # (written here, as PyJWT writes it, for a fifth of its cost: one per join)
    signing_input = _HEADER + b"." + _b64(orjson.dumps(claims))
    signature = _b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + signature).decode()


_HEADER = _b64(b'{"alg":"HS256","typ":"JWT"}')


def verify_reconnect(token: str, secret: str) -> tuple[str, str]:
    """Return (session_id, participant_id) from a reconnect token."""
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], audience=RECONNECT_AUDIENCE)
    except jwt.ExpiredSignatureError:
        raise MediaserverError("reconnect_expired", "the reconnect window has passed; join again with a participant token")
    except jwt.PyJWTError:
        raise MediaserverError("token_malformed", "the reconnect token is not valid")
    return str(claims["sid"]), str(claims["pid"])
