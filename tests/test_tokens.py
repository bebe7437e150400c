"""Token rules, each refusal with its own code (the same checks run on WebSocket join)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import jwt
import pytest

from mediaserver import tokens
from mediaserver.errors import MediaserverError

KEYS = {"AK_1": "s" * 43, "AK_2": "t" * 43}


async def secret_for(kid: str) -> str | None:
    return KEYS.get(kid)


def mint(**kw):
    args = dict(key_id="AK_1", secret=KEYS["AK_1"], room_id="room_a", identity="alice", role="publisher", ttl=60, max_ttl=3600)
    args.update(kw)
    return tokens.mint(**args)


async def code_of(token: str, room: str | None = "room_a") -> str:
    with pytest.raises(MediaserverError) as e:
        await tokens.verify(token, room_id=room, secret_for=secret_for, leeway=0)
    return e.value.code


async def test_valid_token_round_trips():
    token, grant = mint(name="Alice A.", role="moderator")
    got = await tokens.verify(token, room_id="room_a", secret_for=secret_for)
    assert (got.identity, got.name, got.role, got.room_id, got.key_id) == ("alice", "Alice A.", "moderator", "room_a", "AK_1")
    assert got.token_id == grant.token_id and len(got.token_id) == 32
    assert jwt.get_unverified_header(token)["kid"] == "AK_1"


async def test_each_refusal_has_its_code():
    now = time.time()
    expired, _ = mint(now=now - 120, ttl=60)
    early, _ = mint(not_before=now + 600)
    token, _ = mint()
    head, body, sig = token.split(".")
    tampered_body = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(body).replace(b'"publisher"', b'"moderator"')
    ).decode()
    unknown, _ = mint(key_id="AK_9", secret="x" * 43)
    other_secret, _ = mint(secret=KEYS["AK_2"])
    assert await code_of(expired) == "token_expired"
    assert await code_of(early) == "token_not_yet_valid"
    assert await code_of(f"{head}.{tampered_body}.{sig}") == "token_invalid_signature"
    assert await code_of(other_secret) == "token_invalid_signature"
    assert await code_of(token, room="room_b") == "token_wrong_room"
    assert await code_of(unknown) == "token_unknown_key"
    assert await code_of("not-a-jwt") == "token_malformed"
    assert await code_of("a.b.c") == "token_malformed"
    none_alg = jwt.encode({"sub": "x"}, key=None, algorithm="none", headers={"kid": "AK_1"})
    assert await code_of(none_alg) == "token_malformed"


def test_mint_limits():
    with pytest.raises(MediaserverError) as e:
        mint(ttl=3601)
    assert e.value.code == "token_ttl_too_long"
    with pytest.raises(MediaserverError) as e:
        mint(role="admin")
    assert e.value.code == "invalid_request"
    # The cap counts from when the token is made, not from its not_before.
    with pytest.raises(MediaserverError) as e:
        mint(ttl=3600, not_before=time.time() + 60)
    assert e.value.code == "token_ttl_too_long"
    _, later = mint(ttl=1800, not_before=time.time() + 1800)
    assert later.expires_at <= time.time() + 3600 + 1
    _, grant = mint(ttl=3600)
    assert grant.expires_at - time.time() == pytest.approx(3600, abs=2)


def test_reconnect_tokens():
    rt = tokens.mint_reconnect("k" * 32, session_id="sess_1", participant_id="part_1", ttl=60)
    assert tokens.verify_reconnect(rt, "k" * 32) == ("sess_1", "part_1")
    # Written by hand: PyJWT reads it as one of its own.
    claims = jwt.decode(rt, "k" * 32, algorithms=["HS256"], audience=tokens.RECONNECT_AUDIENCE)
    assert (claims["sid"], claims["pid"], claims["exp"] - claims["iat"]) == ("sess_1", "part_1", 60)
    assert jwt.get_unverified_header(rt) == {"alg": "HS256", "typ": "JWT"}
    with pytest.raises(MediaserverError) as e:
        tokens.verify_reconnect(rt, "other" * 8)
    assert e.value.code == "token_malformed"
    old = tokens.mint_reconnect("k" * 32, session_id="s", participant_id="p", ttl=1, now=time.time() - 10)
    with pytest.raises(MediaserverError) as e:
        tokens.verify_reconnect(old, "k" * 32)
    assert e.value.code == "reconnect_expired"
    # A participant token is not a reconnect token (different audience and secret).
    token, _ = mint()
    with pytest.raises(MediaserverError):
        tokens.verify_reconnect(token, KEYS["AK_1"])


# PyJWT is the reference for ``tokens.verify`` (which checks HS256 itself, 10x faster): given
# the same token, both must accept it with the same claims or refuse it with the same code.

async def reference_verify(token: str, secret: str | None, room: str | None, leeway: float):
    """What ``verify`` answered when it called ``jwt.decode`` (its code before it checked
    tokens itself): the grant's fields, or the refusal's code."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return "token_malformed"
    if header.get("alg") != "HS256" or not isinstance(header.get("kid"), str):
        return "token_malformed"
    if secret is None:
        return "token_unknown_key"
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], leeway=leeway, options={"require": ["exp", "nbf", "sub", "jti"]})
    except jwt.ExpiredSignatureError:
        return "token_expired"
    except jwt.ImmatureSignatureError:
        return "token_not_yet_valid"
    except jwt.InvalidSignatureError:
        return "token_invalid_signature"
    except jwt.PyJWTError:
        return "token_malformed"
    if claims.get("role") not in tokens.ROLES or not isinstance(claims.get("room"), str):
        return "token_malformed"
    if room is not None and claims["room"] != room:
        return "token_wrong_room"
    return (claims["room"], str(claims["sub"]), str(claims.get("name") or claims["sub"]), claims["role"],
            float(claims["exp"]), str(claims["jti"]))


