"""The meeting page and the operator dashboard in headless Chromium (Debian's, driven by Playwright),
with fake camera and microphone, against the real server: stage requests, chat, Q&A and breakout
rooms from the UI; the dashboard finds the session, shows a participant's timeline and ends it."""

from __future__ import annotations

import asyncio

from tests.browsers import ARTIFACTS, frames, needs_chromium
from tests.helpers import make_room, make_token

pytestmark = needs_chromium

UNNAMED_BUTTONS = """[...document.querySelectorAll('button, input, select')]
  .filter((el) => el.offsetParent !== null)
  .filter((el) => !(el.getAttribute('aria-label') || (el.labels && el.labels.length) || (el.textContent || '').trim()))
  .map((el) => el.outerHTML.slice(0, 80))"""


async def open_page(browser, url: str, errors: list, who: str, viewport=(1280, 800)):
    ctx = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = await ctx.new_page()
    page.on("console", lambda m: errors.append(f"{who}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"{who}: {e}"))
    await page.goto(url)
    return page


async def until(check, timeout: float = 30, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = await check()
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} not met in {timeout} s (last: {got!r})")
        await asyncio.sleep(0.3)


async def test_meeting_page_and_dashboard(server, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    errors: list[str] = []
    async with server.http() as http:
        room = await make_room(http, name="Design review", media_mode="routed", comment="web-ui-test: bring sketches",
                               starts_at="2026-11-20T09:00:00Z", ends_at="2026-11-20T10:00:00Z")
        host_url = f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], 'hana', 'moderator')}"
        viewer_url = f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], 'vic', 'subscriber')}"
        host = await open_page(browser, host_url, errors, "host")
        viewer = await open_page(browser, viewer_url, errors, "viewer", viewport=(390, 844))  # a phone
        for page in (host, viewer):
            await page.get_by_role("button", name="Join now").click()
            await page.locator("#status", has_text="Joined as").wait_for()
        assert await host.locator("#room-comment").inner_text() == "web-ui-test: bring sketches"
        assert "2026" in await host.locator("#room-schedule").inner_text()

        # The viewer asks to enable mic & camera; the host approves; the host then sees the viewer's video.
        await viewer.get_by_role("button", name="Request mic & camera").click()
        await host.get_by_role("button", name="Approve vic").click()
        await viewer.get_by_role("button", name="Leave the stage").wait_for()
        await until(lambda: _decoding(host), what="host decodes the viewer's video")
        sizes = await host.evaluate("[...document.querySelectorAll('#grid video')].filter(v => v.videoWidth > 0)"
                                    ".map(v => v.getBoundingClientRect().width)")
        assert sizes and all(w > 0 for w in sizes)

        # The host shares the screen: the viewer decodes a second video from the host, in a tile of its own.
        await host.get_by_role("button", name="Share screen").click()
        await until(lambda: _videos_decoding(viewer, 2), what="viewer decodes camera and screen")
        await viewer.locator(".tile", has_text="(screen)").wait_for()
        # The server knows it for a screen share (its publisher said so): it goes first when a
        # viewer's link cannot carry every video.
        sources = await viewer.evaluate("[...window.room.tracks.values()].filter((t) => t.kind === 'video').map((t) => t.source).sort()")
        assert sources == ["camera", "camera", "screen"], sources
        await host.get_by_role("button", name="Stop sharing").click()

        # Chat round trip.
        await viewer.get_by_role("tab", name="Chat").click()
        await viewer.get_by_role("textbox", name="Message", exact=True).fill("hello from the phone")
        await viewer.get_by_role("button", name="Send").click()
        await host.get_by_role("tab", name="Chat").click()
        await host.locator("#chat", has_text="hello from the phone").wait_for()

        # Q&A: the viewer asks, the host marks it answered, the viewer sees it answered.
        await viewer.get_by_role("tab", name="Q&A").click()
        await viewer.get_by_role("textbox", name="Your question").fill("Are the slides shared?")
        await viewer.get_by_role("button", name="Ask").click()
        await host.get_by_role("tab", name="Q&A").click()
        await host.get_by_role("button", name="Mark answered: Are the slides shared?").click()
        await viewer.locator("#questions li.answered", has_text="Are the slides shared?").wait_for()
        await host.get_by_role("tab", name="People").click()
        await host.screenshot(path=str(ARTIFACTS / "meeting.png"))

        # Breakout rooms: create two, assign automatically, open, then close.
        await host.get_by_role("tab", name="Breakout rooms").click()
        await host.get_by_label("How many breakout rooms").fill("2")
        await host.get_by_role("button", name="Create rooms").click()
        await host.get_by_label("Name of Room 2").wait_for()
        await host.get_by_role("button", name="Assign automatically").click()
        await host.get_by_role("button", name="Open rooms").click()
        await viewer.locator("#status", has_text="You are in the breakout room").wait_for()
        await host.screenshot(path=str(ARTIFACTS / "meeting-breakouts.png"))
        await viewer.screenshot(path=str(ARTIFACTS / "meeting-phone.png"), full_page=True)
        await host.get_by_role("button", name="Close rooms").click()
        await viewer.locator("#status", has_text="You are back in the main room").wait_for()

        for page in (host, viewer):
            assert await page.evaluate(UNNAMED_BUTTONS) == []

        # The dashboard: sign in, find the session by its comment, read a timeline, end it.
        dash = await open_page(browser, f"{server.url}/dashboard", errors, "dashboard")
        await dash.get_by_label("API key ID").fill(server.key["id"])
        await dash.get_by_label("API secret").fill(server.key["secret"])
        await dash.get_by_role("button", name="Sign in").click()
        await dash.get_by_label("Search by room ID, room name, session ID or comment").fill("web-ui-test")
        sid = await host.evaluate("window.room.session.id")
        row = dash.get_by_role("row", name=f"Session {sid} of Design review")
        await row.wait_for()
        assert await dash.locator("#sessions tbody tr").count() == 1
        await row.click()
        await dash.locator("#participants", has_text="good (0% lost").wait_for()  # reception quality in the record
        await dash.get_by_role("row", name="Participant vic").click()
        timeline = dash.locator("#timeline")
        await timeline.get_by_text("asked to enable mic & camera").wait_for()
        await timeline.get_by_text("chat: “hello from the phone”").wait_for()
        await dash.locator("#workers", has_text="fast path").wait_for()
        await dash.locator("#nodes", has_text="127.0.0.1").wait_for()  # the node, its region and state
        assert "default" in await dash.locator("#nodes").inner_text()
        await dash.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        await dash.get_by_role("button", name="All sessions of this room").click()
        await dash.locator("#sessions-title", has_text="Sessions of Design review").wait_for()
        assert await dash.evaluate(UNNAMED_BUTTONS) == []
        await dash.get_by_role("button", name=f"End session {sid}").click()
        for page in (host, viewer):
            await page.locator("#status", has_text="The session has ended").wait_for()
        phone = await open_page(browser, f"{server.url}/dashboard", errors, "dashboard-phone", viewport=(390, 844))
        await phone.get_by_label("API key ID").fill(server.key["id"])
        await phone.get_by_label("API secret").fill(server.key["secret"])
        await phone.get_by_role("button", name="Sign in").click()
        await phone.get_by_role("button", name="Ended").click()
        await phone.get_by_role("row", name=f"Session {sid} of Design review").wait_for()  # now among the ended
        await phone.screenshot(path=str(ARTIFACTS / "dashboard-phone.png"), full_page=True)
    assert errors == [], errors


