"""A direct connection from a gateway to a session host, for the host's batches of calls.

The host stays a Ray actor: Ray starts it, restarts it and finds it by name, and the gateway
learns this connection's address from it (``SessionHostActor.channel``). But a Ray actor call
costs about 1 ms of CPU in the caller and 1.3 ms in the actor here, for a batch of joins that is
itself less than that; a message over this connection about 0.13 and 0.10 ms. So the batches
of session operations (``mediaserver.control.batch``) go this way; everything else (starting,
readiness, draining) stays on Ray.

The wire: each frame is a 4-byte big-endian length and a pickle. Both ends prove the key
(derived from the deployment's secret) before any frame is read: the host sends a random nonce,
the gateway answers with its HMAC-SHA256 and a nonce of its own, and the host answers that one;
a peer that cannot is closed without a word. (So pickles come from an authenticated peer only,
as Ray itself exchanges them, and a gateway never talks to whatever took a dead host's port.)
Requests are ``(id, kind, batch)``, answered ``(id, outcomes)`` or ``(id, None, code, message)``
when the whole batch failed, in any order: a batch of long polls can be answered after later
ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import pickle
import struct
from typing import Any, Awaitable, Callable

from mediaserver.errors import MediaserverError

log = logging.getLogger(__name__)

HEADER = struct.Struct("!I")
NONCE_BYTES = 16
MAX_FRAME = 64 * 1024 * 1024  # bytes: a batch is at most a few hundred small calls
HELLO_SECONDS = 5.0  # a peer that has not proved itself by then is closed


def channel_key(secret: str) -> bytes:
    """The key of host channels, derived from the deployment's secret (never the secret itself)."""
    return hmac.new(secret.encode(), b"mediaserver host channel v1", hashlib.sha256).digest()


def _proof(key: bytes, nonce: bytes, side: bytes) -> bytes:
    return hmac.new(key, side + nonce, hashlib.sha256).digest()


def _frame(value: Any) -> bytes:
    body = pickle.dumps(value, protocol=5)
    return HEADER.pack(len(body)) + body


class _Framed(asyncio.Protocol):
    """What both ends read: a fixed-size hello (``hello_size`` bytes, then ``hello``, which may
    ask for another), then length-prefixed pickles (``frame``). Frames are handled as their
    bytes arrive, not by a task reading a stream: a reply reaches its caller one turn of the
    event loop sooner on each side, and a burst's calls wait on a few turns each."""

    hello_size = 0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while self.transport is not None and not self.transport.is_closing():
                if self.hello_size:
                    if len(self._buffer) < self.hello_size:
                        return
                    hello = bytes(self._buffer[: self.hello_size])
                    del self._buffer[: self.hello_size]
                    self.hello_size = 0
                    self.hello(hello)
                    continue
                if len(self._buffer) < HEADER.size:
                    return
                (n,) = HEADER.unpack_from(self._buffer)
                if n > MAX_FRAME:
                    raise ValueError(f"a frame of {n} bytes")
                if len(self._buffer) < HEADER.size + n:
                    return
                body = bytes(self._buffer[HEADER.size : HEADER.size + n])
                del self._buffer[: HEADER.size + n]
                self.frame(pickle.loads(body))
        except Exception as e:  # a malformed frame: this connection is done, the process is not
            log.warning("host channel: closing a connection after %r", e)
            self.transport.close()

    def hello(self, data: bytes) -> None:
        raise NotImplementedError

    def frame(self, value: Any) -> None:
        raise NotImplementedError


class ChannelServer:
    """The host's side: ``handle(kind, batch)`` answers each request, several at once. It may
    return a coroutine, or a future it has already set going (``batch.start_batch``)."""

    def __init__(self, handle: Callable[[str, list], Awaitable[list]], key: bytes):
        self.handle = handle
        self.key = key
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[_HostEnd] = set()
        self.refused = 0  # peers that could not prove the key (for tests and logs)

    async def start(self, host: str, port: int = 0) -> tuple[str, int]:
        self.server = await asyncio.get_running_loop().create_server(lambda: _HostEnd(self), host, port)
        return host, self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for end in list(self.connections):
                end.transport.abort()
            await self.server.wait_closed()


