"""A lean WebSocket client for load tests (RFC 6455): text messages, pings answered, close.

Benchmark 4 opens hundreds of WebSockets at once on the cores the server runs on, so what each
client costs is taken from the server. The ``websockets`` library's client spends about 1.1–1.3 ms
of CPU per connect-and-join (its handshake and frame machinery in Python); this one parses only
what a load client needs and costs a fraction of that. It is not a general client: no
extensions, no subprotocols, no TLS, no proxy.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from collections import deque
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ConnectionClosed(Exception):
    """The connection is closed (by either side); ``code`` is the close code when one was sent."""

    def __init__(self, code: int | None = None, reason: str = ""):
        super().__init__(f"connection closed ({code} {reason})".strip())
        self.code, self.reason = code, reason


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (RFC 6455 §5.2: a client masks every frame it sends, with a
    fresh unpredictable key, §5.3)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    if n:  # XOR as one big integer: the key repeated over the payload's length
        repeated = (key * (n // 4 + 1))[:n]
        payload = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")
    return head + key + payload


class _Protocol(asyncio.Protocol):
    def __init__(self, key: bytes, max_size: int):
        self.key, self.max_size = key, max_size
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.open = asyncio.get_running_loop().create_future()  # set once the 101 answer is read
        self.messages: deque[str | bytes] = deque()
        self.waiter: asyncio.Future | None = None
        self.closed: ConnectionClosed | None = None
        self.partial: list[bytes] = []
        self.partial_op = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open.done():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = bytes(self.buf[:end]).decode("latin-1"), self.buf[end + 4:]
            lines = head.split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            accept = base64.b64encode(hashlib.sha1(self.key + GUID).digest()).decode()
            if lines[0].split(" ", 2)[1:2] != ["101"] or headers.get("sec-websocket-accept") != accept:
                self.open.set_exception(ConnectionError(f"WebSocket handshake refused: {lines[0]}"))
                self.transport.close()
                return
            self.open.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buf
        at = 0
        while len(buf) - at >= 2:
            b0, b1 = buf[at], buf[at + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if len(buf) - at < 4:
                    break
                n, head = struct.unpack_from("!H", buf, at + 2)[0], 4
            elif n == 127:
                if len(buf) - at < 10:
                    break
                n, head = struct.unpack_from("!Q", buf, at + 2)[0], 10
            if b1 & 0x80 or n > self.max_size:  # a server never masks (§5.1)
                self._fail(1002 if b1 & 0x80 else 1009)
                return
            if len(buf) - at < head + n:
                break
            payload = bytes(buf[at + head:at + head + n])
            at += head + n
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
            if self.closed:
                break
        del buf[:at]

    def _frame(self, fin: int, op: int, payload: bytes) -> None:
        if op == OP_PING:
            self.transport.write(frame(OP_PONG, payload))
        elif op == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self.transport.is_closing():
                self.transport.write(frame(OP_CLOSE, payload[:2]))
                self.transport.close()
            self._closed(ConnectionClosed(code, payload[2:].decode(errors="replace")))
        elif op in (OP_TEXT, OP_BINARY, OP_CONT):
            if op != OP_CONT:
                self.partial_op = op
            self.partial.append(payload)
            if fin:
                data = b"".join(self.partial)
                self.partial = []
                self._deliver(data.decode() if self.partial_op == OP_TEXT else data)

    def _deliver(self, message: str | bytes) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(message)
            self.waiter = None
        else:
            self.messages.append(message)

    def _fail(self, code: int) -> None:
        self.transport.write(frame(OP_CLOSE, struct.pack("!H", code)))
        self.transport.close()
        self._closed(ConnectionClosed(code, "protocol error"))

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
        self._p.transport.write(frame(OP_TEXT, text.encode()))

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
        if not p.transport.is_closing():
            p.transport.write(frame(OP_CLOSE, struct.pack("!H", code)))
            p.transport.close()
        p._closed(ConnectionClosed(code, "closed by us"))


async def connect(url: str, *, max_size: int = 1 << 24, timeout: float = 120) -> WebSocket:
    """Open ``ws://host:port/path`` and complete the opening handshake (RFC 6455 §4.1)."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ValueError(f"only ws:// URLs: {url}")
    key = base64.b64encode(os.urandom(16))
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: _Protocol(key, max_size), parts.hostname, parts.port or 80), timeout
    )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    proto.transport.write(
        f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    await asyncio.wait_for(proto.open, timeout)
    return WebSocket(proto)
