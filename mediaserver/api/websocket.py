"""The participant WebSocket (``/v1/ws``) on uvicorn's connection, past uvicorn's WebSocket layer.

For a WebSocket, uvicorn parses the request (httptools), writes it back out as bytes for
``websockets`` to parse again in Python, answers it, builds an ASGI scope, and hands each message
to the application as an ASGI event through a queue, pausing the socket after every one. On a
burst of cold joins that was about a fifth of the gateway's CPU (docs/session-hosts.md).

Here the opening handshake is answered from uvicorn's own parse (RFC 6455 §4.2), frames are the
``websockets`` library's sans-I/O ``Protocol`` (framing, masking, fragments, ping/pong and close
frames, the size limit), and the handler reads and writes text on a ``Socket`` directly. Any
other request, and a WebSocket on another path, goes on as uvicorn would take it.

This reads uvicorn's protocol object (its parse, its server state and config), which is not
uvicorn's public API. A uvicorn that no longer has what it reads gets its own WebSocket layer
back, with a warning: the application serves ``/v1/ws`` through ASGI too, only slower.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
from collections import deque
from typing import Awaitable, Callable

import httptools
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.frames import CloseCode, Opcode
from websockets.protocol import Protocol, Side, State
from websockets.utils import accept_key

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # (moved in some uvicorn to come: see http_protocol)
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)

INBOX = 16  # messages read ahead of the handler before the socket stops being read (backpressure)
CLOSE_TIMEOUT = 10.0  # s for the peer to answer our close frame before the connection is dropped


class Socket(asyncio.Protocol):
    """One open WebSocket, server side: ``receive``, ``send_text``, ``close``. A closed one
    raises starlette's ``WebSocketDisconnect``, as a WebSocket through ASGI does, so one handler
    reads both."""

    def __init__(self, *, client: str | None, headers: dict[str, str], max_size: int | None,
                 ping_interval: float | None, ping_timeout: float | None, connections: set):
        self.client = client
        self.headers = headers
        self.ws = Protocol(Side.SERVER, state=State.OPEN, max_size=max_size, logger=log)
        self.transport: asyncio.Transport | None = None
        self.closed: WebSocketDisconnect | None = None  # set once either side has closed
        self._connections = connections  # (uvicorn's: it shuts each down when the server stops)
        self._inbox: deque[str | bytes] = deque()
        self._waiter: asyncio.Future | None = None
        self._reading = True
        self._writable: asyncio.Event | None = None  # (made when the transport first pushes back)
        self._fragments: list[bytes] = []
        self._text = True
        self._ping_interval, self._ping_timeout = ping_interval, ping_timeout
        self._ping: bytes | None = None  # payload of the ping awaiting its pong
        self._timer: asyncio.TimerHandle | None = None  # the next ping, or the deadline of a pong or close

    @property
    def gone(self) -> bool:
        return self.closed is not None

    # asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._connections.add(self)
        self._schedule_ping()

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for frame in self.ws.events_received():
            op = frame.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY:
                self._text = op is Opcode.TEXT
                self._fragments = [frame.data]
            elif op is Opcode.CONT:
                self._fragments.append(frame.data)
            elif op is Opcode.PONG:
                if self._ping is not None and bytes(frame.data) == self._ping:
                    self._ping = None
                    self._schedule_ping()
                continue
            else:
                continue  # (a ping is answered and a close replied to by the protocol: flushed below)
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                if self._text:
                    try:
                        self._deliver(data.decode())
                    except UnicodeDecodeError as e:  # RFC 6455 §8.1: invalid UTF-8 fails the connection
                        self.ws.fail(CloseCode.INVALID_DATA, f"invalid UTF-8 at position {e.start}")
                        break
                else:
                    self._deliver(data)
        self._flush()
        if self.ws.close_rcvd is not None:
            self._set_closed(self.ws.close_rcvd.code, self.ws.close_rcvd.reason)
        elif self.ws.state is State.CLOSING or self.ws.state is State.CLOSED:
            sent = self.ws.close_sent
            self._set_closed(sent.code if sent else CloseCode.ABNORMAL_CLOSURE, sent.reason if sent else "")

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._flush()
        return None  # (the transport closes itself)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._set_closed(CloseCode.ABNORMAL_CLOSURE, "")
        if self._writable is not None:
            self._writable.set()  # (a paused writer would wait forever: the buffer will not drain now)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.Event()
        self._writable.clear()

    def resume_writing(self) -> None:
        if self._writable is not None:
            self._writable.set()

    def shutdown(self) -> None:
        """The server is stopping (uvicorn calls this): 1012, service restart (RFC 6455 §7.4.1)."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(CloseCode.SERVICE_RESTART)
            self._flush()
        self._set_closed(CloseCode.SERVICE_RESTART, "")
        self.transport.close()

    # The handler's side ---------------------------------------------------------------------

    async def receive(self) -> str | bytes:
        if self._inbox:
            message = self._inbox.popleft()
            if not self._reading and len(self._inbox) < INBOX // 2 and not self.transport.is_closing():
                self._reading = True
                self.transport.resume_reading()
            return message
        if self.closed is not None:
            raise self.closed
        self._waiter = asyncio.get_running_loop().create_future()
        return await self._waiter

    async def send_text(self, text: str) -> None:
        if self.closed is not None or self.ws.state is not State.OPEN:
            raise WebSocketDisconnect(CloseCode.ABNORMAL_CLOSURE)
        if self._writable is not None and not self._writable.is_set():
            await self._writable.wait()
            if self.closed is not None:
                raise WebSocketDisconnect(CloseCode.ABNORMAL_CLOSURE)
        self.ws.send_text(text.encode())
        self._flush()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame; the connection ends when the peer answers (or in CLOSE_TIMEOUT)."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(code, reason)
            self._flush()
            self._arm(CLOSE_TIMEOUT, self.transport.abort)
        self._set_closed(code, reason)

    # Inside ---------------------------------------------------------------------------------

    def _deliver(self, message: str | bytes) -> None:
        if self.closed is not None:
            return  # (past our close frame: the peer's last words are not read)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(message)
            self._waiter = None
            return
        self._inbox.append(message)
        if len(self._inbox) >= INBOX and self._reading:
            self._reading = False
            self.transport.pause_reading()

    def _set_closed(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = WebSocketDisconnect(code, reason)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(self.closed)
            self._waiter = None

    def _flush(self) -> None:
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            else:  # (the protocol is done: a server closes the TCP connection first, RFC 6455 §7.1.1)
                self.transport.close()

    def _arm(self, delay: float, callback: Callable[[], None]) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(delay, callback)

    def _schedule_ping(self) -> None:
        # (Not once our close is sent: the timer is then the close's deadline, which a late pong
        # must not replace.)
        if self._ping_interval and self.ws.state is State.OPEN:
            self._arm(self._ping_interval, self._send_ping)

    def _send_ping(self) -> None:
        # Keepalive as uvicorn's own layer does it: a peer that stops answering is dropped.
        if self.ws.state is not State.OPEN:
            return
        self._ping = os.urandom(4)
        self.ws.send_ping(self._ping)
        self._flush()
        if self._ping_timeout:
            self._arm(self._ping_timeout, self._ping_lost)
        else:
            self._schedule_ping()

    def _ping_lost(self) -> None:
        self.ws.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self._flush()
        self._set_closed(CloseCode.ABNORMAL_CLOSURE, "keepalive ping timeout")
        self.transport.close()


async def _serve(handle: Callable[[Socket], Awaitable[None]], sock: Socket) -> None:
    try:
        await handle(sock)
    except WebSocketDisconnect:
        pass  # (the connection ended under it)
    except Exception:
        log.exception("a WebSocket's handler failed")
        await sock.close(CloseCode.INTERNAL_ERROR)
    else:
        await sock.close()  # (a handler that returns with its socket open: 1000, as uvicorn does)


class AsgiSocket:
    """A ``Socket``'s face on a WebSocket that came through ASGI (an in-process test client; a
    path this module does not answer, behind a root path): one handler for both."""

    def __init__(self, ws: WebSocket):
        self._ws = ws
        self.client = ws.client.host if ws.client else None
        self.headers = ws.headers

    @property
    def gone(self) -> bool:
        return WebSocketState.DISCONNECTED in (self._ws.client_state, self._ws.application_state)

    async def receive(self) -> str | bytes:
        frame = await self._ws.receive()
        if frame["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(frame.get("code", 1000), frame.get("reason"))
        text = frame.get("text")
        return text if text is not None else frame.get("bytes") or b""

    async def send_text(self, text: str) -> None:
        await self._ws.send_text(text)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        await self._ws.close(code=code, reason=reason)


def _handshake_error(key: str | None, version: str | None, host: bool) -> tuple[str, str, str] | None:
    """Why an upgrade request is refused (status, extra header, message), or None (RFC 6455 §4.2.1)."""
    if version != "13":
        return "426 Upgrade Required", "Sec-WebSocket-Version: 13\r\n", "this server speaks WebSocket version 13"
    if not host:
        return "400 Bad Request", "", "a WebSocket request needs a Host header"
    try:
        if key is None or len(base64.b64decode(key.encode("ascii"), validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error, UnicodeEncodeError):
        return "400 Bad Request", "", "Sec-WebSocket-Key must be 16 bytes in base64"
    return None


# What of uvicorn's protocol object is read here (uvicorn 0.29-0.55 have all of it).
_USED = ("url", "scope", "connections", "transport", "server_state", "config", "client", "loop", "tasks")
_USED_CONFIG = ("ws_max_size", "ws_ping_interval", "ws_ping_timeout")
_verdicts: dict[type, bool] = {}  # protocol class -> whether it has all of it (found at its first upgrade)
_FALLING_BACK = ": /v1/ws goes through uvicorn's own WebSocket layer and ASGI instead (it works, with more CPU per message)"


def _compatible(protocol: HttpToolsProtocol) -> bool:
    """Whether this uvicorn's protocol object has everything the upgrade below reads; if not,
    said once (the protocol class's first upgrade) and uvicorn's own layer answers from then on."""
    verdict = _verdicts.get(type(protocol))
    if verdict is None:
        missing = [a for a in _USED if not hasattr(protocol, a)]
        if not missing:
            missing = [f"config.{a}" for a in _USED_CONFIG if not hasattr(protocol.config, a)]
            missing += [f"server_state.{a}" for a in ("default_headers", "connections") if not hasattr(protocol.server_state, a)]
            if not (isinstance(protocol.scope, dict) and {"method", "headers"} <= protocol.scope.keys()):
                missing.append("scope['method'] and scope['headers']")
        if missing:
            log.warning("this uvicorn's HTTP protocol has no %s" + _FALLING_BACK, ", ".join(missing))
        verdict = _verdicts[type(protocol)] = not missing
    return verdict


def http_protocol(path: str, handle: Callable[[Socket], Awaitable[None]]) -> type[HttpToolsProtocol] | str:
    """uvicorn's HTTP/1.1 protocol with WebSockets to ``path`` answered here and given to ``handle``
    (for ``uvicorn.Config``'s ``http``; without uvicorn's httptools protocol, its default)."""
    if HttpToolsProtocol is None:
        log.warning("this uvicorn has no httptools_impl.HttpToolsProtocol" + _FALLING_BACK)
        return "auto"
    wanted = path.encode()

    class GatewayHttpProtocol(HttpToolsProtocol):
        def handle_websocket_upgrade(self) -> None:
            if not _compatible(self):
                return super().handle_websocket_upgrade()
            try:
                path = httptools.parse_url(self.url).path
            except httptools.HttpParserInvalidURLError:
                path = None  # (uvicorn's own layer answers it, as it would have)
            if path != wanted or self.scope["method"] != "GET":
                return super().handle_websocket_upgrade()
            self.connections.discard(self)
            headers: dict[str, str] = {}
            for name, value in self.scope["headers"]:  # (lower-case names, from uvicorn's parse)
                headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
            key = headers.get("sec-websocket-key")
            error = _handshake_error(key, headers.get("sec-websocket-version"), "host" in headers)
            if error is not None:
                status, extra, message = error
                self.transport.write(
                    f"HTTP/1.1 {status}\r\n{extra}content-type: text/plain; charset=utf-8\r\n"
                    f"content-length: {len(message)}\r\nconnection: close\r\n\r\n{message}".encode()
                )
                self.transport.close()
                return
            out = [b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",
                   b"sec-websocket-accept: ", accept_key(key).encode(), b"\r\n"]
            for name, value in self.server_state.default_headers:
                out += [name, b": ", value, b"\r\n"]
            out.append(b"\r\n")
            self.transport.write(b"".join(out))
            client = self.client[0] if self.client else None
            sock = Socket(client=client, headers=headers, max_size=self.config.ws_max_size,
                          ping_interval=self.config.ws_ping_interval, ping_timeout=self.config.ws_ping_timeout,
                          connections=self.server_state.connections)
            self.transport.set_protocol(sock)
            sock.connection_made(self.transport)
            task = self.loop.create_task(_serve(handle, sock))
            self.tasks.add(task)  # (uvicorn waits for these when it shuts down)
            task.add_done_callback(self.tasks.discard)

    return GatewayHttpProtocol
