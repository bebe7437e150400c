"""The one module that calls Ray.

Actor classes elsewhere are plain Python; this module turns them into Ray
actors (named, detached, restartable), finds them, calls them and unwraps
their errors into ``MediaserverError``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

# A Ray call made before ``init`` (or after ``shutdown``, by a thread still finishing a cluster
# view) must fail, not start Ray or join whatever cluster this machine last started: Ray reads
# this when first imported.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")

import ray  # noqa: E402
from ray.exceptions import ActorUnschedulableError, RayActorError, RayTaskError  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from mediaserver.control.batch import Batcher  # noqa: E402
from mediaserver.errors import MediaserverError  # noqa: E402

try:  # (the same when Ray was imported before this module, as in an actor's process)
    from ray._private import auto_init_hook

    auto_init_hook.enable_auto_connect = False
except (ImportError, AttributeError):  # pragma: no cover - Ray's internals moved; the variable above still applies
    pass

log = logging.getLogger(__name__)

_remote_classes: dict[type, Any] = {}


# Ray settings for an instance serve starts itself (an operator's cluster sets its own, see the
# README): no idle workers kept in reserve (each is a ~50 MB process), and a call to an actor
# that died fails within 0.1 s instead of 1 s, so owners learn of a death at once. A caller
# checks that wait on its core worker's bookkeeping tick (1 s by default), so without the tick
# at 0.1 s a call made while a host restarts failed up to a second after the host was back.
SYSTEM_CONFIG = {
    "enable_worker_prestart": False,
    "prestart_worker_first_driver": False,
    "timeout_ms_task_wait_for_death_info": 100,
    "core_worker_internal_heartbeat_ms": 100,
}

_local_node: Any = None  # the Ray node serve started, when it started one itself


def init(address: str | None, namespace: str, *, verbose: bool = False, labels: dict[str, str] | None = None) -> dict:
    """Join the Ray cluster at ``address``, or start a local one when it is None.

    A local instance is started lean: the Ray processes a single-node server never uses (the
    autoscaler's monitor, the dashboard's web server, and unless ``verbose`` the log monitor
    that copies actors' output to this console) are left out. That takes Ray's own node API;
    should it change, the instance is started the ordinary way (``ray.init``)."""
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"namespace": namespace, "logging_level": logging.WARNING, "log_to_driver": True}
        if address:
            ray.init(address=address, **kwargs)
        else:
            lean = _start_lean_node(verbose, labels or {})
            if lean:
                # ray.init turns a loopback address into this machine's routable one before it
                # connects, unless it knows the node it runs on; the lean node listens on
                # loopback only, so it is told (on a machine with a network interface it hung,
                # "Failed to connect to GCS at address <LAN address>").
                import ray._private.worker as ray_worker

                ray_worker._global_node = _local_node
                ray.init(address=lean, **kwargs)
            else:
                # "local": a new instance of our own, even if `ray start` left a cluster recorded on
                # this machine (plain ray.init() would join that one, and it is not ours to stop).
                ray.init(address="local", include_dashboard=False, _system_config=SYSTEM_CONFIG, labels=labels, **kwargs)
    ctx = ray.get_runtime_context()
    return {"gcs_address": ctx.gcs_address, "namespace": namespace, "started_here": not address}


def _start_lean_node(verbose: bool, labels: dict[str, str]) -> str | None:
    global _local_node
    try:
        from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
        from ray._private.node import Node
        from ray._private.parameter import RayParams
        from ray._private.worker import enable_token_auth_by_default

        class LeanNode(Node):
            def start_api_server(self, *, include_dashboard: Any, raise_on_failure: Any) -> None:
                pass  # the dashboard's web server: nothing here uses it

        system_config = dict(SYSTEM_CONFIG)
        enable_token_auth_by_default()
        ensure_token_if_auth_enabled(system_config, create_token_if_missing=True)
        params = RayParams(
            # Ray would advertise this host's routable address (it refuses loopback by default);
            # tests run in a loopback-only network namespace.
            node_ip_address="127.0.0.1", include_dashboard=False, no_monitor=True, include_log_monitor=verbose,
            _system_config=system_config, labels=labels,
        )
        _local_node = LeanNode(params, head=True, shutdown_at_exit=False, spawn_reaper=True, ray_init_cluster=True)
        return _local_node.address
    except Exception as e:  # Ray's internals moved: start it the ordinary way
        log.warning("starting Ray the ordinary way (%s: %s)", type(e).__name__, e)
        _local_node = None
        return None


def shutdown() -> None:
    global _local_node
    if ray.is_initialized():
        ray.shutdown()
    if _local_node is not None:
        _local_node.kill_all_processes(check_alive=False, allow_graceful=True)
        _local_node = None


def _remote(cls: type) -> Any:
    if cls not in _remote_classes:
        _remote_classes[cls] = ray.remote(cls)
    return _remote_classes[cls]


def get_or_create(
    cls: type, name: str, *args: Any, restart: bool = True, node_id: str | None = None, pinned: bool = False
) -> Any:
    """The named actor, created if missing. Actors are detached (they outlive any one gateway)
    and take no CPU slot. Control actors restart without limit and rebuild from the store;
    ``restart=False`` leaves a dead actor dead, so callers see its death at once (a call to a
    restarting actor fails only once it is back) and create it anew themselves. ``node_id``
    places it on that node: only there if ``pinned`` (it dies with the node), else preferably
    there (restarted elsewhere if the node goes)."""
    options: dict[str, Any] = {}
    if node_id is not None:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=not pinned)
    return (
        _remote(cls)
        .options(
            name=name,  # in the current job's namespace, which actors inherit from their creator
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1 if restart else 0,
            **options,
            max_task_retries=0,
            num_cpus=0,
            # Async actors: this bounds the calls under way at once, long-polls included (a host
            # has one per connected participant it owns).
            max_concurrency=100_000,
        )
        .remote(*args)
    )


def nodes() -> list[dict]:
    """Every node of the cluster: {"id", "ip", "alive", "labels", "cpus"}."""
    if not ray.is_initialized():
        raise MediaserverError("unavailable", "not connected to the Ray cluster (not started yet, or stopping)")
    return [
        {"id": n["NodeID"], "ip": n["NodeManagerAddress"], "alive": bool(n.get("Alive")), "labels": n.get("Labels") or {},
         "cpus": int((n.get("Resources") or {}).get("CPU", 1))}
        for n in ray.nodes()
    ]


def node_ip() -> str:
    """The address of the node this process runs on, as the cluster knows it."""
    return ray.util.get_node_ip_address()


def find(name: str) -> Any | None:
    try:
        return ray.get_actor(name)
    except ValueError:
        return None


async def call(handle: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call an actor method; its MediaserverError comes back as itself, a dead or
    restarting actor as ``unavailable``."""
    try:
        return await getattr(handle, method).remote(*args, **kwargs)
    except RayTaskError as e:
        raise _refusal(e, f"actor call {method}", f"the control plane failed on {method}") from None
    except (RayActorError, ActorUnschedulableError) as e:
        # Dead, restarting, or pinned to a node that is gone: the caller decides what next.
        raise MediaserverError("unavailable", f"the control plane is restarting ({type(e).__name__}); retry shortly") from None


class ActorClient:
    """Calls on one named actor, found (or created) by ``_make`` at the first call; once it has
    died, the next call makes it anew (for actors that Ray does not restart). With ``_batched``,
    the calls made in one turn of the event loop go as one message (the actor's ``calls``, see
    ``mediaserver.control.batch``), all but the long ones (``_long``)."""

    _handle: Any = None
    _batched = False
    _long: frozenset[str] = frozenset({"watch"})
    _batch: Batcher | None = None

    def _make(self) -> Any:
        raise NotImplementedError

    def _current(self) -> Any:
        if self._handle is None:
            self._handle = self._make()
        return self._handle

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)

        async def remote_call(*args: Any) -> Any:
            try:
                if self._batched and method not in self._long:
                    if self._batch is None:
                        self._batch = Batcher(lambda batch: call(self._current(), "calls", batch))
                    return await self._batch.call(method, args)
                return await call(self._current(), method, *args)
            except MediaserverError as e:
                if e.code == "unavailable":
                    self._handle = None  # dead: the next call finds (or starts) the new one
                raise

        return remote_call


