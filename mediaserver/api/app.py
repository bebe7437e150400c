"""The gateway application: routes, error format, lifecycle ticking and the pages."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocket

from mediaserver import __version__
from mediaserver.api import archives, events, people, rest, ws
from mediaserver.api.clients import ClientAddress
from mediaserver.api.docs import tidy_openapi
from mediaserver.api.limits import BodyLimit
from mediaserver.api.metrics import GatewayMetrics
from mediaserver.api.websocket import Socket
from mediaserver.config import Settings
from mediaserver.errors import MediaserverError
from mediaserver.pacing import TurnBudget
from mediaserver.store import Store
from mediaserver.turn import IceServers

log = logging.getLogger(__name__)
STATIC = Path(__file__).with_name("static")
HTTP_CODES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "invalid_request"}


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


WS_PATH = "/v1/ws"


class Gateway:
    """The application the server runs. Under uvicorn, ``/v1/ws`` never reaches ASGI: uvicorn's
    connection is handed to ``websocket`` (mediaserver/api/websocket.py). Through ASGI (an
    in-process test client) the participant WebSocket still goes straight to its handler, and
    everything else to the FastAPI application (``api``): FastAPI's routing and middleware are
    for the REST API, and around a WebSocket they cost about 0.15–0.2 ms of CPU per connection
    and wrap every message it sends."""

    def __init__(self, api: FastAPI):
        self.api = api

    async def websocket(self, sock: Socket) -> None:
        """A ``/v1/ws`` connection uvicorn was given (mediaserver/api/websocket.py ``http_protocol``)."""
        await ws.Connection(sock, self.api.state).run()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and scope["path"] == WS_PATH:
            scope["app"] = self.api  # (where the handler finds the gateway's state)
            return await ws.websocket_endpoint(WebSocket(scope, receive, send))
        return await self.api(scope, receive, send)


def create_app(settings: Settings, store: Store, control: Any, *, reconnect_secret: str,
               ice_servers: IceServers | None = None) -> Gateway:
    app = FastAPI(
        title="mediaserver",
        version=__version__,
        description="Rooms, tokens, sessions and participants of a mediaserver deployment.",
    )
    app.state.settings = settings
    app.state.store = store
    app.state.control = control
    app.state.reconnect_secret = reconnect_secret
    app.state.ice_servers = ice_servers or IceServers.from_settings(settings)
    app.state.client_address = ClientAddress(settings.trusted_proxies)
    app.state.metrics = GatewayMetrics()
    app.state.admissions = TurnBudget()  # joins started per turn of the event loop (mediaserver/pacing.py)
    app.include_router(rest.router)
    app.include_router(archives.router)
    app.include_router(events.router)
    app.include_router(people.router)
    app.add_api_websocket_route(WS_PATH, ws.websocket_endpoint)  # (behind a root path Gateway does not match)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = tidy_openapi(get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            ))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(MediaserverError)
    async def _known(_: Request, e: MediaserverError) -> JSONResponse:
        return _error(e.status, e.code, e.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return _error(400, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        return _error(e.status_code, HTTP_CODES.get(e.status_code, "invalid_request"), str(e.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, "internal", "the server failed on this request; it has been logged")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        snapshot = {**await store.live_figures(), "workers": await control.media_stats(), "host_calls": control.batch_figures()}
        return Response(app.state.metrics.render(snapshot), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/join/{room_id}", include_in_schema=False)
    async def join_page(room_id: str) -> FileResponse:
        return FileResponse(STATIC / "meet.html")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html")

    @app.get("/invite/{link}", include_in_schema=False)
    async def invite_page(link: str) -> FileResponse:
        return FileResponse(STATIC / "meet.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> FileResponse:
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            raise MediaserverError("not_found", f"no file {name!r}")
        return FileResponse(path)

    return Gateway(app)
