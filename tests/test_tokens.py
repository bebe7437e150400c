"""Token rules, each refusal with its own code (the same checks run on WebSocket join)."""

from __future__ import annotations

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
