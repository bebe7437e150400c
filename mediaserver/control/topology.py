"""The cluster as the control plane sees it: nodes, their regions, media workers and session
hosts, from what each Ray node says about itself (its labels), without Ray.

An operator sets a node's media settings when starting it, as Ray node labels:

    ray start --address HEAD:6379 --node-ip-address 10.0.0.7 \\
        --labels "mediaserver-region=eu-west,mediaserver-media-host=203.0.113.7"

- ``mediaserver-region``: the node's region (for location hints and client networks);
- ``mediaserver-media-host``: the address clients send media to (default: the node's IP);
- ``mediaserver-media-bind``: the address its media workers bind (default: the node's IP);
- ``mediaserver-media-port``: the first worker's UDP port, +1 per worker (default ``media_port``);
- ``mediaserver-media-workers``: how many media workers (default: one per CPU of the node less
  one, for the control plane, at least one);
- ``mediaserver-session-hosts``: how many session hosts (default: one per two CPUs).

A node without labels gets the defaults, and the server's own configuration (``region``,
``media_*``) is the label set of the node ``serve`` starts itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LABEL = "mediaserver-"


@dataclass(frozen=True)
class WorkerSpec:
    name: str  # the actor's name: media:<node ip>:<index>
    node_id: str
    node: str  # the node's IP, its name here
    index: int
    bind_host: str
    advertised_host: str
    port: int  # 0: any free port


@dataclass
class NodeSpec:
    node_id: str
    ip: str
    alive: bool
    region: str
    cpus: int
    workers: list[WorkerSpec] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)


def host_name(node: str, index: int) -> str:
    return f"host:{node}:{index}"


def worker_name(node: str, index: int) -> str:
    return f"media:{node}:{index}"


def node_of(actor_name: str) -> str:
    """The node an actor named host:<node>:<i> or media:<node>:<i> belongs to."""
    return actor_name.split(":", 1)[1].rsplit(":", 1)[0]


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value not in (None, "") else default
    except ValueError:
        return default


def describe(nodes: list[dict], cfg: dict) -> list[NodeSpec]:
    """Every node Ray knows (``{"id", "ip", "alive", "labels", "cpus"}``), with what runs on it."""
    out = []
    for n in nodes:
        labels = n.get("labels") or {}
        ip = n["ip"]
        cpus = max(1, int(n.get("cpus") or 1))
        count = _int(labels.get(LABEL + "media-workers"), cfg.get("media_workers") or max(1, cpus - 1))
        hosts = _int(labels.get(LABEL + "session-hosts"), cfg.get("session_hosts") or max(1, cpus // 2))
        first = _int(labels.get(LABEL + "media-port"), cfg.get("media_port", 0))
        bind = labels.get(LABEL + "media-bind") or ip
        advertised = labels.get(LABEL + "media-host") or bind
        spec = NodeSpec(n["id"], ip, bool(n.get("alive")), labels.get(LABEL + "region") or cfg.get("region") or "default", cpus)
        spec.workers = [
            WorkerSpec(worker_name(ip, i), n["id"], ip, i, bind, advertised, first + i if first else 0) for i in range(count)
        ]
        spec.hosts = [host_name(ip, i) for i in range(hosts)]
        out.append(spec)
    return out


def local_labels(cfg: dict) -> dict[str, str]:
    """The labels of the node ``serve`` starts itself: the server's own settings."""
    labels = {LABEL + "region": cfg.get("region") or "default", LABEL + "media-bind": cfg["media_bind_host"],
              LABEL + "media-host": cfg["media_advertised_host"], LABEL + "media-port": str(cfg["media_port"])}
    if cfg.get("media_workers"):
        labels[LABEL + "media-workers"] = str(cfg["media_workers"])
    if cfg.get("session_hosts"):
        labels[LABEL + "session-hosts"] = str(cfg["session_hosts"])
    return labels
