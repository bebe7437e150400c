"""The participant WebSocket's own transport (``mediaserver.api.websocket``) under a real uvicorn,
over loopback: the opening handshake and its refusals (RFC 6455 §4.2), fragments, pings both
ways, invalid UTF-8 and oversized messages, backpressure, a handler that fails or returns, a peer
that stops answering, and the server shutting down. Clients: websockets' own asyncio client, and
raw sockets for what a well-behaved client would never send."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
import uvicorn
import websockets
from starlette.websockets import WebSocketDisconnect
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side, State

from mediaserver.api.websocket import INBOX, Socket, http_protocol

PATH = "/v1/ws"


async def plain_http(scope, receive, send):
    """What uvicorn serves for everything that is not ``PATH`` (a WebSocket elsewhere is refused)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        return await send({"type": "lifespan.shutdown.complete"})
    if scope["type"] == "websocket":
        return await send({"type": "websocket.close", "code": 1008})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"plain"})


class Served:
    """uvicorn on a free loopback port, /v1/ws handled by ``handler``; the sockets it was given."""

    def __init__(self, handler, **config):
        self.sockets: list[Socket] = []
        self.handler = handler

        async def handle(sock: Socket) -> None:
            self.sockets.append(sock)
            await handler(sock)

        self.config = uvicorn.Config(plain_http, host="127.0.0.1", port=0, loop="none", log_level="warning",
                                     http=http_protocol(PATH, handle), ws_max_size=1024, **config)
        self.server = uvicorn.Server(self.config)

    async def __aenter__(self) -> "Served":
        self.task = asyncio.ensure_future(self.server.serve())
        while not self.server.started:
            assert not self.task.done(), self.task.exception()
            await asyncio.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{self.port}{PATH}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 15)


async def echo(sock: Socket) -> None:
    """Each message back, upper-cased, until the peer closes; 'close' closes with 4000."""
    while True:
        try:
            message = await sock.receive()
        except WebSocketDisconnect:
            return
        if message == "close":
            return await sock.close(4000, "asked to")
        await sock.send_text(message.upper() if isinstance(message, str) else f"binary {len(message)}")


async def raw_request(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)  # (until the server closes)
    writer.close()
    return data


def upgrade(key: str = base64.b64encode(os.urandom(16)).decode(), version: str = "13", path: str = PATH, host: bool = True) -> bytes:
    lines = [f"GET {path} HTTP/1.1"] + (["Host: 127.0.0.1"] if host else []) + [
        "Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Version: {version}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class RawPeer:
    """A client made of websockets' sans-I/O protocol over a plain socket: it sends what it is
    told and answers nothing on its own (a pong its protocol queues for a ping goes out only
    with the next frame given to ``send_frame``)."""

    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.ws = Protocol(Side.CLIENT, state=State.OPEN, max_size=None)

    @classmethod
    async def open(cls, port: int) -> "RawPeer":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upgrade())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 "), head
        return cls(reader, writer)

    def send_frame(self, frame: Frame) -> None:
        self.ws.send_frame(frame)
        for data in self.ws.data_to_send():
            self.writer.write(data)

    async def frames(self, timeout: float = 5) -> list[Frame]:
        """The frames the server sends until it closes the connection (or ``timeout``)."""
        out: list[Frame] = []
        try:
            async with asyncio.timeout(timeout):
                while data := await self.reader.read(65536):
                    self.ws.receive_data(data)
                    out += self.ws.events_received()
        except TimeoutError:
            pass
        return out


async def test_messages_go_both_ways_and_the_handshake_is_rfc_6455s():
    async with Served(echo) as s:
        async with websockets.connect(s.url) as ws:  # (the library checks Sec-WebSocket-Accept)
            await ws.send("hello")
            assert await ws.recv() == "HELLO"
            await ws.send(b"\x00\x01")
            assert await ws.recv() == "binary 2"
            await ws.send(["frag", "mented"])  # one message in three frames (a TEXT and two CONT)
            assert await ws.recv() == "FRAGMENTED"
            await ws.ping(b"are you there")  # answered by the transport, the handler never sees it
            await asyncio.wait_for(await ws.ping(), 5)
            await ws.send("close")
            await ws.wait_closed()
            assert (ws.close_code, ws.close_reason) == (4000, "asked to")
        assert s.sockets[0].gone


