"""Two Chromium participants in one routed session see each other, through our SFU.

Debian's chromium driven by Playwright (executable_path), fake camera and microphone,
loopback only (the suite runs in a network namespace that holds only lo)."""

from __future__ import annotations

import asyncio

from tests.browsers import ARTIFACTS, frames, needs_chromium
from tests.helpers import make_room, make_token

pytestmark = needs_chromium


async def test_two_browsers_see_each_other(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    async with server.http() as http:
        room = await make_room(http, name="Browser call", media_mode="routed", comment="Two browsers")
        pages, errors = [], []
        for identity, role in (("ann", "moderator"), ("bob", "publisher")):
            ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await ctx.new_page()
            page.on("console", lambda m, who=identity: errors.append(f"{who}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e, who=identity: errors.append(f"{who}: {e}"))
            token = await make_token(http, room["id"], identity, role)
            await page.goto(f"{server.url}/join/{room['id']}?token={token}")
            await page.get_by_role("button", name="Join now").click()  # after the camera preview
            pages.append(page)
        ann, bob = pages

        async def both_decoding(minimum: int) -> bool:
            counts = [await frames(p) for p in pages]
            return all(c and max(c) >= minimum for c in counts)

        deadline = asyncio.get_running_loop().time() + 60
        while not await both_decoding(1):
            if asyncio.get_running_loop().time() > deadline:
                statuses = [await p.locator("#status").inner_text() for p in pages]
                raise AssertionError(f"no video decoded: {[await frames(p) for p in pages]} {statuses} {errors}")
            await asyncio.sleep(0.5)
        first = [max(await frames(p), default=0) for p in pages]
        await asyncio.sleep(3)
        later = [max(await frames(p), default=0) for p in pages]
        assert all(b > a + 10 for a, b in zip(first, later)), f"decoding must keep going: {first} -> {later}"

        # Each page shows the other's video in a visible element of non-zero size.
        for page in pages:
            sizes = await page.evaluate(
                "[...document.querySelectorAll('#grid video')].filter(v => v.srcObject && v.videoWidth > 0)"
                ".map(v => [v.videoWidth, v.getBoundingClientRect().width])"
            )
            assert len(sizes) >= 2 and all(w > 0 and shown > 0 for w, shown in sizes), sizes
        assert await ann.locator("#room-comment").inner_text() == "Two browsers"
        await ann.screenshot(path=str(ARTIFACTS / "meeting-routed.png"))

        # Ann's connection drops: her page reconnects by itself as the same participant,
        # publishes again, and both see each other again.
        me = await ann.evaluate("window.room.me.id")
        await ann.evaluate("window.room.ws.close(4999, 'network gone')")
        await ann.locator("#status", has_text="Reconnected.").wait_for(timeout=30000)
        assert await ann.evaluate("window.room.me.id") == me
        # (Bob's receiving side is renegotiated as Ann's tracks go and come: its stats may be empty a moment.)
        bob_before = max(await frames(bob), default=0)
        deadline = asyncio.get_running_loop().time() + 60
        while not (max(await frames(ann), default=0) > 10 and max(await frames(bob), default=0) > bob_before + 10):
            assert asyncio.get_running_loop().time() < deadline, (await frames(ann), await frames(bob), bob_before)
            await asyncio.sleep(0.5)
        assert errors == [], errors


async def test_vp9_from_the_browser_is_received_as_vp9(server, browser):
    async with server.http() as http:
        room = await make_room(http, name="VP9 call", media_mode="routed")
        pages = []
        for identity in ("vp9-a", "vp9-b"):
            page = await (await browser.new_context()).new_page()
            token = await make_token(http, room["id"], identity)
            await page.goto(f"{server.url}/join/{room['id']}?token={token}&codec=VP9&autojoin=1")
            pages.append(page)
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            got = [await p.evaluate("window.room ? window.room.receivedVideo() : []") for p in pages]
            if all(g and g[0]["framesDecoded"] > 10 for g in got):
                break
            assert asyncio.get_running_loop().time() < deadline, got
            await asyncio.sleep(0.5)
        assert all(g[0]["codec"] == "video/VP9" for g in got), got
