"""End-to-end encrypted rooms on the meeting page (Chromium, fake camera): with the same
passphrase (or the session key from the link's #key= fragment) pages decode each other's real
picture; a wrong passphrase decodes nothing and says so, without disturbing the others; what the
server forwards and stores is ciphertext."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.browsers import needs_chromium
from tests.helpers import ServerProcess, create_key, make_room, make_token, server_env

pytestmark = needs_chromium

# The average colour of a patch of a video element (relative position), drawn on a canvas.
PATCH = """([id, x, y]) => {
  const v = document.querySelector(`#tile-${id} video`);
  if (!v || !v.videoWidth) return null;
  const c = document.createElement("canvas"); c.width = v.videoWidth; c.height = v.videoHeight;
  const g = c.getContext("2d"); g.drawImage(v, 0, 0);
  const d = g.getImageData(Math.floor(x * c.width), Math.floor(y * c.height), 8, 8).data;
  const sum = [0, 0, 0];
  for (let i = 0; i < d.length; i += 4) { sum[0] += d[i]; sum[1] += d[i + 1]; sum[2] += d[i + 2]; }
  return sum.map((s) => s / (d.length / 4));
}"""


@pytest.fixture(scope="module")
def tap_server(tmp_path_factory):
    """The reference forwarder with its packet tap: what the server sees of each forwarded packet."""
    data_dir = tmp_path_factory.mktemp("e2ee")
    env = server_env(data_dir, media_fastpath="false", media_tap_dir=str(data_dir / "tap"))
    srv = ServerProcess(data_dir=data_dir, env=env)
    srv.key = create_key(env)
    srv.start()
    yield srv
    assert srv.stop() == 0


async def decoded_from(page) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in await page.evaluate("window.room ? window.room.receivedVideo() : []"):
        out[s["participantId"]] = max(out.get(s["participantId"], 0), s["framesDecoded"])
    return out


async def until(check, timeout: float = 60, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.5)


async def open_page(browser, url: str, passphrase: str | None = None, encoded_streams: bool = False):
    page = await (await browser.new_context()).new_page()
    if encoded_streams:  # as in a browser without RTCRtpScriptTransform: Chrome's encoded streams
        await page.add_init_script("delete window.RTCRtpScriptTransform")
    await page.goto(url)
    if passphrase is not None:
        await page.get_by_label("Passphrase").fill(passphrase)
    await page.get_by_role("button", name="Join now").click()
    await page.wait_for_function("window.room && window.room.me && window.room.isPublishing")
    return page, await page.evaluate("window.room.me.id")


async def test_same_passphrase_decodes_a_wrong_one_does_not(tap_server, browser):
    server = tap_server
    async with server.http() as http:
        room = await make_room(http, name="Secret call", encryption="passphrase")
        link = lambda who: f"{server.url}/join/{room['id']}?token={who}"  # noqa: E731
        ann, ann_id = await open_page(browser, link(await make_token(http, room["id"], "ann", "moderator")), "correct horse")
        bob, bob_id = await open_page(browser, link(await make_token(http, room["id"], "bob", "publisher")), "correct horse")
        assert await ann.evaluate("typeof RTCRtpScriptTransform") == "function"  # the standard API, in a worker

        async def pair() -> bool:
            return (await decoded_from(ann)).get(bob_id, 0) > 20 and (await decoded_from(bob)).get(ann_id, 0) > 20
        await until(pair, what="the same passphrase must decode")

        # The picture is the fake camera's, not noise: a background patch of Bob's video at Ann's
        # is the colour of the same patch of Bob's own (unencrypted) preview.
        for x, y in ((0.5, 0.9), (0.1, 0.5)):
            seen = await ann.evaluate(PATCH, [bob_id, x, y])
            own = await bob.evaluate(PATCH, [bob_id, x, y])
            assert seen and own and all(abs(a - b) < 40 for a, b in zip(seen, own)), (seen, own)

        # A third with the wrong passphrase: nothing decodes, the tiles say why; the others go on.
        cat, cat_id = await open_page(browser, link(await make_token(http, room["id"], "cat", "publisher")), "wrong")
        await cat.locator(".tile .notice", has_text="Cannot decrypt: check the passphrase").first.wait_for(timeout=20000)
        await ann.locator(f"#tile-{cat_id} .notice", has_text="Cannot decrypt").wait_for(timeout=20000)
        before = [(await decoded_from(ann)).get(bob_id, 0), (await decoded_from(bob)).get(ann_id, 0)]

        async def others_go_on() -> bool:
            after = [(await decoded_from(ann)).get(bob_id, 0), (await decoded_from(bob)).get(ann_id, 0)]
            return all(b > a + 20 for a, b in zip(before, after))
        await until(others_go_on, timeout=15, what="the two with the right passphrase go on decoding")
        assert sum((await decoded_from(cat)).values()) == 0, "a wrong key must decode nothing"
        assert (await decoded_from(ann)).get(cat_id, 0) == 0

        # Chat: read by the right key, "cannot decrypt" for the wrong one, ciphertext in the store.
        await ann.evaluate("window.room.chat('the plan is in the blue folder')")
        await bob.locator("#chat li", has_text="the plan is in the blue folder").wait_for(state="attached", timeout=10000)
        await cat.locator("#chat li", has_text="cannot decrypt: check the passphrase").wait_for(state="attached", timeout=10000)
        await bob.evaluate("window.room.ask('when do we start?')")
        await ann.locator("#questions li", has_text="when do we start?").wait_for(state="attached", timeout=10000)
        sid = await ann.evaluate("window.room.session.id")
        stored = (await http.get(f"/v1/sessions/{sid}/chat")).json()
        assert stored and all(m["text"].startswith("e2ee1:") and "plan" not in m["text"] for m in stored), stored
        questions = (await http.get(f"/v1/sessions/{sid}/questions")).json()
        assert questions and all(q["text"].startswith("e2ee1:") for q in questions)
        detail = (await http.get(f"/v1/sessions/{sid}")).json()
        assert detail["end_to_end_encrypted"] is True
        # Plain text is refused: the server never keeps it for an encrypted room.
        error = await ann.evaluate("window.room.request({type: 'chat', text: 'in the clear'}).then(() => null, (e) => e.code)")
        assert error == "message_not_encrypted"

    # What the server forwarded was ciphertext: every frame's last packet ends with the trailer.
    frames = []
    for path in (server.data_dir / "tap").glob("*.jsonl"):
        frames += [json.loads(line) for line in path.read_text().splitlines()]
    ends = [bytes.fromhex(f["payload"]) for f in frames if f["marker"] and len(f["payload"]) > 40]
    assert len(ends) > 50, len(ends)
    assert sum(p[-1] == 0xE2 for p in ends) / len(ends) > 0.95, "forwarded frames must be ciphertext"


async def test_session_key_travels_in_the_link_fragment_only(server, browser):
    async with server.http() as http:
        room = await make_room(http, name="Key call", encryption="session_key")
        base = f"{server.url}/join/{room['id']}?token="
        # The first speaker's page makes the key and puts it in its own link's fragment.
        ann, ann_id = await open_page(browser, base + await make_token(http, room["id"], "ann", "moderator"))
        fragment = await ann.evaluate("location.hash")
        assert fragment.startswith("#key=") and len(fragment) > 40
        bob_token = await make_token(http, room["id"], "bob", "publisher")
        bob, bob_id = await open_page(browser, base + bob_token + fragment, encoded_streams=True)  # the other API

        async def pair() -> bool:
            return (await decoded_from(ann)).get(bob_id, 0) > 10 and (await decoded_from(bob)).get(ann_id, 0) > 10
        await until(pair, what="the link's key must decode")

        # Without the fragment a participant cannot join, and is told what to open.
        page = await (await browser.new_context()).new_page()
        await page.goto(base + await make_token(http, room["id"], "dan", "publisher"))
        await page.locator("#status", has_text="open the full link").wait_for(state="attached", timeout=10000)
        assert await page.locator("#prejoin").is_hidden()
        # (The server never saw the key: it is in no request the pages made.)
        assert fragment[5:] not in (await http.get(f"/v1/rooms/{room['id']}")).text

        # The operator's dashboard says so, and shows no chat text.
        await ann.evaluate("window.room.chat('for our eyes only')")
        sid = await ann.evaluate("window.room.session.id")
        dash = await (await browser.new_context()).new_page()
        await dash.goto(f"{server.url}/dashboard")
        await dash.get_by_label("API key ID").fill(server.key["id"])
        await dash.get_by_label("API secret").fill(server.key["secret"])
        await dash.get_by_role("button", name="Sign in").click()
        await dash.get_by_role("row", name=f"Session {sid} of Key call").click()
        await dash.locator("#record-summary", has_text="end-to-end encrypted").wait_for()
        await dash.get_by_role("row", name="Participant ann").click()
        await dash.locator("#timeline").get_by_text("chat: (end-to-end encrypted)").wait_for()
        assert "for our eyes only" not in await dash.content()


async def test_peer_to_peer_rooms_encrypt_too(server, browser):
    """A relayed room with a passphrase: the two pages' direct links carry encrypted frames,
    which they decode to the real picture."""
    async with server.http() as http:
        room = await make_room(http, name="Secret pair", media_mode="relayed", encryption="passphrase")
        link = lambda who: f"{server.url}/join/{room['id']}?token={who}"  # noqa: E731
        ann, ann_id = await open_page(browser, link(await make_token(http, room["id"], "ann", "moderator")), "open sesame")
        bob, bob_id = await open_page(browser, link(await make_token(http, room["id"], "bob", "publisher")), "open sesame")

        async def pair() -> bool:
            return (await decoded_from(ann)).get(bob_id, 0) > 10 and (await decoded_from(bob)).get(ann_id, 0) > 10
        await until(pair, what="the same passphrase must decode over the direct links")
        assert await ann.evaluate("window.room.links.size") == 2 and await ann.evaluate("!!window.room.e2ee")
        seen = await ann.evaluate(PATCH, [bob_id, 0.5, 0.9])
        own = await bob.evaluate(PATCH, [bob_id, 0.5, 0.9])
        assert seen and own and all(abs(a - b) < 40 for a, b in zip(seen, own)), (seen, own)
