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


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    (n,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    if n > MAX_FRAME:
        raise ValueError(f"a frame of {n} bytes")
    return pickle.loads(await reader.readexactly(n))


class ChannelServer:
    """The host's side: ``handle(kind, batch)`` answers each request, several at once."""

    def __init__(self, handle: Callable[[str, list], Awaitable[list]], key: bytes):
        self.handle = handle
        self.key = key
        self.server: asyncio.AbstractServer | None = None
        self.refused = 0  # peers that could not prove the key (for tests and logs)

    async def start(self, host: str, port: int = 0) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, host, port)
        return host, self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task] = set()
        try:
            nonce = os.urandom(NONCE_BYTES)
            writer.write(nonce)
            hello = await asyncio.wait_for(reader.readexactly(32 + NONCE_BYTES), HELLO_SECONDS)
            if not hmac.compare_digest(hello[:32], _proof(self.key, nonce, b"gateway")):
                self.refused += 1
                log.warning("host channel: a peer at %s did not prove the key; closed", writer.get_extra_info("peername"))
                return
            writer.write(_proof(self.key, hello[32:], b"host"))
            while True:
                rid, kind, batch = await _read_frame(reader)
                task = asyncio.ensure_future(self._answer(writer, rid, kind, batch))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass  # the gateway went away (or never said hello)
        except Exception as e:  # a malformed frame: this connection is done, the host is not
            log.warning("host channel: closing a connection after %r", e)
        finally:
            for t in tasks:
                t.cancel()
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, rid: int, kind: str, batch: list) -> None:
        try:
            reply = (rid, await self.handle(kind, batch))
        except MediaserverError as e:
            reply = (rid, None, e.code, e.message)
        except Exception:
            log.exception("host channel: a %s batch failed", kind)
            reply = (rid, None, "internal", "the session host failed on this batch; try again")
        if not writer.is_closing():
            writer.write(_frame(reply))


class ChannelClient:
    """The gateway's side: one connection to one host; requests from any task, any number at
    once. When the connection is lost every request waiting on it fails ``unavailable`` and the
    client is ``closed``: its owner asks Ray for the (restarted) host's address again."""

    def __init__(self, address: tuple[str, int], key: bytes):
        self.address = address
        self.key = key
        self.closed = False
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Future | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._next = 0
        self._reader_task: asyncio.Task | None = None

    async def request(self, kind: str, batch: list) -> list:
        if self.closed:
            raise MediaserverError("unavailable", "the session host's connection is closed; retry shortly")
        if self._writer is None:
            if self._connecting is None:
                self._connecting = asyncio.ensure_future(self._connect())
            await asyncio.shield(self._connecting)
        self._next += 1
        rid = self._next
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._writer.write(_frame((rid, kind, batch)))
            reply = await fut
        finally:
            self._pending.pop(rid, None)
        if reply[0] is None:
            raise MediaserverError(reply[1], reply[2])
        return reply[0]

    async def _connect(self) -> None:
        try:
            reader, writer = await asyncio.open_connection(*self.address)
            nonce = await asyncio.wait_for(reader.readexactly(NONCE_BYTES), HELLO_SECONDS)
            mine = os.urandom(NONCE_BYTES)
            writer.write(_proof(self.key, nonce, b"gateway") + mine)
            answer = await asyncio.wait_for(reader.readexactly(32), HELLO_SECONDS)
            if not hmac.compare_digest(answer, _proof(self.key, mine, b"host")):
                writer.close()
                raise ConnectionError("the peer did not prove the key")
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
            self.close()
            raise MediaserverError("unavailable", f"the session host cannot be reached ({type(e).__name__}); retry shortly") from None
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                rid, *reply = await _read_frame(reader)
                fut = self._pending.get(rid)
                if fut is not None and not fut.done():
                    fut.set_result(reply)  # [outcomes], or [None, code, message]
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, pickle.UnpicklingError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Fail every waiting request (``unavailable``) and stop; no request is sent again here."""
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(MediaserverError("unavailable", "the session host's connection was lost; retry shortly"))
        self._pending.clear()
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