async def test_a_peer_that_closes_is_told_apart_from_one_that_vanishes():
    seen = []

    async def record(sock: Socket) -> None:
        try:
            await sock.receive()
        except WebSocketDisconnect as e:
            seen.append(e.code)

    async with Served(record) as s:
        async with websockets.connect(s.url) as ws:
            await ws.close(4321, "bye")
        peer = await RawPeer.open(s.port)
        peer.writer.transport.abort()  # (no close frame: the TCP connection just ends)
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.02)
    assert seen == [4321, 1006]


@pytest.mark.parametrize(
    "request_, status, says",
    [
        (upgrade(version="8"), b"426", b"version 13"),
        (upgrade(key="not base64!"), b"400", b"Sec-WebSocket-Key"),
        (upgrade(key=base64.b64encode(b"short").decode()), b"400", b"Sec-WebSocket-Key"),
        (upgrade(host=False), b"400", b"Host"),
    ],
    ids=["version", "key-not-base64", "key-not-16-bytes", "no-host"],
)
async def test_a_bad_opening_handshake_is_refused_with_a_reason(request_, status, says):
    async with Served(echo) as s:
        answer = await raw_request(s.port, request_)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b" ")[1] == status, answer
        assert says in body
        if status == b"426":
            assert b"Sec-WebSocket-Version: 13" in head  # RFC 6455 §4.4: the versions it speaks
        assert s.sockets == []  # the handler never ran