async def _videos_decoding(page, n: int) -> bool:
    got = await frames(page)
    return len([f for f in got if f > 5]) >= n


async def _decoding(page) -> bool:
    got = await frames(page)
    return bool(got) and max(got) > 5


async def test_meeting_page_explains_refusals(server, browser):
    errors: list[str] = []
    async with server.http() as http:
        room = await make_room(http, name="Tiny", capacity=1)
        first = await open_page(browser, f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], 'one')}&media=off", errors, "one")
        await first.get_by_role("button", name="Join now").click()
        await first.locator("#status", has_text="Joined as").wait_for()
        full = await open_page(browser, f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], 'two')}&media=off", errors, "two")
        await full.get_by_role("button", name="Join now").click()
        await full.locator("#status", has_text="This session is full").wait_for()
        # A bad or wrong-room link is refused before the pre-join screen: no camera is turned on.
        forged = await open_page(browser, f"{server.url}/join/{room['id']}?token=abc.def.ghi", errors, "forged")
        await forged.locator("#status", has_text="not valid").wait_for()
        other = await make_room(http, name="Elsewhere")
        wrong = await open_page(browser, f"{server.url}/join/{other['id']}?token={await make_token(http, room['id'], 'w')}", errors, "wrong")
        await wrong.locator("#status", has_text="for another room").wait_for()
        for page in (forged, wrong):
            assert not await page.locator("#prejoin").is_visible()
            assert await page.evaluate("document.getElementById('preview').srcObject") is None
        none = await open_page(browser, f"{server.url}/join/{room['id']}", errors, "none")
        await none.locator("#status", has_text="no token").wait_for()
        invite = (await http.post(f"/v1/rooms/{room['id']}/invites", json={})).json()
        guest = await open_page(browser, invite["url"] + "?media=off", errors, "guest")
        await guest.locator("#room-name", has_text="Tiny").wait_for()
        await guest.get_by_label("Your name").fill("Gina")
        await guest.get_by_role("button", name="Join now").click()
        await guest.locator("#status", has_text="This session is full").wait_for()  # the invite works; the room is full
    # Refusals come back as errors the page shows; the browser logs no errors of its own.
    assert [e for e in errors if "WebSocket" not in e and "status of 40" not in e] == [], errors


