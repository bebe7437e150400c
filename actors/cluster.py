"""The one module that calls Ray.

Actor classes elsewhere are plain Python; this module turns them into Ray
actors (named, detached, restartable), finds them, calls them and unwraps
their errors into ``MediaserverError``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from mediaserver.errors import MediaserverError

log = logging.getLogger(__name__)

_remote_classes: dict[type, Any] = {}


def init(address: str | None, namespace: str) -> dict:
    """Join the Ray cluster at ``address``, or start a local one when it is None."""
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "namespace": namespace,
            "logging_level": logging.WARNING,
            "log_to_driver": True,
        }
        if address:
            kwargs["address"] = address
        else:
            # "local": a new instance of our own, even if `ray start` left a cluster recorded on
            # this machine (plain ray.init() would join that one, and it is not ours to stop).
            kwargs["address"] = "local"
            # Ray binds the embedded instance to this host's routable address (it refuses to
            # advertise loopback); tests run in a loopback-only network namespace.
            kwargs["include_dashboard"] = False
        ray.init(**kwargs)
    ctx = ray.get_runtime_context()
    return {"gcs_address": ctx.gcs_address, "namespace": namespace, "started_here": not address}


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def _remote(cls: type) -> Any:
    if cls not in _remote_classes:
        _remote_classes[cls] = ray.remote(cls)
    return _remote_classes[cls]


def get_or_create(cls: type, name: str, *args: Any) -> Any:
    """The named actor, created if missing. Control actors are detached (they outlive any one
    gateway), restart without limit, rebuild from the store, and take no CPU slot."""
    return (
        _remote(cls)
        .options(
            name=name,  # in the current job's namespace, which actors inherit from their creator
            get_if_exists=True,
            lifetime="detached",
            max_restarts=-1,
            max_task_retries=0,
            num_cpus=0,
            max_concurrency=1000,
        )
        .remote(*args)
    )


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
        cause = e.cause if isinstance(e.cause, BaseException) else None
        if isinstance(cause, MediaserverError):
            raise MediaserverError(cause.code, cause.message) from None
        log.error("actor call %s failed: %r", method, e)
        raise MediaserverError("internal", f"the control plane failed on {method}") from None
    except RayActorError as e:
        raise MediaserverError("unavailable", f"the control plane is restarting ({type(e).__name__}); retry shortly") from None


async def call_retrying(handle: Any, method: str, *args: Any, deadline: float = 30.0, **kwargs: Any) -> Any:
    """``call`` that waits out an actor restart; only for idempotent methods."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    delay = 0.05
    while True:
        try:
            return await call(handle, method, *args, **kwargs)
        except MediaserverError as e:
            if e.code != "unavailable" or loop.time() + delay > end:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


def kill(name: str, *, restart: bool) -> bool:
    """Kill a named actor's process; with ``restart`` Ray brings it back (fault tests, ending)."""
    handle = find(name)
    if handle is None:
        return False
    ray.kill(handle, no_restart=not restart)
    return True
