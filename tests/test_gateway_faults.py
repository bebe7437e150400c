"""The gateway's WebSocket in process (a real store, the control plane replaced by a stand-in
that fails on purpose): an unexpected failure in one command answers ``internal`` and keeps the
connection, so a client never sees its socket drop without a close frame."""

from __future__ import annotations

import asyncio

import pytest
from starlette.testclient import TestClient

from mediaserver import tokens
from mediaserver.api.app import create_app
from mediaserver.config import Settings
from mediaserver.store import Store


class FailingControl:
    """Joins work; ``chat`` raises what no command should (a bug); long-polls just wait."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def open_session(self, room: dict, address: str | None, **_known) -> tuple[dict, None]:
        return {"id": "sess_test", "room_id": room["id"]}, None

    async def call(self, session_id: str, method: str, *args, new: dict | None = None):
        self.calls.append(method)
        if method == "join":
            participant = {"id": "part_a", "identity": args[0], "name": args[1], "role": args[2], "state": "connected",
                           "connection_id": "conn_1"}
            return {"participant": participant, "session": {"id": session_id}, "participants": [], "last_seq": 0}
        if method == "chat":
            raise KeyError("a bug in the chat handling")
        if method == "wait_events":
            await asyncio.sleep(0.2)
            return {"events": [], "last_seq": 0, "status": "live", "superseded": False}
        if method == "questions":
            return []
        return None


@pytest.fixture
def app_and_token(tmp_path):
    settings = Settings(data_dir=tmp_path, ping_seconds=60)

    async def setup():
        store = Store(settings.db_url)  # (its own: an engine belongs to the loop that opened it)
        await store.migrate()
        team = await store.ensure_team("t")
        key = await store.create_api_key(team["id"])
        room = await store.create_room(team["id"], {
            "name": "r", "type": "adhoc", "media_mode": "routed", "archive_mode": "manual", "encryption": "server",
            "location_hint": None, "capacity": 50, "comment": None, "starts_at": None, "ends_at": None,
        })
        token, _ = tokens.mint(key_id=key["id"], secret=key["secret"], room_id=room["id"], identity="ann",
                               role="moderator", ttl=600, max_ttl=3600)
        await store.close()
        return room, token

    room, token = asyncio.run(setup())
    control = FailingControl()
    yield create_app(settings, Store(settings.db_url), control, reconnect_secret="s" * 32), control, room, token


def test_a_command_that_fails_unexpectedly_answers_internal_and_keeps_the_connection(app_and_token):
    app, control, room, token = app_and_token
    with TestClient(app) as client, client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "join", "token": token, "room_id": room["id"]})
        assert ws.receive_json()["type"] == "joined"
        ws.send_json({"type": "chat", "text": "hello", "id": "c1"})
        reply = ws.receive_json()
        assert reply == {"type": "error", "id": "c1", "code": "internal", "message": reply["message"]}
        ws.send_json({"type": "questions", "id": "q1"})  # the same connection goes on
        assert ws.receive_json() == {"type": "ack", "id": "q1", "data": []}
        ws.send_json({"type": "leave", "id": "l1"})  # (the server closes: the handler ends before the client)
        assert ws.receive_json()["type"] == "ack"
    assert control.calls.count("chat") == 1


def test_the_websocket_goes_straight_to_its_handler_and_the_rest_to_the_api(app_and_token):
    """The participant WebSocket skips FastAPI's routing and middleware (their cost per
    connection); the REST API still goes through them."""
    app, _, room, token = app_and_token
    seen: list[str] = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        async def __call__(self, scope, receive, send):
            seen.append(scope["type"])
            return await self.inner(scope, receive, send)

    app.api.add_middleware(Spy)
    with TestClient(app) as client, client.websocket_connect("/v1/ws") as ws:
        ws.send_json({"type": "join", "token": token, "room_id": room["id"]})
        assert ws.receive_json()["type"] == "joined"
        assert client.get("/v1/health").status_code == 200
        ws.send_json({"type": "leave", "id": "l1"})  # (the handler ends before the client shuts down)
        assert ws.receive_json()["type"] == "ack"
    assert "http" in seen and "websocket" not in seen, seen


def test_a_connection_that_never_joins_is_told_and_closed(app_and_token):
    """A WebSocket that sends nothing within ``join_timeout_seconds`` is answered with an error
    saying what was expected, then closed (it holds nothing meanwhile)."""
    from starlette.websockets import WebSocketDisconnect

    from mediaserver.api.messages import CLOSE_PROTOCOL

    app, control, _, _ = app_and_token
    app.api.state.settings = app.api.state.settings.model_copy(update={"join_timeout_seconds": 0.3})
    with TestClient(app) as client, client.websocket_connect("/v1/ws") as ws:
        reply = ws.receive_json()
        assert reply == {"type": "error", "id": None, "code": "invalid_request", "message": "send join or resume first"}
        with pytest.raises(WebSocketDisconnect) as e:
            ws.receive_json()
        assert e.value.code == CLOSE_PROTOCOL
    assert control.calls == []
