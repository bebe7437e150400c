"""Request bodies over ``max_request_bytes`` are refused (413) before anything parses them."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

DRAIN_FACTOR = 64  # an oversized body is read and dropped up to this many limits, so the client
# can read the 413 (closing on unread data resets the connection); past that the socket is closed


class BodyLimit:
    """ASGI middleware. A declared Content-Length over the limit is answered without parsing a
    byte; a body without one (chunked) is read here, up to the limit, before the app sees it."""

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", ()))
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await self._refuse(send, "invalid_request", "Content-Length is not a number", 400)
            if declared > self.max_bytes:
                await self._drain(receive, declared)
                return await self._refuse(send, *self._too_large())
            return await self.app(scope, receive, send)
        if headers.get(b"transfer-encoding", b"").lower() != b"chunked":
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                if more:
                    await self._drain(receive, 0)
                return await self._refuse(send, *self._too_large())
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self) -> tuple[str, str, int]:
        return "payload_too_large", f"request bodies are limited to {self.max_bytes} bytes", 413

    async def _drain(self, receive: Receive, declared: int) -> None:
        if declared > self.max_bytes * DRAIN_FACTOR:
            return
        dropped = 0
        while dropped <= self.max_bytes * DRAIN_FACTOR:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return
            dropped += len(message.get("body", b""))

    @staticmethod
    async def _refuse(send: Send, code: str, message: str, status: int) -> None:
        body = orjson.dumps({"error": {"code": code, "message": message}})
        await send({
            "type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
        })
        await send({"type": "http.response.body", "body": body})
