"""TURN for participants: a real coturn (use-auth-secret) on loopback, credentials in the TURN REST
scheme handed out in `joined`, media through the relay (routed with aiortc, peer to peer with
Chromium), and an expired credential refused by coturn itself."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import time

import pytest

from loadtest.peers import join_media, loopback_only_ice, wait_for
from mediaserver.turn import LocalTurn, turn_credentials
from tests.browsers import frames, needs_chromium
from tests.helpers import ServerProcess, create_key, make_room, make_token, server_env

needs_coturn = pytest.mark.skipif(not LocalTurn.installed(), reason="Debian's coturn is not installed (make test installs it)")
pytestmark = needs_coturn
SECRET = "turn-test-secret"


@pytest.fixture(scope="module")
def turn():
    """coturn on 127.0.0.1; a port is tried until one is free (coturn cannot be given port 0)."""
    last = None
    for _ in range(10):
        t = LocalTurn("127.0.0.1", random.randint(20000, 30000), SECRET, relay_ports=(40000, 40999))
        try:
            t.start()
        except RuntimeError as e:
            last = e
            continue
        yield t
        t.stop()
        return
    raise RuntimeError(f"coturn would not start: {last}")


@pytest.fixture(scope="module")
def turn_server(tmp_path_factory, turn):
    data_dir = tmp_path_factory.mktemp("turnserver")
    env = server_env(data_dir, turn_urls=json.dumps(turn.urls), turn_secret=SECRET,
                     stun_urls=json.dumps(turn.stun_urls), turn_ttl=600)
    srv = ServerProcess(data_dir=data_dir, env=env)
    srv.key = create_key(env)
    srv.start()
    yield srv
    assert srv.stop() == 0


def test_credentials_follow_the_turn_rest_scheme():
    username, password = turn_credentials("s3cret", "part_1", 600, now=1_000_000)
    assert username == "1000600:part_1"
    assert password == base64.b64encode(hmac.new(b"s3cret", b"1000600:part_1", hashlib.sha1).digest()).decode()


async def allocate(turn: LocalTurn, username: str, password: str) -> tuple[str, int]:
    """A relay allocation made with these credentials (aioice's TURN client); its relayed address."""
    from aioice import turn as aturn

    transport, _ = await aturn.create_turn_endpoint(asyncio.DatagramProtocol, (turn.host, turn.port), username, password)
    try:
        return transport.get_extra_info("sockname")
    finally:
        transport.close()


async def test_joined_carries_credentials_coturn_accepts_until_they_expire(turn_server, turn):
    async with turn_server.http() as http:
        room = await make_room(http, name="turn creds", media_mode="routed")
        c = await join_media(turn_server, http, room, "ann", "moderator")
        try:
            servers = c.joined["ice_servers"]
            assert {"urls": turn.stun_urls} in servers
            relay = next(s for s in servers if any(u.startswith("turn:") for u in s["urls"]))
            expiry, who = relay["username"].split(":", 1)
            assert who == c.id and 590 <= int(expiry) - time.time() <= 610
            relayed = await asyncio.wait_for(allocate(turn, relay["username"], relay["credential"]), 10)
            assert relayed[0] == "127.0.0.1"
            # Expired a second ago, correctly signed: coturn refuses it.
            old_user, old_pass = turn_credentials(SECRET, c.id, -1)
            with pytest.raises(Exception):
                await asyncio.wait_for(allocate(turn, old_user, old_pass), 10)
            # Signed with another secret: refused too.
            bad_user, bad_pass = turn_credentials("not-the-secret", c.id, 600)
            with pytest.raises(Exception):
                await asyncio.wait_for(allocate(turn, bad_user, bad_pass), 10)
            # A resume brings fresh ones.
            await c.ws.close()
            await asyncio.sleep(0.2)
            resumed = await c.resume()
            assert resumed["type"] == "joined" and resumed["ice_servers"]
        finally:
            await c.close()


async def test_routed_media_through_turn_only(turn_server, turn):
    """Clients that reach nothing but the TURN server (relay candidates only) still send to and
    receive from the media worker: the worker stays ICE-lite, the relay talks to it."""
    loopback_only_ice()
    allocations = turn.allocations()
    async with turn_server.http() as http:
        room = await make_room(http, name="turn routed", media_mode="routed")
        pub = await join_media(turn_server, http, room, "pub", "moderator", ice="relay")
        sub = await join_media(turn_server, http, room, "sub", "subscriber", ice="relay")
        try:
            reply = await pub.publish(audio=False)
            assert reply["type"] == "answer", reply
            try:
                await wait_for(lambda: sub.got.video_frames >= 10, timeout=40)
            except AssertionError:
                raise AssertionError(f"{sub.got.video_frames} frames; the server said {sub.adaptation}, errors {sub.errors}; "
                                     f"server log: {turn_server.log()[-3000:]}") from None
            pair = sub.sub_pc.getTransceivers()[0].receiver.transport.transport.iceGatherer.getLocalCandidates()
            assert pair and all(c.type == "relay" for c in pair), [c.type for c in pair]
            assert turn.allocations() >= allocations + 2, "both peers allocated a relay"
        finally:
            await pub.close()
            await sub.close()


@needs_chromium
async def test_browsers_peer_to_peer_through_turn(turn_server, turn, browser):
    """Two Chromium pages in a relayed room, relay candidates only: each decodes the other's
    video through coturn; no media worker forwards a packet."""
    async with turn_server.http() as http:
        room = await make_room(http, name="turn p2p", media_mode="relayed")
        allocations = turn.allocations()
        before = sum(w["counters"].get("rtp_in", 0) for w in (await http.get("/v1/server")).json()["workers"])
        pages = []
        for identity in ("ann", "bob"):
            page = await (await browser.new_context()).new_page()
            token = await make_token(http, room["id"], identity, "moderator")
            await page.goto(f"{turn_server.url}/join/{room['id']}?token={token}&autojoin=1&ice=relay")
            pages.append(page)
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            counts = [await frames(p) for p in pages]
            if all(c and max(c) > 10 for c in counts):
                break
            assert asyncio.get_running_loop().time() < deadline, counts
            await asyncio.sleep(0.5)
        for page in pages:
            types = await page.evaluate("""async () => {
                const out = [];
                for (const l of window.room.links.values()) {
                  const stats = await l.pc.getStats();
                  stats.forEach((s) => { if (s.type === "local-candidate") out.push(s.candidateType); });
                }
                return out;
            }""")
            assert types and set(types) == {"relay"}, types
        assert turn.allocations() >= allocations + 2
        after = sum(w["counters"].get("rtp_in", 0) for w in (await http.get("/v1/server")).json()["workers"])
        assert after == before, "peer-to-peer media must not reach a media worker"