async def test_signed_in_member_and_event_start_from_the_page(server, browser):
    """A group member signs in on the page and joins once a leader has started the session; an
    event's speaker gets the "Start session" button five minutes before, and then the registered
    participant gets in."""
    import time
    from datetime import datetime, timezone

    from tests.test_people import login, user

    errors: list[str] = []
    async with server.http() as http:
        lead, mem = await user(http, "lead@web.test", "Lena"), await user(http, "mem@web.test", "Max")
        group = (await http.post("/v1/groups", json={"name": "Web group"})).json()
        for u, role in ((lead, "leader"), (mem, "member")):
            await http.put(f"/v1/groups/{group['id']}/members", json={"user_id": u["id"], "role": role})
        room = await make_room(http, name="Group standup", type="group", group_id=group["id"])
        page = await open_page(browser, f"{server.url}/join/{room['id']}?media=off", errors, "member")
        await page.get_by_label("E-mail").fill("mem@web.test")
        await page.get_by_label("Password").fill("wrong password")
        await page.get_by_role("button", name="Sign in").click()
        await page.locator("#status", has_text="Wrong e-mail or password").wait_for()
        await page.get_by_label("Password").fill("correct horse")
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("button", name="Join now").click()
        await page.locator("#status", has_text="a group leader has to start it").wait_for()
        leader = await login(server, "lead@web.test")
        lead_token = (await leader.post(f"/v1/rooms/{room['id']}/join-token")).json()["token"]
        await leader.aclose()
        lead_page = await open_page(browser, f"{server.url}/join/{room['id']}?token={lead_token}&media=off&autojoin=1", errors, "leader")
        await lead_page.locator("#status", has_text="Joined as Lena").wait_for()
        await page.get_by_role("button", name="Join now").click()
        await page.locator("#status", has_text="Joined as Max").wait_for()

        # An event slot starting in 4 minutes: its speaker starts it from the page.
        now = time.time()
        iso = lambda ts: datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()  # noqa: E731
        event = (await http.post("/v1/events", json={"name": "Fair", "starts_at": iso(now - 600), "ends_at": iso(now + 7200),
                                                     "hosts": [{"identity": "acme", "name": "ACME", "spots": 5}]})).json()
        slot = (await http.post(f"/v1/events/{event['id']}/slots", json={"host_identity": "acme", "starts_at": iso(now + 240)})).json()
        reg = (await http.post(f"/v1/events/{event['id']}/slots/{slot['id']}/registrations", json={"identity": "pat", "name": "Pat"})).json()
        guest = await open_page(browser, reg["join_url"] + "&media=off&autojoin=1", errors, "registered")
        await guest.locator("#status", has_text="you can join once a speaker has started it").wait_for()
        host_token = await make_token(http, slot["room_id"], "acme", "moderator")
        host = await open_page(browser, f"{server.url}/join/{slot['room_id']}?token={host_token}&media=off&autojoin=1", errors, "speaker")
        await host.get_by_role("button", name="Start session").click()
        await host.locator("#status", has_text="has started").wait_for()
        assert await host.get_by_role("button", name="Start session").count() == 0 or not await host.get_by_role("button", name="Start session").is_visible()
        await guest.get_by_role("button", name="Join now").click()
        await guest.locator("#status", has_text="Joined as Pat").wait_for()
    assert [e for e in errors if "WebSocket" not in e and "401" not in e and "409" not in e] == [], errors


async def _devices_released(page) -> bool:
    """Every camera and microphone track the page ever opened has ended."""
    return await page.evaluate("window.__opened.length > 0 && window.__opened.every((t) => t.readyState === 'ended')")