_remote_functions: dict[Any, Any] = {}


async def run_task(fn: Any, *args: Any, num_cpus: float = 1) -> Any:
    """Run ``fn(*args)`` as a Ray task on whichever node has ``num_cpus`` free (work off the live
    path, e.g. transcoding); its MediaserverError comes back as itself."""
    if fn not in _remote_functions:
        _remote_functions[fn] = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    try:
        return await _remote_functions[fn].remote(*args)
    except RayTaskError as e:
        name = getattr(fn, "__name__", fn)
        raise _refusal(e, f"task {name}", f"the task {name} failed") from None


def _refusal(e: RayTaskError, what: str, message: str) -> MediaserverError:
    """The MediaserverError a remote call raised, as itself; anything else as ``internal``."""
    cause = e.cause if isinstance(e.cause, BaseException) else None
    if isinstance(cause, MediaserverError):
        return MediaserverError(cause.code, cause.message)
    log.error("%s failed: %r", what, e)
    return MediaserverError("internal", message)


# Then every 0.1 s: a restarting actor is back in about a second, and a call to it fails 0.1-0.2 s
# after it is made (Ray's tick, SYSTEM_CONFIG), so a longer wait only adds to the outage.
RETRY_DELAYS = (0.02, 0.05, 0.1)


def retry_delay(attempt: int) -> float:
    """How long to wait before trying a call to a restarting actor again (``attempt`` from 0)."""
    return RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]


async def call_retrying(handle: Any, method: str, *args: Any, deadline: float = 30.0, **kwargs: Any) -> Any:
    """``call`` that waits out an actor restart; only for idempotent methods."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    for attempt in itertools.count():
        try:
            return await call(handle, method, *args, **kwargs)
        except MediaserverError as e:
            delay = retry_delay(attempt)
            if e.code != "unavailable" or loop.time() + delay > end:
                raise
        await asyncio.sleep(delay)


def kill(name: str, *, restart: bool) -> bool:
    """Kill a named actor's process; with ``restart`` Ray brings it back (fault tests, ending)."""
    handle = find(name)
    if handle is None:
        return False
    ray.kill(handle, no_restart=not restart)
    return True
