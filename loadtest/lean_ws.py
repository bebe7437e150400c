"""A lean WebSocket client for load tests: the ``websockets`` library's own protocol (its sans-I/O
``ClientProtocol``: handshake, framing, masking, pings, close, RFC 6455) under a bare asyncio
protocol, without the library's asyncio connection layer.

Benchmark 4 opens hundreds of WebSockets at once on the cores the server runs on, so what each
client costs is taken from the server. The library's asyncio client spent about 1.1–1.5 ms of
CPU per connect-and-join there; its protocol alone, under this, a fraction of that (a connect,
one message and a close: 0.36–0.38 ms). It is not a general client: text messages, no
extensions, no TLS, no proxy.
"""

from __future__ import annotations

import asyncio
from collections import deque

from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri


class ConnectionClosed(Exception):
    """The connection is closed (by either side); ``code`` is the close code when one was sent."""

    def __init__(self, code: int | None = None, reason: str = ""):
        super().__init__(f"connection closed ({code} {reason})".strip())
        self.code, self.reason = code, reason


class _Protocol(asyncio.Protocol):
    def __init__(self, url: str, max_size: int):
        self.ws = ClientProtocol(parse_uri(url), max_size=max_size)
        self.transport: asyncio.Transport | None = None
        self.open = asyncio.get_running_loop().create_future()  # set once the handshake's answer is read
        self.messages: deque[str | bytes] = deque()
        self.waiter: asyncio.Future | None = None
        self.closed: ConnectionClosed | None = None
        self.partial: list[bytes] = []
        self.partial_text = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.ws.send_request(self.ws.connect())
        self.flush()

    def flush(self) -> None:
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():  # (an empty one: the protocol is done sending)
                self.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._events()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self._events()

    def _events(self) -> None:
        for event in self.ws.events_received():
            if isinstance(event, Response):
                if self.ws.handshake_exc is not None:
                    self.open.set_exception(self.ws.handshake_exc)
                else:
                    self.open.set_result(None)
            elif event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                if event.opcode is not Opcode.CONT:
                    self.partial_text = event.opcode is Opcode.TEXT
                self.partial.append(event.data)
                if event.fin:
                    data, self.partial = b"".join(self.partial), []
                    self._deliver(data.decode() if self.partial_text else data)
        self.flush()  # (pongs, the answer to a close)
        if self.ws.close_rcvd is not None:
            self._closed(ConnectionClosed(self.ws.close_rcvd.code, self.ws.close_rcvd.reason))

    def _deliver(self, message: str | bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(message)
            self.waiter = None
        else:
            self.messages.append(message)

    def _closed(self, exc: ConnectionClosed) -> None:
        if self.closed is None:
            self.closed = exc
        if not self.open.done():
            self.open.set_exception(exc)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def connection_lost(self, exc) -> None:
        self._closed(ConnectionClosed(1006, str(exc or "")))


class WebSocket:
    def __init__(self, proto: _Protocol):
        self._p = proto

    @property
    def transport(self) -> asyncio.Transport:
        """The TCP connection (``transport.abort()``: drop it without a goodbye)."""
        return self._p.transport

    async def send(self, text: str) -> None:
        if self._p.closed:
            raise self._p.closed
        self._p.ws.send_text(text.encode())
        self._p.flush()

    async def recv(self) -> str | bytes:
        p = self._p
        if p.messages:
            return p.messages.popleft()
        if p.closed:
            raise p.closed
        p.waiter = asyncio.get_running_loop().create_future()
        return await p.waiter

    def __aiter__(self):
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def close(self, code: int = 1000) -> None:
        p = self._p
        if p.closed is None and not p.transport.is_closing():
            p.ws.send_close(code)
            p.flush()
            p.transport.close()
        p._closed(ConnectionClosed(code, "closed by us"))


async def connect(url: str, *, max_size: int = 1 << 24, timeout: float = 120) -> WebSocket:
    """Open ``ws://host:port/path`` and complete the opening handshake (RFC 6455 §4.1)."""
    uri = parse_uri(url)
    if uri.secure:
        raise ValueError(f"only ws:// URLs: {url}")
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(loop.create_connection(lambda: _Protocol(url, max_size), uri.host, uri.port), timeout)
    await asyncio.wait_for(proto.open, timeout)
    return WebSocket(proto)