OPENED_TRACKS = """(() => {
  window.__opened = [];
  const get = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (c) => { const s = await get(c); window.__opened.push(...s.getTracks()); return s; };
})()"""


async def test_leaving_and_ending_release_devices_and_controls(server, browser):
    """The pre-join screen shows the room's name and schedule; "Leave" and the end of the session
    turn camera and microphone off and disable every control; "End session" asks first."""
    errors: list[str] = []
    async with server.http() as http:
        room = await make_room(http, name="Weekly review", starts_at="2027-03-01T09:00:00Z", ends_at="2027-03-01T10:00:00Z")
        pages = {}
        for who, role in (("host", "moderator"), ("guest", "publisher"), ("leaver", "publisher")):
            ctx = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await ctx.new_page()
            await page.add_init_script(OPENED_TRACKS)
            page.on("console", lambda m, who=who: errors.append(f"{who}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e, who=who: errors.append(f"{who}: {e}"))
            await page.goto(f"{server.url}/join/{room['id']}?token={await make_token(http, room['id'], who, role)}")
            pages[who] = page
        host, guest, leaver = pages["host"], pages["guest"], pages["leaver"]
        # Before joining: the room's name and schedule.
        await host.locator("#room-name", has_text="Weekly review").wait_for()
        assert "2027" in await host.locator("#room-schedule").inner_text()
        for page in pages.values():
            await page.get_by_role("button", name="Join now").click()
            await page.locator("#status", has_text="Joined as").wait_for()
            await page.get_by_role("button", name="Leave the stage").wait_for()  # publishing

        await leaver.get_by_role("button", name="Leave the session").click()
        await leaver.locator("#status", has_text="You left the session").wait_for()
        await until(lambda: _devices_released(leaver), what="the leaver's camera and microphone released")
        assert await leaver.evaluate("[...document.querySelectorAll('#meeting button')].every((b) => b.disabled)")

        # "End session" asks first; cancelling leaves the session running.
        await host.get_by_role("button", name="End the session for everyone").click()
        dialog = host.get_by_role("dialog")
        await dialog.wait_for()
        await dialog.get_by_role("button", name="Cancel").click()
        await asyncio.sleep(1)
        assert (await http.get(f"/v1/sessions/{await host.evaluate('window.room.session.id')}")).json()["status"] == "live"
        await host.get_by_role("button", name="End the session for everyone").click()
        await host.get_by_role("dialog").get_by_role("button", name="End for everyone").click()
        for page in (host, guest):
            await page.locator("#status", has_text="The session has ended").wait_for()
            await until(lambda page=page: _devices_released(page), what="camera and microphone released at the end")
            assert await page.evaluate("[...document.querySelectorAll('#meeting button, #meeting input')].every((b) => b.disabled)")
            assert await page.evaluate("document.querySelectorAll('.tile').length") == 0
    assert [e for e in errors if "WebSocket" not in e] == [], errors


async def test_the_page_says_so_when_media_cannot_connect(tmp_path, browser):
    """A media address that nothing answers on (here: the server advertises 127.0.0.99, where it
    does not listen): within seconds the page says media cannot connect and what to check."""
    from tests.helpers import ServerProcess, create_key, server_env

    env = server_env(tmp_path, media_advertised_host="127.0.0.99")
    srv = ServerProcess(data_dir=tmp_path, env=env)
    srv.key = create_key(env)
    srv.start()
    errors: list[str] = []
    try:
        async with srv.http() as http:
            room = await make_room(http, name="Unreachable media")
            page = await open_page(browser, f"{srv.url}/join/{room['id']}?token={await make_token(http, room['id'], 'u')}", errors, "u")
            await page.get_by_role("button", name="Join now").click()
            started = asyncio.get_running_loop().time()
            await page.locator("#status", has_text="cannot connect to the media server").wait_for(timeout=20000)
            assert asyncio.get_running_loop().time() - started < 15
            text = await page.locator("#status").inner_text()
            assert "127.0.0.99" in text and "UDP" in text and "firewall" in text
            await page.get_by_role("tab", name="Chat").click()  # the rest of the meeting still works
            await page.get_by_role("textbox", name="Message", exact=True).fill("can you hear me?")
            await page.get_by_role("button", name="Send").click()
            await page.locator("#chat", has_text="can you hear me?").wait_for()
    finally:
        assert srv.stop() == 0