class _HostEnd(_Framed):
    def __init__(self, server: ChannelServer):
        super().__init__()
        self.server = server
        self.nonce = os.urandom(NONCE_BYTES)
        self.answers: set[asyncio.Future] = set()
        self._too_slow: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        transport.write(self.nonce)  # type: ignore[attr-defined]
        self.hello_size = 32 + NONCE_BYTES
        self._too_slow = asyncio.get_running_loop().call_later(HELLO_SECONDS, transport.close)

    def hello(self, data: bytes) -> None:
        self._too_slow.cancel()
        if not hmac.compare_digest(data[:32], _proof(self.server.key, self.nonce, b"gateway")):
            self.server.refused += 1
            log.warning("host channel: a peer at %s did not prove the key; closed", self.transport.get_extra_info("peername"))
            self.transport.close()
            return
        self.transport.write(_proof(self.server.key, data[32:], b"host"))

    def frame(self, value: Any) -> None:
        rid, kind, batch = value
        try:
            answer = asyncio.ensure_future(self.server.handle(kind, batch))
        except Exception as e:  # (a handle that failed before it could start)
            answer = asyncio.get_running_loop().create_future()
            answer.set_exception(e)
        self.answers.add(answer)
        answer.add_done_callback(lambda f, rid=rid, kind=kind: self._reply(rid, kind, f))

    def _reply(self, rid: int, kind: str, answer: asyncio.Future) -> None:
        self.answers.discard(answer)
        if answer.cancelled():
            return  # (the connection is gone)
        e = answer.exception()
        if e is None:
            reply = (rid, answer.result())
        elif isinstance(e, MediaserverError):
            reply = (rid, None, e.code, e.message)
        else:
            log.error("host channel: a %s batch failed", kind, exc_info=e)
            reply = (rid, None, "internal", "the session host failed on this batch; try again")
        if not self.transport.is_closing():
            self.transport.write(_frame(reply))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self._too_slow is not None:
            self._too_slow.cancel()
        for answer in list(self.answers):
            answer.cancel()


Done = Callable[[Any, "MediaserverError | None"], None]  # (outcomes, None) or (None, error)


class ChannelClient:
    """The gateway's side: one connection to one host; requests from any task, any number at
    once. When the connection is lost every request waiting on it fails ``unavailable`` and the
    client is ``closed``: its owner asks Ray for the (restarted) host's address again."""

    def __init__(self, address: tuple[str, int], key: bytes):
        self.address = address
        self.key = key
        self.closed = False
        self.connected = False
        self._end: _GatewayEnd | None = None
        self._connecting: asyncio.Future | None = None
        self._pending: dict[int, Done] = {}
        self._next = 0

    def submit(self, kind: str, batch: list, done: Done) -> None:
        """Send a batch now (``connected`` only); ``done`` is called as its answer is read (or the
        connection is lost), in the reading's own turn of the event loop."""
        self._next += 1
        self._pending[self._next] = done
        self._end.transport.write(_frame((self._next, kind, batch)))

    async def request(self, kind: str, batch: list) -> list:
        if self.closed:
            raise MediaserverError("unavailable", "the session host's connection is closed; retry shortly")
        if not self.connected:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            await asyncio.shield(self._connecting)
            if self.closed:
                raise MediaserverError("unavailable", "the session host's connection is closed; retry shortly")
        fut = asyncio.get_running_loop().create_future()

        def done(outcomes: Any, error: MediaserverError | None) -> None:
            if not fut.done():
                fut.set_exception(error) if error is not None else fut.set_result(outcomes)

        self.submit(kind, batch, done)
        return await fut

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, end = await loop.create_connection(lambda: _GatewayEnd(self), *self.address)
            self._end = end
            await asyncio.wait_for(asyncio.shield(end.proved), HELLO_SECONDS)
        except (OSError, asyncio.TimeoutError) as e:  # (ConnectionError is an OSError)
            self.close()
            raise MediaserverError("unavailable", f"the session host cannot be reached ({type(e).__name__}); retry shortly") from None
        self.connected = True

    def _answered(self, value: Any) -> None:
        rid, *reply = value
        done = self._pending.pop(rid, None)
        if done is not None:
            if reply[0] is None:  # the whole batch failed
                done(None, MediaserverError(reply[1], reply[2]))
            else:
                done(reply[0], None)

    def close(self) -> None:
        """Fail every waiting request (``unavailable``) and stop; no request is sent again here."""
        self.closed = True
        self.connected = False
        pending, self._pending = self._pending, {}
        for done in pending.values():
            done(None, MediaserverError("unavailable", "the session host's connection was lost; retry shortly"))
        if self._end is not None and self._end.transport is not None:
            self._end.transport.close()
        if self._end is not None and not self._end.proved.done():
            self._end.proved.set_exception(ConnectionError("closed"))
            self._end.proved.exception()  # (retrieved: _connect may not be waiting any more)


class _GatewayEnd(_Framed):
    hello_size = NONCE_BYTES  # the host's nonce; then its answer to ours

    def __init__(self, client: ChannelClient):
        super().__init__()
        self.client = client
        self.mine = os.urandom(NONCE_BYTES)
        self.answered = False
        self.proved = asyncio.get_running_loop().create_future()

    def hello(self, data: bytes) -> None:
        if not self.answered:  # the host's nonce: prove the key, send ours
            self.answered = True
            self.transport.write(_proof(self.client.key, data, b"gateway") + self.mine)
            self.hello_size = 32
            return
        if not hmac.compare_digest(data, _proof(self.client.key, self.mine, b"host")):
            self.proved.set_exception(ConnectionError("the peer did not prove the key"))
            self.transport.close()
            return
        self.proved.set_result(None)

    def frame(self, value: Any) -> None:
        self.client._answered(value)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()
