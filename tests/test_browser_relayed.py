"""Relayed (peer-to-peer) rooms on the meeting page: three Chromium participants each decode the
other two directly (no media worker forwards a packet), a removed participant's links close, and
a fifth participant is refused with a message that says what to do."""

from __future__ import annotations

import asyncio

from tests.browsers import ARTIFACTS, needs_chromium
from tests.helpers import make_room, make_token

pytestmark = needs_chromium

LINKS = """() => [...window.room.links.values()].map((l) => [l.publisher, l.receiver, l.pc.connectionState])"""


async def decoded_from(page) -> dict[str, int]:
    """Frames decoded so far, by the participant they come from."""
    out: dict[str, int] = {}
    for s in await page.evaluate("window.room ? window.room.receivedVideo() : []"):
        out[s["participantId"]] = max(out.get(s["participantId"], 0), s["framesDecoded"])
    return out


async def rtp_in(http) -> int:
    return sum(w["counters"].get("rtp_in", 0) for w in (await http.get("/v1/server")).json()["workers"])


async def until(check, timeout: float = 60, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.5)


async def test_three_browsers_in_a_mesh(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    async with server.http() as http:
        room = await make_room(http, name="Mesh call", media_mode="relayed")
        before = await rtp_in(http)
        pages, ids, errors = [], [], []
        for identity, role in (("ann", "moderator"), ("bob", "publisher"), ("cat", "publisher")):
            page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
            page.on("pageerror", lambda e, who=identity: errors.append(f"{who}: {e}"))
            page.on("console", lambda m, who=identity: errors.append(f"{who}: {m.text}") if m.type == "error" else None)
            await page.goto(f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], identity, role)}")
            await page.get_by_role("button", name="Join now").click()
            await page.wait_for_function("window.room && window.room.me && window.room.isPublishing")
            ids.append(await page.evaluate("window.room.me.id"))
            pages.append(page)
            if len(pages) == 2:  # two first: a pair, then a third joins the mesh
                async def pair() -> bool:
                    got = [await decoded_from(p) for p in pages]
                    return got[0].get(ids[1], 0) > 10 and got[1].get(ids[0], 0) > 10
                await until(pair, what="the first two must decode each other")

        async def everyone() -> bool:
            for me, page in zip(ids, pages):
                got = await decoded_from(page)
                if any(got.get(other, 0) <= 10 for other in ids if other != me):
                    return False
            return True

        await until(everyone, what="each page must decode both others")
        first = [await decoded_from(p) for p in pages]

        async def going_on() -> bool:
            later = [await decoded_from(p) for p in pages]
            return all(later[i].get(k, 0) > first[i][k] + 10 for i in range(3) for k in first[i])
        await until(going_on, timeout=15, what=f"decoding must keep going: {first}")
        assert await rtp_in(http) == before, "peer-to-peer media must not reach a media worker"
        # Three tiles of video on each page: mine and the two others' (a loaded machine may take
        # a moment to paint a frame of the last one).
        tiles = "[...document.querySelectorAll('#grid .tile')].map((t) => [t.id, t.querySelector('video').videoWidth])"
        for page in pages:
            async def three(page=page) -> bool:
                return sum(1 for _, w in await page.evaluate(tiles) if w > 0) == 3
            try:
                await until(three, timeout=15)
            except AssertionError:
                raise AssertionError(f"tiles {await page.evaluate(tiles)}, on stage "
                                     f"{await page.evaluate('[...window.room.participants.values()].map((p) => [p.id, p.on_stage])')}")
        await pages[0].screenshot(path=str(ARTIFACTS / "meeting-relayed.png"))

        # The pages report what they receive (no worker sees it): the session's record grades each.
        sid = await pages[0].evaluate("window.room.session.id")

        async def graded() -> bool:
            parts = (await http.get(f"/v1/sessions/{sid}")).json()["participants"]
            return all(p["quality"] and p["quality"]["grade"] in ("good", "fair") for p in parts if p["id"] in ids)

        await until(graded, timeout=25, what="each page's own quality reports must reach the record")

        # A fourth and fifth: the fifth is refused, with what to do.
        extra = []
        for identity in ("dan", "eve"):
            page = await (await browser.new_context()).new_page()
            await page.goto(f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], identity, 'subscriber')}&media=off")
            await page.get_by_role("button", name="Join now").click()
            extra.append(page)
        await extra[0].wait_for_function("window.room && window.room.me")
        await extra[1].locator("#status", has_text="routed").wait_for(timeout=15000)

        # Ann removes Cat: every link with Cat closes, on every page; Ann and Bob go on.
        cat = ids[2]
        await pages[0].evaluate(f"window.room.removeParticipant('{cat}')")

        async def cat_gone() -> bool:
            for page in (pages[0], pages[1], extra[0]):
                if any(cat in (p, r) for p, r, _ in await page.evaluate(LINKS)):
                    return False
            return True

        await until(cat_gone, timeout=20, what="links with the removed participant must close")
        assert await pages[2].evaluate("window.room.links.size") == 0
        mid = [await decoded_from(p) for p in pages[:2]]

        async def still() -> bool:
            end = [await decoded_from(p) for p in pages[:2]]
            return end[0].get(ids[1], 0) > mid[0][ids[1]] and end[1].get(ids[0], 0) > mid[1][ids[0]]
        await until(still, timeout=15, what="Ann and Bob go on decoding each other")
        assert [e for e in errors if "removed" not in e.lower()] == [], errors


