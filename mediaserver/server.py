"""``mediaserver serve``: store, Ray, actors and the gateway in one process tree."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
from typing import TextIO
from urllib.parse import quote

import uvicorn

from mediaserver import __version__, tokens
from mediaserver.api.app import WS_PATH, create_app
from mediaserver.api.websocket import http_protocol
from mediaserver.config import Settings
from mediaserver.ids import new_secret
from mediaserver.store import Store
from mediaserver.turn import IceServers, LocalTurn

log = logging.getLogger("mediaserver")
DEFAULT_TEAM = "default"
DEMO_ROOM = "Demo room"


async def open_store(settings: Settings) -> Store:
    store = Store(settings.db_url)
    await store.migrate()
    return store


async def bootstrap(store: Store, settings: Settings) -> dict:
    """The default team, its first API key and a demo room, made on the first start and reused after."""
    team = await store.ensure_team(DEFAULT_TEAM)
    keys = [k for k in await store.list_api_keys(team["id"]) if k["revoked_at"] is None]
    key = keys[0] if keys else await store.create_api_key(team["id"], "bootstrap")
    rooms = await store.list_rooms(team["id"], q=DEMO_ROOM, limit=1)
    room = rooms[0] if rooms else await store.create_room(
        team["id"],
        {
            "name": DEMO_ROOM,
            "type": "adhoc",
            "media_mode": "routed",
            "archive_mode": "manual",
            "encryption": "server",
            "location_hint": None,
            "capacity": 50,
            "comment": "Made by mediaserver serve to try things out.",
            "starts_at": None,
            "ends_at": None,
        },
    )
    token, _ = tokens.mint(
        key_id=key["id"],
        secret=key["secret"],
        room_id=room["id"],
        identity="host",
        name="Host",
        role="moderator",
        ttl=settings.token_default_ttl,
        max_ttl=settings.token_max_ttl,
    )
    boot = {"team": team, "key": key, "room": room, "token": token}
    boot["join_url"] = demo_link(settings, boot)
    return boot


def demo_link(settings: Settings, boot: dict) -> str:
    return f"{settings.base_url}/join/{boot['room']['id']}?token={quote(boot['token'])}"


def banner(settings: Settings, boot: dict, ray_info: dict, out: TextIO, *, as_json: bool = False) -> None:
    key = boot["key"]
    where = "started here; stops with the server" if ray_info["started_here"] else "joined an existing cluster"
    info = {
        "version": __version__,
        "url": settings.base_url,
        "api_key": key["id"],
        "api_secret": key["secret"],
        "demo_room": boot["join_url"],
        "dashboard": f"{settings.base_url}/dashboard",
        "api_docs": f"{settings.base_url}/docs",
        "store": f"{settings.db_url.split('://')[0]} ({_db_where(settings.db_url)})",
        "ray": {"address": ray_info["gcs_address"], "started_here": ray_info["started_here"]},
        "turn": boot.get("turn"),
        "archives": str(settings.archive_path),
        "warnings": settings.url_warnings(),
    }
    if as_json:
        out.write(json.dumps(info) + "\n")
        out.flush()
        return
    warnings = "".join(f"  Note:       {w}\n" for w in info["warnings"])
    out.write(
        f"\nmediaserver {__version__} is ready\n"
        f"  URL:        {info['url']}\n"
        f"  API key:    {key['id']}\n"
        f"  API secret: {key['secret']}\n"
        f"  Demo room:  {info['demo_room']}\n"
        f"  Dashboard:  {info['dashboard']} (sign in with the API key)\n"
        f"  API docs:   {info['api_docs']}\n"
        f"  Store:      {info['store']}\n"
        f"  Ray:        {ray_info['gcs_address']} ({where})\n"
        f"  TURN:       {boot.get('turn') or 'none (set turn_urls and turn_secret, or turn_local)'}\n"
        f"  Archives:   {info['archives']}{'' if shutil.which('ffmpeg') else ' (composed files need FFmpeg: apt-get install ffmpeg)'}\n"
        f"{warnings}"
        f"Press Ctrl-C to stop.\n\n"
    )
    out.flush()


def _db_where(url: str) -> str:
    return url.split(":///", 1)[1] if url.startswith("sqlite") else url.rsplit("@", 1)[-1]


def ice_servers(settings: Settings, boot: dict) -> tuple[IceServers, LocalTurn | None]:
    """The ICE servers participants get, and the local coturn serve started for them (if any)."""
    ice = IceServers.from_settings(settings)
    if settings.turn_local == "off" or (settings.turn_local == "auto" and not LocalTurn.installed()):
        if settings.turn_urls:
            boot["turn"] = ", ".join(settings.turn_urls)
        return ice, None
    host = settings.media_advertised_host or settings.media_bind_host
    if host in ("0.0.0.0", "::", ""):
        from mediaserver.config import reachable_address

        host = reachable_address() or "127.0.0.1"
    local = LocalTurn(host, settings.turn_local_port, settings.turn_secret or new_secret())
    try:
        local.start()
    except RuntimeError as e:
        if settings.turn_local == "on":
            raise
        boot["turn"] = f"not started ({e})"[:200]
        log.warning("local coturn not started: %s", e)
        return ice, None
    ice = IceServers(ice.stun_urls or local.stun_urls, [*local.urls, *ice.turn_urls], local.secret, settings.turn_ttl)
    boot["turn"] = f"{local.urls[0]} (coturn started here; stops with the server)"
    return ice, local


async def _serve(settings: Settings, out: TextIO, as_json: bool) -> None:
    from actors import cluster
    from actors.control import ControlPlane, actor_config
    from mediaserver import heap
    from mediaserver.control.topology import local_labels

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await open_store(settings)
    boot = await bootstrap(store, settings)
    # Every gateway of a deployment must sign reconnect tokens alike, so the secret lives in the store.
    reconnect_secret = settings.secret_key or await store.server_value("reconnect_secret", new_secret)
    # The node serve starts itself carries the server's own media settings (a cluster's nodes
    # carry theirs in the labels their operator gives `ray start`).
    labels = local_labels(actor_config(settings))
    ice, local_turn = ice_servers(settings, boot)
    ray_info = cluster.init(settings.ray_address, settings.ray_namespace, verbose=settings.log_level == "debug", labels=labels)
    (settings.data_dir / "ray_address").write_text(ray_info["gcs_address"])
    try:
        control = ControlPlane(settings, store, await store.server_value("relay_secret", new_secret))
        await control.start()
        await control.ready()  # hosts and media workers running before anyone is told the URL
        app = create_app(settings, store, control, reconnect_secret=reconnect_secret, ice_servers=ice)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            loop="none",  # we already run on uvloop
            log_level=settings.log_level,
            ws_max_size=256 * 1024,
            # Messages are small JSON: compressing them saves little on the wire and costs each
            # WebSocket a zlib context both ways (~100 KB) and CPU on every message.
            ws_per_message_deflate=False,
            http=http_protocol(WS_PATH, app.websocket),  # (/v1/ws past uvicorn's WebSocket layer and ASGI)
            # The client's address is ours to work out, with the trusted proxies it is told of
            # (mediaserver/api/clients.py); uvicorn's own rule would trust any local peer.
            proxy_headers=False,
            access_log=settings.log_level == "debug",
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.05)
        if server.started:
            heap.settle()
            if settings.port == 0:  # the kernel chose the port: links and the banner say which
                settings.port = server.servers[0].sockets[0].getsockname()[1]
                boot["join_url"] = demo_link(settings, boot)
            banner(settings, boot, ray_info, out, as_json=as_json)
        await task
        await control.stop()
    finally:
        await store.close()
        cluster.shutdown()
        if local_turn is not None:
            local_turn.stop()


def serve(settings: Settings, out: TextIO = sys.stdout, *, as_json: bool = False) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop

        uvloop.run(_serve(settings, out, as_json))
    except ImportError:  # uvloop is not on every platform
        asyncio.run(_serve(settings, out, as_json))