async def our_verify(token: str, room: str | None, leeway: float):
    try:
        g = await tokens.verify(token, room_id=room, secret_for=secret_for, leeway=leeway)
    except MediaserverError as e:
        return e.code
    return (g.room_id, g.identity, g.name, g.role, g.expires_at, g.token_id)


def token_corpus() -> list[str]:
    """Tokens made to pass, and to fail each check one way or another."""
    now = int(time.time())
    base = {"iss": "AK_1", "sub": "alice", "room": "room_a", "name": "Alice", "role": "publisher",
            "iat": now, "nbf": now, "exp": now + 600, "jti": "j1"}
    secret = KEYS["AK_1"]
    claim_sets = [base, {k: v for k, v in base.items() if k not in ("name", "iat", "iss")}]
    for name, values in {
        "exp": [now - 600, now - 3, now + 3, "9999999999", "soon", 1.5e10, True, None, [], {}, 1e400],
        "nbf": [now + 600, now + 3, now - 600, "0", "later", None, False],
        "iat": [now + 600, now + 3, "x", None, 0],
        "sub": [5, None, "", "bob"],
        "jti": [7, None, ""],
        "aud": ["mediaserver:reconnect", "", [], ["x"], None],
        "role": ["admin", None, "moderator"],
        "room": [None, 3, "room_b"],
        "name": [None, "", 4],
    }.items():
        for v in values:
            claim_sets.append({**base, name: v})
    for name in ("exp", "nbf", "sub", "jti", "room", "role"):
        claim_sets.append({k: v for k, v in base.items() if k != name})
    out = []
    for claims in claim_sets:
        try:
            out.append(jwt.encode(claims, secret, algorithm="HS256", headers={"kid": "AK_1"}))
        except (TypeError, ValueError, OverflowError):
            continue  # (PyJWT will not write it: nothing to compare)
    good = out[0]
    head, body, sig = good.split(".")
    out += [
        jwt.encode(base, KEYS["AK_2"], algorithm="HS256", headers={"kid": "AK_1"}),  # another key's secret
        jwt.encode(base, secret * 2, algorithm="HS512", headers={"kid": "AK_1"}),
        jwt.encode(base, None, algorithm="none", headers={"kid": "AK_1"}),
        jwt.encode(base, secret, algorithm="HS256"),  # no kid
        jwt.encode(base, secret, algorithm="HS256", headers={"kid": "AK_9"}),  # a key that does not exist
        jwt.encode(base, secret, algorithm="HS256", headers={"kid": "AK_1", "crit": ["exp"], "exp": 1}),
        jwt.encode(base, secret, algorithm="HS256", headers={"kid": "AK_1", "typ": "JWT", "x": [1]}),
        jwt.api_jws.encode(b"not json", secret, algorithm="HS256", headers={"kid": "AK_1"}),
        jwt.api_jws.encode(b"[1, 2]", secret, algorithm="HS256", headers={"kid": "AK_1"}),
        jwt.api_jws.encode(b"", secret, algorithm="HS256", headers={"kid": "AK_1"}),
        f"{head}.{body}.{sig}=", f"{head}.{body}.{sig}==", f"{head}.{body}.{sig}===", f"{head}=.{body}.{sig}",
        f"{head}.{body}=.{sig}", f"{head}.{body}.{sig[:-1]}", f"{head}.{body}.{sig}A", f"{head}.{body}.!{sig[1:]}",
        f"{head}.{body}.{sig[:-1]}{'B' if sig[-1] == 'A' else 'A'}",  # another signature's last character
        f"{head}.{body[:-1]}{chr(ord(body[-1]) ^ 1)}.{sig}",  # the payload's last character changed
        f"{head}.{body} .{sig}", f"{head}.{body}.{sig}\n", f" {head}.{body}.{sig}", f"{head}.{body}.",
        f".{body}.{sig}", f"{head}..{sig}", "..", "a.b.c", f"{head}.{body}.{sig}.x", f"{head}.{body}",
        f"{head}.{body}.{sig}".replace("-", "+").replace("_", "/"),  # base64, not base64url
    ]
    # Headers PyJWT will not write (a kid that is not a string, no alg), signed by hand.
    for header in ({"alg": "HS256", "kid": 1}, {"kid": "AK_1"}, {"alg": "HS256", "kid": "AK_1", "b64": True, "crit": ["b64"]},
                   {"alg": "HS256", "kid": "AK_1", "crit": []}, {"alg": "HS256", "kid": "AK_1", "crit": "b64", "b64": True},
                   {"alg": "HS256", "kid": "AK_1", "crit": [1]}, {"alg": "HS256", "kid": "AK_1", "crit": ["b64"]},
                   {"alg": "HS256", "kid": "AK_1", "crit": None}, {"alg": "HS256", "kid": "AK_1", "b64": False},
                   {"alg": "HS256", "kid": "AK_1", "b64": False, "crit": ["b64"]}, {"alg": "HS256", "kid": "AK_1", "b64": 0}):
        h = jwt.utils.base64url_encode(json.dumps(header).encode()).decode()
        s = jwt.utils.base64url_encode(hmac.new(secret.encode(), f"{h}.{body}".encode(), hashlib.sha256).digest()).decode()
        out.append(f"{h}.{body}.{s}")
    # A signature whose last character differs only in bits past the end of the 32 bytes
    # (RFC 4648 §3.5: not the canonical encoding; PyJWT refuses it).
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    i = alphabet.index(sig[-1])
    out.append(f"{head}.{body}.{sig[:-1]}{alphabet[i ^ 1]}")
    return out


@pytest.mark.parametrize("leeway", [0.0, 5.0])
async def test_verify_answers_as_pyjwt_does(leeway: float):
    corpus = token_corpus()
    outcomes = set()
    for token in corpus:
        for room in ("room_a", None):
            kid = None
            try:
                kid = jwt.get_unverified_header(token).get("kid")
            except jwt.PyJWTError:
                pass
            want = await reference_verify(token, KEYS.get(kid) if isinstance(kid, str) else None, room, leeway)
            got = await our_verify(token, room, leeway)
            assert got == want, f"{token!r} (room {room}): ours {got!r}, PyJWT's {want!r}"
            outcomes.add(want if isinstance(want, str) else "accepted")
    # The corpus reaches every answer (else it tests less than it seems to).
    assert outcomes == {"accepted", "token_malformed", "token_expired", "token_not_yet_valid", "token_invalid_signature",
                        "token_unknown_key", "token_wrong_room"}
