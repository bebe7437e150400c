"""The one place configuration comes from.

Precedence, lowest first: defaults < TOML file < ``MEDIASERVER_*`` environment
variables < explicit overrides (command-line flags). The TOML file is named by
``MEDIASERVER_CONFIG`` or ``--config``; keys are the field names below.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_ENV = "MEDIASERVER_CONFIG"
_config_file: ContextVar[str | None] = ContextVar("config_file", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDIASERVER_", extra="forbid")

    # Gateway
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    public_url: str | None = None  # how clients reach the gateway; derived from host:port if unset
    max_request_bytes: int = Field(1024 * 1024, ge=1024)  # a larger request body is refused (413) before it is read

    # Store
    data_dir: Path = Path("mediaserver-data")
    database_url: str | None = None  # default: SQLite file in data_dir

    # Control plane
    ray_address: str | None = None  # None: start a local Ray instance
    ray_namespace: str = "mediaserver"
    grace_seconds: float = Field(420.0, gt=0)  # session/participant grace after leaving
    tick_seconds: float = Field(1.0, gt=0)  # how often lifecycle timers are checked
    quality_seconds: float = Field(10.0, gt=0)  # how often receivers' quality goes into their event logs
    # A participant's event stream is a long-poll that its gateway renews at least this often
    # (each renewal also tells the session the gateway is alive)...
    poll_seconds: float = Field(25.0, gt=0)
    stale_seconds: float = Field(60.0, gt=0)  # ...and one whose gateway went silent this long is disconnected
    ping_seconds: float = Field(15.0, gt=0)  # WebSocket server pings
    join_timeout_seconds: float = Field(10.0, gt=0)  # time to send the first WebSocket message
    default_max_live_sessions: int = Field(10, ge=1)  # per team, unless the team says otherwise
    max_room_capacity: int = Field(50, ge=1, le=100_000)  # participants a room may hold (raise it for webinars)
    relayed_max_participants: int = Field(4, ge=2, le=16)  # a peer-to-peer (relayed) session's participants at most
    auto_back_to_direct: bool = False  # an auto room that went routed goes peer to peer again when two remain
    # Session hosts per node (of the node serve starts; cluster nodes say theirs in their labels,
    # see mediaserver/control/topology.py). None: one per two CPUs, at least one.
    session_hosts: int | None = Field(None, ge=1, le=64)

    # Media plane
    media_workers: int | None = Field(None, ge=1, le=64)  # per node; None: one per CPU less one, at least one
    media_port: int = Field(7882, ge=0, le=65535)  # first worker's UDP port (+1 per worker); 0: any free port
    media_bind_host: str = "127.0.0.1"
    media_advertised_host: str | None = None  # the address clients send media to; the bind host if unset
    media_allowed_networks: list[str] = ["0.0.0.0/0", "::/0"]  # ICE answers only these client networks
    media_fastpath: bool = True  # forward in C (IPv4); false: the pure-Python reference path
    # The fast path sends a subscriber's consecutive packets in one UDP_SEGMENT (GSO) send; a
    # path that refuses it gets single datagrams anyway, so turning this off is for measuring.
    media_gso: bool = True
    # Threads each media worker's fast path sends with: its loop's and this many less one more,
    # each protecting and sending a share of the subscribers. More than one pays on a node whose
    # cores are not all taken by workers, for one publisher's fan-out to hundreds (a webinar).
    media_send_threads: int = Field(1, ge=1, le=16)
    # Debugging: with media_fastpath false, each worker writes the first packets it forwards
    # (SRTP removed) here as JSON lines, to see what the server sees. Never on a real deployment.
    media_tap_dir: Path | None = None

    # Archives: where recorders write them (default: data_dir/archives; in a cluster, storage
    # every node shares), and how long one records before it stops (always mode: and the next begins)
    archive_dir: Path | None = None
    archive_max_seconds: float = Field(4 * 3600.0, gt=0)
    media_worker_capacity: float = Field(250_000, gt=0)  # forwarded packets/s one media worker takes
    session_load_estimate: float = Field(1_000, gt=0)  # packets/s held for a new session until it forwards its own
    session_receivers_per_worker: int = Field(1_000, ge=1)  # past this, a session's receivers go to another worker
    region: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")  # the region of the node serve starts
    region_networks: dict[str, str] = {}  # client network (CIDR) -> region, for placing sessions near their people
    trusted_proxies: list[str] = []  # proxies whose X-Forwarded-For is believed (CIDRs)

    # ICE servers given to every participant (in `joined`): STUN, and TURN with short-lived
    # credentials from turn_secret (coturn's static-auth-secret, use-auth-secret), valid turn_ttl s.
    stun_urls: list[str] = []  # e.g. ["stun:turn.example.com:3478"]
    turn_urls: list[str] = []  # e.g. ["turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"]
    turn_secret: str | None = None
    turn_ttl: int = Field(86400, ge=60, le=7 * 86400)
    # serve starts its own coturn on the media address: "auto" when Debian's coturn is installed
    # (make run), "on" (fail without it), "off"; its port is turn_local_port (UDP and TCP).
    turn_local: Literal["off", "auto", "on"] = "off"
    turn_local_port: int = Field(3478, ge=1, le=65535)

    # Tokens
    token_default_ttl: int = Field(24 * 3600, gt=0)
    token_max_ttl: int = Field(30 * 24 * 3600, gt=0)
    secret_key: str | None = None  # signs reconnect tokens; if unset, one is made and kept in the store

    log_level: str = "info"

    @field_validator("region_networks")
    @classmethod
    def _known_networks(cls, v: dict[str, str]) -> dict[str, str]:
        import ipaddress

        for cidr in v:
            ipaddress.ip_network(cidr, strict=False)  # a bad one stops the start, with its name
        return v

    @field_validator("trusted_proxies", "media_allowed_networks")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        import ipaddress

        for cidr in v:
            ipaddress.ip_network(cidr, strict=False)
        return v

    @field_validator("stun_urls", "turn_urls")
    @classmethod
    def _ice_urls(cls, v: list[str]) -> list[str]:
        for url in v:  # RFC 7064 (stun:, stuns:) and RFC 7065 (turn:, turns:) URIs
            if not url.split(":", 1)[0] in ("stun", "stuns", "turn", "turns") or len(url.split(":", 1)[-1]) < 1:
                raise ValueError(f"{url!r} is not a stun:, stuns:, turn: or turns: URL")
        return v

    @model_validator(mode="after")
    def _turn_needs_secret(self) -> "Settings":
        if self.turn_urls and not self.turn_secret:
            raise ValueError("turn_urls need turn_secret (the TURN server's static-auth-secret) to make credentials")
        return self

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith("postgresql://"):  # accept the plain form; we always use asyncpg
            v = "postgresql+asyncpg://" + v[len("postgresql://"):]
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("database_url must be postgresql://... or sqlite+aiosqlite:///path")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = _config_file.get() or os.environ.get(CONFIG_ENV)
        if toml_path:
            if not Path(toml_path).is_file():
                raise FileNotFoundError(f"{CONFIG_ENV}={toml_path}: no such file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    # Derived values -------------------------------------------------------

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir.resolve() / 'mediaserver.db'}"

    @property
    def archive_path(self) -> Path:
        return self.archive_dir or self.data_dir / "archives"

    @property
    def base_url(self) -> str:
        """How clients reach the gateway: ``public_url``, else the address it listens on; for a
        wildcard address (0.0.0.0, ::), this machine's first address other machines can reach."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = reachable_address() or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def url_warnings(self) -> list[str]:
        """What the operator should know about the links the server hands out."""
        if self.public_url or self.host not in ("0.0.0.0", "::", ""):
            return []
        if reachable_address() is None:
            return [
                f"listening on {self.host} but this machine has no address other machines can reach: links say "
                "127.0.0.1; set public_url (MEDIASERVER_PUBLIC_URL) to the address clients use"
            ]
        return [
            f"links use {self.base_url}, this machine's first address; behind a proxy or NAT set public_url "
            "(MEDIASERVER_PUBLIC_URL) to the address clients use"
        ]


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Build settings; ``config_file`` (a TOML path) overrides ``MEDIASERVER_CONFIG``."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        return Settings(**clean)
    finally:
        _config_file.reset(token)


def reachable_address() -> str | None:
    """This machine's first IPv4 address that is not loopback (no packet is sent); None when it
    has none, e.g. inside a network namespace that holds only loopback."""
    import ipaddress
    import socket

    candidates: list[str] = []
    try:  # Linux: each interface's address (SIOCGIFADDR)
        import fcntl
        import struct

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in socket.if_nameindex():
                try:
                    raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                except OSError:
                    continue  # no IPv4 address on this interface
                candidates.append(socket.inet_ntoa(raw[20:24]))
    except (ImportError, OSError):
        pass
    try:
        candidates += [i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET, socket.SOCK_STREAM)]
    except OSError:
        pass
    for address in candidates:
        ip = ipaddress.ip_address(address)
        if not (ip.is_loopback or ip.is_unspecified or ip.is_link_local):
            return address
    return None