async def test_other_paths_and_plain_requests_are_uvicorns():
    async with Served(echo) as s:
        answer = await raw_request(s.port, b"GET /elsewhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and b"plain" in answer
        with pytest.raises(websockets.exceptions.InvalidStatus):  # (the ASGI app refuses it: 403)
            async with websockets.connect(f"ws://127.0.0.1:{s.port}/elsewhere"):
                pass
        assert s.sockets == []


async def test_invalid_utf8_and_oversized_messages_fail_the_connection():
    async with Served(echo) as s:
        peer = await RawPeer.open(s.port)
        peer.send_frame(Frame(Opcode.TEXT, b"ok \xff\xfe"))
        close = [f for f in await peer.frames() if f.opcode is Opcode.CLOSE]
        assert close and int.from_bytes(close[0].data[:2], "big") == 1007  # RFC 6455 §7.4.1: invalid data

        peer = await RawPeer.open(s.port)
        peer.send_frame(Frame(Opcode.TEXT, b"x" * 2000))  # over ws_max_size (1024)
        close = [f for f in await peer.frames() if f.opcode is Opcode.CLOSE]
        assert close and int.from_bytes(close[0].data[:2], "big") == 1009  # message too big

        peer = await RawPeer.open(s.port)  # the limit counts a whole message, not each fragment
        peer.send_frame(Frame(Opcode.TEXT, b"x" * 600, fin=False))
        peer.send_frame(Frame(Opcode.CONT, b"x" * 600))
        close = [f for f in await peer.frames() if f.opcode is Opcode.CLOSE]
        assert close and int.from_bytes(close[0].data[:2], "big") == 1009


async def test_a_handler_that_does_not_read_stops_the_socket_being_read():
    go = asyncio.Event()
    got: list[str] = []
    total = 4 * INBOX

    async def slow(sock: Socket) -> None:
        await go.wait()
        while True:
            got.append(await sock.receive())

    async with Served(slow) as s:
        async with websockets.connect(s.url) as ws:
            for i in range(2 * INBOX):
                await ws.send(f"m{i}")
            for _ in range(100):
                if s.sockets and not s.sockets[0]._reading:
                    break
                await asyncio.sleep(0.01)
            sock = s.sockets[0]
            # INBOX messages (and the rest of the read they came in) wait; the socket is not read on.
            assert not sock._reading and not sock.transport.is_reading()
            held = len(sock._inbox)
            assert held >= INBOX
            for i in range(2 * INBOX, total):
                await ws.send(f"m{i}")
            await asyncio.sleep(0.2)
            assert len(sock._inbox) == held  # (left in the kernel's buffers meanwhile)
            go.set()
            for _ in range(200):
                if len(got) == total:
                    break
                await asyncio.sleep(0.01)
            assert got == [f"m{i}" for i in range(total)]  # every one, in order
            assert sock._reading and sock.transport.is_reading()


async def test_a_handler_that_fails_or_returns_closes_its_socket():
    async def fails(sock: Socket) -> None:
        await sock.receive()
        raise RuntimeError("a bug")

    async with Served(fails) as s:
        async with websockets.connect(s.url) as ws:
            await ws.send("x")
            await ws.wait_closed()
            assert ws.close_code == 1011  # internal error

    async def returns(sock: Socket) -> None:
        await sock.send_text("bye")

    async with Served(returns) as s:
        async with websockets.connect(s.url) as ws:
            assert await ws.recv() == "bye"
            await ws.wait_closed()
            assert ws.close_code == 1000


async def test_a_peer_that_stops_answering_pings_is_dropped():
    async with Served(echo, ws_ping_interval=0.2, ws_ping_timeout=0.3) as s:
        quiet = await RawPeer.open(s.port)  # never answers a ping
        async with websockets.connect(s.url, ping_interval=None) as alive:  # the library answers pings
            frames = await quiet.frames(timeout=3)
            assert frames[0].opcode is Opcode.PING
            close = [f for f in frames if f.opcode is Opcode.CLOSE]
            assert close and int.from_bytes(close[0].data[:2], "big") == 1011  # "keepalive ping timeout"
            await alive.send("still here")  # pinged as often, and answered: kept
            assert await alive.recv() == "STILL HERE"
        assert quiet.reader.at_eof()


async def test_the_server_stopping_closes_each_websocket_with_1012():
    ended = asyncio.Event()

    async def waits(sock: Socket) -> None:
        try:
            while True:
                await sock.receive()
        except WebSocketDisconnect:
            ended.set()

    s = Served(waits)
    await s.__aenter__()
    async with websockets.connect(s.url) as ws:
        await ws.send("x")  # (the handler has it: it waits for the next)
        while not s.sockets:
            await asyncio.sleep(0.01)
        await s.__aexit__(None, None, None)
        await ws.wait_closed()
        assert ws.close_code == 1012  # service restart
    assert ended.is_set()


async def test_a_pong_after_our_close_does_not_keep_the_connection(monkeypatch):
    """Once the server has sent its close frame, only the peer's close, or CLOSE_TIMEOUT, ends the
    connection: a late pong (to a ping sent before) must not put the keepalive back in its place."""
    from mediaserver.api import websocket

    monkeypatch.setattr(websocket, "CLOSE_TIMEOUT", 0.5)
    async with Served(echo, ws_ping_interval=0.1, ws_ping_timeout=5) as s:
        peer = await RawPeer.open(s.port)

        async def until(opcode: Opcode) -> Frame:
            async with asyncio.timeout(5):
                while True:
                    peer.ws.receive_data(await peer.reader.read(65536))
                    for frame in peer.ws.events_received():
                        if frame.opcode is opcode:
                            return frame

        ping = await until(Opcode.PING)  # (not answered yet)
        # (written raw: ``send_frame`` would flush the pong the peer's protocol queued for the ping)
        peer.writer.write(Frame(Opcode.TEXT, b"close").serialize(mask=True))  # echo closes with 4000
        await until(Opcode.CLOSE)
        peer.writer.write(Frame(Opcode.PONG, ping.data).serialize(mask=True))  # the late pong; no close back
        async with asyncio.timeout(3):  # dropped after CLOSE_TIMEOUT, not kept open by pings
            while await peer.reader.read(65536):
                pass


async def asgi_echo(scope, receive, send):
    """uvicorn's own WebSocket layer's way in: each message back through ASGI, marked as such."""
    if scope["type"] != "websocket":
        return await plain_http(scope, receive, send)
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": "asgi: " + message["text"].upper()})


@pytest.mark.parametrize("lacks", ["an attribute", "the protocol class"])
async def test_a_uvicorn_without_what_the_transport_reads_gets_its_own_layer_back(lacks, monkeypatch, caplog):
    """The transport reads uvicorn's protocol object, not uvicorn's public API. A uvicorn whose
    protocol lacks something it reads (or that has no httptools protocol class at that path) must
    still serve /v1/ws, through its own WebSocket layer and the ASGI app, with a warning."""
    from mediaserver.api import websocket

    if lacks == "an attribute":
        monkeypatch.setattr(websocket, "_USED", (*websocket._USED, "attribute_of_another_uvicorn"))
    else:
        monkeypatch.setattr(websocket, "HttpToolsProtocol", None)
    served = Served(echo)
    served.config.app = asgi_echo
    with caplog.at_level("WARNING", logger="mediaserver.api.websocket"):
        async with served as s:
            for _ in range(2):
                async with websockets.connect(s.url) as ws:
                    await ws.send("hello")
                    assert await ws.recv() == "asgi: HELLO"
    assert s.sockets == []  # our transport never took one
    warned = [r.getMessage() for r in caplog.records if "/v1/ws goes through uvicorn's own WebSocket layer" in r.getMessage()]
    assert len(warned) == 1, warned  # said once, not per connection
    if lacks == "an attribute":
        assert "attribute_of_another_uvicorn" in warned[0]