async def test_an_auto_room_goes_from_direct_to_routed_when_a_third_joins(server, browser):
    """Two pages peer to peer; a third joins; within 2 s of the switch every page decodes both
    others through the media worker, and the first two's video never stops for long."""
    async with server.http() as http:
        room = await make_room(http, name="Auto call", media_mode="auto")
        pages, ids = [], []

        async def open_page(identity: str):
            page = await (await browser.new_context()).new_page()
            await page.goto(f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], identity, 'moderator')}&autojoin=1")
            await page.wait_for_function("window.room && window.room.me && window.room.isPublishing")
            # Note when this page hears of the switch (its own clock).
            await page.evaluate("window.room.addEventListener('media_mode_changed', () => { window.switchedAt = performance.now(); })")
            pages.append(page)
            ids.append(await page.evaluate("window.room.me.id"))

        for who in ("ann", "bob"):
            await open_page(who)
        assert await pages[0].evaluate("window.room.mediaMode") == "relayed"

        async def pair() -> bool:
            got = [await decoded_from(p) for p in pages]
            return got[0].get(ids[1], 0) > 10 and got[1].get(ids[0], 0) > 10
        await until(pair, what="the first two must decode each other directly")
        direct = await rtp_in(http)

        await open_page("cat")
        assert await pages[2].evaluate("window.room.mediaMode") == "routed"
        # Each of the first two: time from hearing of the switch to decoding both others again.
        waits = []
        for i, page in enumerate(pages[:2]):
            others = [x for x in ids if x != ids[i]]
            waits.append(await page.evaluate("""async (others) => {
                while (window.switchedAt === undefined) await new Promise((r) => setTimeout(r, 20));
                for (;;) {
                  const got = {};
                  for (const s of await window.room.receivedVideo()) got[s.participantId] = Math.max(got[s.participantId] || 0, s.framesDecoded);
                  if (others.every((o) => (got[o] || 0) >= 3)) return performance.now() - window.switchedAt;
                  await new Promise((r) => setTimeout(r, 50));
                }
            }""", others))
        # 0.7-1.2 s on a quiet machine (README); the bound leaves room for a loaded CI machine.
        print("video back through the server, ms after the switch:", [round(w) for w in waits])
        assert all(w < 8000 for w in waits), f"video back through the server {waits} ms after the switch"
        assert await rtp_in(http) > direct, "routed now: the media worker forwards"

        async def all_routed() -> bool:
            for me, page in zip(ids, pages):
                got = await decoded_from(page)
                if any(got.get(o, 0) <= 10 for o in ids if o != me):
                    return False
            return True
        await until(all_routed, timeout=30, what="all three decode both others through the server")
        assert await pages[0].evaluate("window.room.links.size") == 0


async def test_an_auto_room_whose_peers_cannot_connect_goes_routed(server, browser):
    """A direct link that never connects (here: one that has no peer at all, as when UDP between
    the two is blocked and there is no TURN) makes the page ask for routing; both pages then
    decode each other through the media worker."""
    async with server.http() as http:
        room = await make_room(http, name="Auto, blocked", media_mode="auto")
        pages, ids = [], []
        for who in ("ann", "bob"):
            page = await (await browser.new_context()).new_page()
            await page.goto(f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], who, 'moderator')}&autojoin=1")
            await page.wait_for_function("window.room && window.room.me && window.room.isPublishing")
            pages.append(page)
            ids.append(await page.evaluate("window.room.me.id"))
        assert await pages[0].evaluate("window.room.mediaMode") == "relayed"
        before = await rtp_in(http)
        # A link of Ann's that cannot connect: the page's own watchdog (10 s) reports it.
        await pages[0].evaluate("""() => { const pc = new RTCPeerConnection(); pc.addTransceiver('video');
            pc.createOffer().then((o) => pc.setLocalDescription(o)); window.room._watchConnection(pc, 'peer'); }""")
        for page in pages:
            await page.wait_for_function("window.room.mediaMode === 'routed'", timeout=20000)

        async def both() -> bool:
            got = [await decoded_from(p) for p in pages]
            return got[0].get(ids[1], 0) > 10 and got[1].get(ids[0], 0) > 10
        await until(both, timeout=30, what="both decode each other through the server")
        assert await rtp_in(http) > before
        sid = await pages[0].evaluate("window.room.session.id")
        events = (await http.get(f"/v1/sessions/{sid}/events")).json()
        assert [e["data"]["reason"] for e in events if e["type"] == "media_mode_changed"] == ["direct_connection_failed"]
