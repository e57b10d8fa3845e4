"""Nodes as Ray actors: the Ray backend of the deployment sequence and of checkpoints."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from runtime.checkpoints.quiet import SourceQuiet
from runtime.checkpoints.store import SnapshotRef
from runtime.dataplane.channels import RayTarget
from runtime.dataplane.checkpointing import CheckpointTarget, NodeSnapshot
from runtime.dataplane.exchange import KeyRoute, RoutedTarget
from runtime.dataplane.failures import failure_cause
from runtime.dataplane.host import RuntimeSettings
from runtime.dataplane.sockets import SocketTarget
from runtime.inference.host import (
    INFERENCE_OPERATOR,
    actor_class_options,
    host_class,
    inference_actor_options,
)
from runtime.planning.wiring import HostSpec
from runtime.runners.deploy_sequence import ActorNotReadyError

__all__ = ["RayNodes", "ShardOptions", "awaited", "node_actor_class", "run_blocking"]

T = TypeVar("T")
#: Extra Ray actor options of one shard: ``(node name, shard, shards) -> options``, e.g. a
#: custom resource that only some cluster nodes have, to place each shard on its machine.
ShardOptions = Callable[[str, int, int], Mapping[str, Any]]


#: The actor classes made so far, by host class and ``ray.remote`` options (see below).
_ACTOR_CLASSES: dict[tuple[type, str], Any] = {}


def node_actor_class(operator: str = "") -> Any:
    """The host class of ``operator``'s nodes wrapped with ``ray.remote``: one node's actor.

    One wrapper per host class and options in a process: Ray exports an actor class (pickles
    it and disassembles every method for a collision check, 0.1-0.3 s on a 2-core box) once
    per wrapper and job, so a new wrapper per actor made each creation pay it, one by one.
    """
    import ray

    host, options = host_class(operator), actor_class_options(operator)
    key = (host, repr(options))
    if key not in _ACTOR_CLASSES:
        _ACTOR_CLASSES[key] = ray.remote(**options)(host) if options else ray.remote(host)
    return _ACTOR_CLASSES[key]


class RayNodes:
    """The deployment sequence's backend on Ray: each node an actor hosting its ``NodeHost``.

    Every actor is asked to get ready (load its kernels, open its connectors) as soon as it is
    created, so all of them do it at once, whatever their generation; ``wait_ready`` then only
    waits, one generation at a time, and nothing is wired before its consumers are ready.
    """

    def __init__(
        self,
        settings: RuntimeSettings,
        actor_options: Mapping[str, Any] | None = None,
        *,
        ready_timeout_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.actor_options: dict[str, Any] = {"num_cpus": 0, **(actor_options or {})}
        #: Seconds a generation is given to become ready (None: as long as it takes).
        self.ready_timeout_s = ready_timeout_s
        #: The actor of every node created (or found), by key.
        self.handles: dict[str, Any] = {}
        #: Keys of the source nodes created, so they can be stopped first.
        self.sources: list[str] = []
        #: What the next actors are created with when a region is restored.
        self.incarnation = 0
        self.snapshots: dict[str, NodeSnapshot] = {}
        self.checkpoints: CheckpointTarget | None = None
        #: Per-shard actor options on top of ``options_for`` (None: the same for every shard).
        self.shard_options: ShardOptions | None = None
        #: The ``ready`` call of every actor created and not waited for yet, by key.
        self._getting_ready: dict[str, Any] = {}

    def options_for(self, key: str) -> dict[str, Any]:
        """Ray actor options of the actor of ``key``."""
        return self.actor_options

    def checkpoints_for(self, key: str) -> CheckpointTarget | None:
        """Where the actor of ``key`` puts its snapshots (None: it takes no part)."""
        return self.checkpoints

    def create(self, key: str, host: HostSpec) -> Any:
        """Create the actor of ``key`` hosting ``host``'s node; returns its handle."""
        handle = self.new_actor(key, host)
        self.handles[key] = handle
        self._getting_ready[key] = handle.ready.remote()
        if host.source is not None:
            self.sources.append(key)
        return handle

    def new_actor(self, key: str, host: HostSpec) -> Any:
        """Start a new actor process hosting ``host``'s node as ``key``; its handle."""
        options = {**self.options_for(key),
                   **inference_actor_options(host.node, _cluster_gpus(host.node))}
        if self.shard_options is not None:
            options = {**options, **self.shard_options(host.node.name, host.shard, host.shards)}
        return node_actor_class(host.node.operator).options(**options).remote(
            **self.host_arguments(key, host))

    def host_arguments(self, key: str, host: HostSpec) -> dict[str, Any]:
        """The ``NodeHost`` keyword arguments of ``key``'s actor (incarnation, snapshot,
        checkpoints as this backend has them now)."""
        return host.host_arguments(self.settings, incarnation=self.incarnation,
                                   snapshot=self.snapshots.get(key),
                                   checkpoints=self.checkpoints_for(key))

    async def wait_ready(self, names: Mapping[str, str]) -> None:
        """Wait until every actor of ``names`` (key -> node name) is ready, or raise."""
        tasks = {key: asyncio.ensure_future(awaited(self._ready_call(key))) for key in names}
        done, pending = await asyncio.wait(tasks.values(), timeout=self.ready_timeout_s,
                                           return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        for key, task in tasks.items():
            error = task.exception() if task in done else None
            if error is not None:
                raise ActorNotReadyError(
                    f"node {names[key]!r} failed to become ready: {failure_cause(error)}")
        late = [names[key] for key, task in tasks.items() if task in pending]
        if late:
            raise ActorNotReadyError(
                f"node(s) {late} did not report ready within {self.ready_timeout_s} s; check "
                "their actors' logs, or raise the ready timeout (ready_timeout_s)")

    def _ready_call(self, key: str) -> Any:
        """The ``ready`` call of ``key``'s actor: the one made at its creation, else a new one."""
        call = self._getting_ready.pop(key, None)
        return call if call is not None else self.handles[key].ready.remote()

    async def subscribe(self, edge: str, upstream: str, downstream: str, index: int,
                        route: KeyRoute | None = None) -> None:
        """Let ``upstream`` send to input ``index`` of ``downstream`` over ``edge`` (the
        records of ``route``'s keys, when set)."""
        consumer = self.handles[downstream]
        await self.answer(consumer.connect_input.remote(edge, index),
                          f"the consumer of edge {edge} (connect_input)")
        target = await self.target_of(consumer, edge)
        await self.answer(self.handles[upstream].subscribe.remote(
            edge, target if route is None else RoutedTarget(target, route)),
            f"the producer of edge {edge} (subscribe)")

    async def target_of(self, consumer: Any, edge: str) -> SocketTarget | RayTarget:
        """Where a producer sends ``edge``'s pushes to ``consumer``: a data connection of the
        edge's own, or (``data_connections`` off) the consumer's actor calls."""
        if not self.settings.data_connections:
            return RayTarget(consumer)
        # A Ray call per push costs each side about 1 ms of CPU here, the connection a few
        # tens of microseconds.
        address = await self.answer(consumer.open_data_port.remote(),
                                    f"the consumer of edge {edge} (open_data_port)")
        return SocketTarget(*address)

    async def start_sources(self, keys: Iterable[str]) -> None:
        """Let the source actors of ``keys`` start reading."""
        await asyncio.gather(*(self.answer(self.handles[k].start_source.remote(),
                                           f"source {k[:24]} (start_source)") for k in keys))

    async def answer(self, ref: Any, who: str) -> Any:
        """The result of actor call ``ref``, within the ready timeout: a deployment step whose
        actor does not answer fails (and rolls back) instead of waiting forever."""
        try:
            return await asyncio.wait_for(awaited(ref), self.ready_timeout_s)
        except TimeoutError:
            raise ActorNotReadyError(
                f"{who} did not answer within {self.ready_timeout_s:g} s; check its actor's "
                "log, or raise the ready timeout (ready_timeout_s)") from None

    # -- checkpoints (runtime.checkpoints.coordinator.CheckpointCalls) ---------------------
    async def inject_barrier(self, key: str, checkpoint_id: int) -> bool:
        """Let source ``key`` emit ``Barrier(checkpoint_id)`` next; False once it finished."""
        return bool(await self.handles[key].inject_barrier.remote(checkpoint_id))

    async def checkpoint_done(self, key: str, checkpoint_id: int) -> SnapshotRef:
        """Once node ``key`` persisted its snapshot of ``checkpoint_id``: where it lies."""
        ref: SnapshotRef = await self.handles[key].checkpoint_done.remote(checkpoint_id)
        return ref

    async def commit_checkpoint(self, key: str, checkpoint_id: int) -> None:
        """Tell node ``key`` that ``checkpoint_id`` is complete."""
        await self.handles[key].commit_checkpoint.remote(checkpoint_id)

    async def source_quiet(self, key: str, known: SourceQuiet | None) -> SourceQuiet:
        """Source ``key``'s ``SourceQuiet`` once it differs from ``known`` (a long poll)."""
        state: SourceQuiet = await self.handles[key].source_quiet.remote(known)
        return state


def _cluster_gpus(node: Any) -> float:
    import ray

    if node.operator != INFERENCE_OPERATOR:
        return 0.0
    resources = ray.cluster_resources()  # type: ignore[no-untyped-call]  # Ray ships no types here
    return float(resources.get("GPU", 0.0))


def run_blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to its end from synchronous code, even under a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # A loop runs in this thread (a notebook, an async caller): use a loop of our own elsewhere.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


async def awaited(ref: Any) -> Any:
    """Await a Ray ObjectRef as a coroutine (so asyncio can wrap it in a task)."""
    return await ref
