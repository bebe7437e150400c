"""The ``mediaserver`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, Callable
from urllib.parse import quote

from pydantic import ValidationError

from mediaserver import __version__, tokens
from mediaserver.api.models import RoomCreate, check_capacity
from mediaserver.config import Settings, load_settings
from mediaserver.errors import MediaserverError


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        k: getattr(args, k, None)
        for k in ("host", "port", "public_url", "data_dir", "database_url", "ray_address", "grace_seconds", "log_level", "turn_local")
    }
    return load_settings(args.config, **overrides)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML config file (also MEDIASERVER_CONFIG)")
    p.add_argument("--data-dir", help="where the SQLite database lives (default ./mediaserver-data)")
    p.add_argument("--database-url", help="postgresql://... or sqlite+aiosqlite:///path")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _print(args: argparse.Namespace, data: dict, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


async def _with_store(settings: Settings, fn: Callable[[Any], Any]) -> Any:
    from mediaserver.server import open_store

    store = await open_store(settings)
    try:
        return await fn(store)
    finally:
        await store.close()


def cmd_serve(args: argparse.Namespace) -> None:
    from mediaserver.server import serve

    try:
        serve(_settings(args), as_json=args.json)
    except KeyboardInterrupt:
        # uvicorn re-raises Ctrl-C once it has shut down gracefully, and serve() has
        # stopped Ray on the way out: this is the normal way to stop.
        print("mediaserver stopped", file=sys.stderr)


def cmd_room_create(args: argparse.Namespace) -> None:
    settings = _settings(args)
    fields = {k: getattr(args, k) for k in ("name", "type", "media_mode", "archive_mode", "encryption", "capacity", "comment", "location_hint", "starts_at", "ends_at")}
    try:
        body = RoomCreate(**{k: v for k, v in fields.items() if v is not None})
        check_capacity(body.capacity, settings.max_room_capacity)
    except ValidationError as e:
        raise MediaserverError("invalid_request", "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))

    async def run(store: Any) -> dict:
        team = await store.ensure_team(args.team)
        return await store.create_room(team["id"], body.to_row(only_set=False))

    room = asyncio.run(_with_store(settings, run))
    _print(args, room, f"room {room['id']} ({room['name']}) created in team {args.team}")


def cmd_room_list(args: argparse.Namespace) -> None:
    settings = _settings(args)

    async def run(store: Any) -> list:
        team = await store.ensure_team(args.team)
        return await store.list_rooms(team["id"], q=args.q, limit=args.limit)

    rooms = asyncio.run(_with_store(settings, run))
    _print(args, {"rooms": rooms}, "\n".join(f"{r['id']}  {r['name']}  ({r['type']}, {r['media_mode']})" for r in rooms) or "no rooms")


def cmd_token_create(args: argparse.Namespace) -> None:
    settings = _settings(args)

    async def run(store: Any) -> tuple[dict, dict]:
        room = await store.get_room(args.room)
        if room is None:
            raise MediaserverError("room_not_found", f"no room {args.room!r}")
        if args.api_key:
            key = await store.get_api_key(args.api_key)
            if key is None or key["team_id"] != room["team_id"]:
                raise MediaserverError("unauthorized", f"no usable API key {args.api_key!r} for this room's team")
        else:
            keys = [k for k in await store.list_api_keys(room["team_id"]) if k["revoked_at"] is None]
            if not keys:
                raise MediaserverError("unauthorized", "the room's team has no API key; run `mediaserver apikey create`")
            key = keys[0]
        return room, key

    room, key = asyncio.run(_with_store(settings, run))
    token, grant = tokens.mint(
        key_id=key["id"],
        secret=key["secret"],
        room_id=room["id"],
        identity=args.identity,
        name=args.name,
        role=args.role,
        ttl=args.ttl or settings.token_default_ttl,
        max_ttl=settings.token_max_ttl,
    )
    join_url = f"{settings.base_url}/join/{room['id']}?token={quote(token)}"
    data = {"token": token, "room_id": room["id"], "identity": grant.identity, "role": grant.role, "expires_at": grant.expires_at, "join_url": join_url}
    _print(args, data, f"{token}\n\njoin: {join_url}")


def cmd_apikey_create(args: argparse.Namespace) -> None:
    settings = _settings(args)

    async def run(store: Any) -> dict:
        team = await store.ensure_team(args.team, max_live_sessions=args.max_live_sessions)
        return await store.create_api_key(team["id"], args.name)

    key = asyncio.run(_with_store(settings, run))
    _print(
        args,
        {"id": key["id"], "secret": key["secret"], "team": args.team},
        f"API key:    {key['id']}\nAPI secret: {key['secret']}\nteam:       {args.team}\n(keep the secret: it is shown in full only here and by `serve` for the bootstrap key)",
    )


def cmd_apikey_list(args: argparse.Namespace) -> None:
    keys = asyncio.run(_with_store(_settings(args), lambda s: s.list_api_keys()))
    rows = [{k: v for k, v in key.items() if k != "secret"} for key in keys]
    _print(args, {"keys": rows}, "\n".join(f"{k['id']}  team={k['team_name']}  name={k['name']}{'  (revoked)' if k['revoked_at'] else ''}" for k in rows) or "no keys")


def cmd_apikey_revoke(args: argparse.Namespace) -> None:
    ok = asyncio.run(_with_store(_settings(args), lambda s: s.revoke_api_key(args.key_id)))
    if not ok:
        raise MediaserverError("not_found", f"no active API key {args.key_id!r}")
    _print(args, {"revoked": args.key_id}, f"revoked {args.key_id}")


async def _with_cluster(settings: Settings, args: argparse.Namespace, fn: Callable[[Any], Any]) -> Any:
    """Run ``fn(control)`` against the running cluster: the Ray address given, or the one the
    local ``serve`` recorded in its data directory."""
    import os

    from actors import cluster
    from actors.control import ControlPlane
    from mediaserver.ids import new_secret
    from mediaserver.server import open_store

    address = args.ray_address or settings.ray_address
    recorded = settings.data_dir / "ray_address"
    if not address and recorded.exists():
        address = recorded.read_text().strip()
    if not address:
        raise MediaserverError("unavailable", "no cluster to talk to: give --ray-address HEAD:6379 (or run this next to `serve`)")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    cluster.init(address, settings.ray_namespace)
    store = await open_store(settings)
    try:
        control = ControlPlane(settings, store, await store.server_value("relay_secret", new_secret))
        await control.view.refresh(force=True)
        return await fn(control)
    finally:
        await store.close()
        cluster.shutdown()


def cmd_nodes(args: argparse.Namespace) -> None:
    async def run(control: Any) -> list[dict]:
        await control.media_stats()  # a first reading of the counters
        await asyncio.sleep(1.0)
        await control.media_stats()  # and a second, for packets/s
        return await control.node_summary()

    nodes = asyncio.run(_with_cluster(_settings(args), args, run))
    lines = [f"{'NODE':16} {'REGION':12} {'STATE':9} {'MEDIA ADDRESS':16} {'WORKERS':>7} {'SESSIONS':>8} {'PKT/S':>9}"]
    for n in nodes:
        state = n["state"] if n["alive"] else "gone"
        lines.append(f"{n['node']:16} {n['region']:12} {state:9} {n['media_address'] or '-':16} {len(n['workers']):>7} "
                     f"{n['sessions']:>8} {n['rate']:>9.0f}")
    _print(args, {"nodes": nodes}, "\n".join(lines))


def cmd_node_drain(args: argparse.Namespace) -> None:
    async def run(control: Any) -> list[dict]:
        return await control.drain(args.node, move=not args.keep_sessions)

    moved = asyncio.run(_with_cluster(_settings(args), args, run))
    text = f"{args.node} is draining: no new sessions go there"
    if args.keep_sessions:
        text += "; its live sessions stay until they end"
    else:
        text += "".join(f"\n  moved {m['session_id']}: {m['from']} -> {m['to']}" for m in moved) or "; it had no live sessions"
    _print(args, {"node": args.node, "state": "draining", "moved": moved}, text)


def cmd_node_undrain(args: argparse.Namespace) -> None:
    asyncio.run(_with_cluster(_settings(args), args, lambda control: control.undrain(args.node)))
    _print(args, {"node": args.node, "state": "active"}, f"{args.node} takes new sessions again")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mediaserver", description="Real-time video conferencing server.")
    parser.add_argument("--version", action="version", version=f"mediaserver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server (gateway, control plane, store)")
    _common(p)
    p.add_argument("--host", help="address the gateway listens on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="gateway port (default 8080)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    p.add_argument("--grace-seconds", type=float, help="how long a session outlives its last participant (default 420)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--turn-local", choices=["off", "auto", "on"],
                   help="start a coturn for participants on the media address (auto: if Debian's coturn is installed)")
    p.set_defaults(func=cmd_serve)

    room = sub.add_parser("room", help="rooms").add_subparsers(dest="action", required=True)
    p = room.add_parser("create", help="create a room")
    _common(p)
    p.add_argument("--name", required=True)
    p.add_argument("--team", default="default")
    p.add_argument("--type", choices=["adhoc", "group"])
    p.add_argument("--media-mode", choices=["routed", "relayed", "auto"])
    p.add_argument("--archive-mode", choices=["manual", "always"])
    p.add_argument("--encryption", choices=["server", "session_key", "passphrase"])
    p.add_argument("--capacity", type=int)
    p.add_argument("--comment")
    p.add_argument("--location-hint", help="an IP address near the participants")
    p.add_argument("--starts-at", help="ISO 8601 time")
    p.add_argument("--ends-at", help="ISO 8601 time")
    p.set_defaults(func=cmd_room_create)
    p = room.add_parser("list", help="list rooms")
    _common(p)
    p.add_argument("--team", default="default")
    p.add_argument("--q", help="search room ID, name or comment")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_room_list)

    token = sub.add_parser("token", help="participant tokens").add_subparsers(dest="action", required=True)
    p = token.add_parser("create", help="mint a participant token")
    _common(p)
    p.add_argument("--room", required=True, help="room ID")
    p.add_argument("--identity", required=True)
    p.add_argument("--name", help="display name")
    p.add_argument("--role", default="publisher", choices=list(tokens.ROLES))
    p.add_argument("--ttl", type=int, help="seconds (default 24 h, at most 30 days)")
    p.add_argument("--api-key", help="key id to sign with (default: the team's first key)")
    p.add_argument("--public-url", help="the server's address for the join link (default: from the config, http://127.0.0.1:8080)")
    p.set_defaults(func=cmd_token_create)

    apikey = sub.add_parser("apikey", help="API keys").add_subparsers(dest="action", required=True)
    p = apikey.add_parser("create", help="create an API key (and its team if new)")
    _common(p)
    p.add_argument("--team", default="default")
    p.add_argument("--name", default="default")
    p.add_argument("--max-live-sessions", type=int, help="the team's limit of concurrent live sessions")
    p.set_defaults(func=cmd_apikey_create)
    p = apikey.add_parser("list", help="list API keys (without secrets)")
    _common(p)
    p.set_defaults(func=cmd_apikey_list)
    p = apikey.add_parser("revoke", help="revoke an API key")
    _common(p)
    p.add_argument("key_id")
    p.set_defaults(func=cmd_apikey_revoke)

    p = sub.add_parser("nodes", help="the cluster's nodes: region, state, media address, workers, sessions, load")
    _common(p)
    p.add_argument("--ray-address", help="the cluster (default: the one the local serve started)")
    p.set_defaults(func=cmd_nodes)
    node = sub.add_parser("node", help="one node of the cluster").add_subparsers(dest="action", required=True)
    p = node.add_parser("drain", help="take no new sessions on NODE; move its live ones off it")
    _common(p)
    p.add_argument("node", help="the node's IP address, as `mediaserver nodes` shows it")
    p.add_argument("--keep-sessions", action="store_true", help="leave its live sessions where they are until they end")
    p.add_argument("--ray-address", help="the cluster (default: the one the local serve started)")
    p.set_defaults(func=cmd_node_drain)
    p = node.add_parser("undrain", help="let NODE take new sessions again")
    _common(p)
    p.add_argument("node")
    p.add_argument("--ray-address")
    p.set_defaults(func=cmd_node_undrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MediaserverError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
