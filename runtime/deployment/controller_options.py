"""A deployment's names, folders and options, and how its controller actor comes back."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamdag.config import Settings

__all__ = ["ControllerOptions", "controller_actor_name", "deployment_state_dir",
           "start_when_restarted_by_ray"]

_log = logging.getLogger("streamdag.controller")


def deployment_state_dir(settings: Settings) -> Path:
    """Where a deployment keeps its registry, submissions and log unless told otherwise.

    >>> deployment_state_dir(Settings(name="live", state_dir=".state")).as_posix()
    '.state/deployments/live'
    """
    return Path(settings.state_dir) / "deployments" / settings.name


def controller_actor_name(deployment: str) -> str:
    """The Ray actor name of a deployment's controller (namespace ``streamdag``).

    >>> controller_actor_name("live")
    'streamdag-controller-live'
    """
    return f"streamdag-controller-{deployment}"


@dataclass(frozen=True)
class ControllerOptions:
    """How the controller behaves; the defaults suit a live deployment."""

    #: Seconds a node no graph uses any more keeps draining (unsubscribed) before it stops.
    grace_s: float = 1.0
    #: Seconds between two health checks of every node actor; 0 turns periodic checks off.
    health_interval_s: float = 2.0
    #: Seconds a generation of new actors has to report ready.
    ready_timeout_s: float = 60.0
    #: Seconds one actor call of a health check or a stop may take.
    call_timeout_s: float = 10.0
    #: Seconds a call may wait for the controller's lock before the log shows the stack of
    #: the task holding it (again every as many seconds); 0 turns the report off.
    lock_report_after_s: float = 30.0
    #: Health probes in a row (each ``call_timeout_s``) a node actor may leave unanswered
    #: before it is killed as unresponsive and counts as dead; 0: never. Six rounds are over a
    #: minute at the defaults, more than Flink's 50 s heartbeat timeout: a node compiling a
    #: user function on a busy box is slow, not dead.
    unresponsive_probes: int = 6
    #: Kafka topic receiving the lifecycle CloudEvents.
    lifecycle_topic: str = "streamdag.lifecycle"
    #: Create missing sink topics (with ``settings.kafka.partitions``) before creating sinks.
    create_sink_topics: bool = True
    #: Share nodes that graphs define identically; False (benchmarks only) gives every graph
    #: actors of its own.
    dedup: bool = True


def start_when_restarted_by_ray(start: Callable[[], Coroutine[Any, Any, None]]
                                ) -> asyncio.Task[None] | None:
    """A controller actor that Ray restarted after it died starts by itself (finds its
    actors, recovers its regions, checks health) instead of waiting for the next request.

    Ray runs an async actor's ``__init__`` on the actor's event loop, so ``start`` is
    scheduled there as a task that runs once ``__init__`` returns; the task is returned for
    the caller to keep (the loop holds tasks weakly). A call of the actor to itself, as
    before, goes through Ray's routing of calls to a restarted actor, one more part that
    must work before the deployment recovers.
    """
    import ray

    if not ray.is_initialized():
        return None
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return None
    with warnings.catch_warnings():  # Ray's property reads a deprecated one of its own
        warnings.simplefilter("ignore", DeprecationWarning)
        restarted = context.was_current_actor_reconstructed
    if not restarted:
        return None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a Ray that runs ``__init__`` off the actor's loop: call itself
        context.current_actor.start.remote()
        return None
    task = loop.create_task(start(), name="controller-restart")
    task.add_done_callback(_log_failed_start)
    return task


def _log_failed_start(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        _log.error("the restarted controller failed to start", exc_info=task.exception())
