"""The Ray runner: one Ray actor per node, created sinks first, sources started last."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from runtime.dataplane.channels import RayTarget
from runtime.dataplane.host import NodeHost, RuntimeSettings, followed_a_failure
from runtime.dataplane.stats import NodeStats
from runtime.deployment.lifecycle import failure_cause
from runtime.planning.budgets import check_runner_budgets
from runtime.planning.wiring import HostSpec, RunResult, wire_graph
from runtime.runners.deploy_sequence import ActorNotReadyError, deploy
from streamdag.batch import Batch
from streamdag.config import LimitSettings
from streamdag.connector import SinkFactory, SourceFactory
from streamdag.errors import StreamdagError
from streamdag.graph import Graph, Node

__all__ = [
    "GraphFailedError",
    "RayNodes",
    "RayRunner",
    "RunningGraph",
    "awaited",
    "ensure_ray",
    "node_actor_class",
    "run_blocking",
]

T = TypeVar("T")

_MALLOC_TUNING = {"MALLOC_TRIM_THRESHOLD_": "1000000000", "MALLOC_MMAP_THRESHOLD_": "100000000"}
#: Seconds one node is given to answer while the cause of a failure is looked for.
_PROBE_TIMEOUT_S = 10.0


class GraphFailedError(StreamdagError):
    """A running graph stopped before its outputs finished: a node failed or its actor died."""


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray (``address``) or start a local one bound to 127.0.0.1, once."""
    if address is None:
        # A local Ray binds to loopback only: Ray otherwise resolves 127.0.0.1 to the host's
        # routable address unless "cluster mode" is off (the same switch Ray uses on macOS).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Node actors allocate a batch-sized array per column per batch; glibc's default
        # thresholds hand that memory back to the OS each time, so every batch page-faults it
        # in again (measured: 13x slower numpy ops on 100k floats). Keep it in the heap instead.
        for name, value in _MALLOC_TUNING.items():
            os.environ.setdefault(name, value)
    import ray
    from ray._private import ray_constants

    if address is None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    if not ray.is_initialized():
        ray.init(
            address=address,
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=True,
        )


def node_actor_class() -> Any:
    """NodeHost wrapped with ``ray.remote``: the actor class hosting one node."""
    import ray

    return ray.remote(NodeHost)


class RayNodes:
    """The deployment sequence's backend on Ray: each node an actor hosting its ``NodeHost``.

    Actors of one generation are created together and become ready concurrently.
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

    def options_for(self, key: str) -> dict[str, Any]:
        """Ray actor options of the actor of ``key``."""
        return self.actor_options

    def create(self, key: str, host: HostSpec) -> Any:
        """Create the actor of ``key`` hosting ``host``'s node; returns its handle."""
        handle = node_actor_class().options(**self.options_for(key)).remote(
            **host.host_arguments(self.settings))
        self.handles[key] = handle
        if host.source is not None:
            self.sources.append(key)
        return handle

    async def wait_ready(self, names: Mapping[str, str]) -> None:
        """Wait until every actor of ``names`` (key -> node name) is ready, or raise."""
        tasks = {key: asyncio.ensure_future(awaited(self.handles[key].ready.remote()))
                 for key in names}
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

    async def subscribe(self, edge: str, upstream: str, downstream: str, index: int) -> None:
        """Let ``upstream`` send to input ``index`` of ``downstream`` over ``edge``."""
        consumer = self.handles[downstream]
        await consumer.connect_input.remote(edge, index)
        await self.handles[upstream].subscribe.remote(edge, RayTarget(consumer))

    async def start_sources(self, keys: Iterable[str]) -> None:
        """Let the source actors of ``keys`` start reading."""
        await asyncio.gather(*(awaited(self.handles[k].start_source.remote()) for k in keys))


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


class RunningGraph:
    """A graph whose actors are up: wait for it, read its stats, attach or stop it."""

    def __init__(self, graph: Graph, actors: dict[str, Any], sources: list[str]) -> None:
        self.graph = graph
        self.actors = actors
        self._sources = sources

    def actor(self, name: str) -> Any:
        """The actor hosting node ``name``."""
        return self.actors[self.graph.node(name).node_id]

    def stats(self) -> dict[str, NodeStats]:
        """Every node's counters, by node name."""
        import ray

        names = {n.node_id: n.name for n in self.graph.nodes}
        refs = {names[node_id]: a.stats.remote() for node_id, a in self.actors.items()}
        return {name: ray.get(ref) for name, ref in refs.items()}

    def wait(self, timeout_s: float | None = None) -> RunResult:
        """Block until every output node has seen EndOfStream; return the outputs.

        Raises GraphFailedError as soon as any node fails or its actor dies (the nodes that
        fed it hold rather than lose what they read), with the cause.
        """
        import ray

        leaves = [*self.graph.sinks, *self.graph.outputs]
        waits = {actor.wait_finished.remote(): node_id for node_id, actor in self.actors.items()}
        # Every node, not only the leaves: a producer's counters are final once the
        # acknowledgements of its last pushes came back, after its consumers finished.
        awaited = set(self.actors)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        pending = list(waits)
        while awaited:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, pending = ray.wait(pending, num_returns=1, timeout=remaining)
            if not ready:
                raise TimeoutError(
                    f"graph {self.graph.name!r}: {len(awaited)} output node(s) did not finish "
                    f"within {timeout_s} s"
                )
            try:
                ray.get(ready[0])
            except Exception as exc:
                raise GraphFailedError(self._failure_cause(exc)) from None
            awaited.discard(waits[ready[0]])
        outputs: dict[str, Batch | None] = {}
        for node in leaves:
            batches = ray.get(self.actors[node.node_id].results.remote())
            outputs[node.name] = Batch.concat(batches) if batches else None
        return RunResult(outputs, self.stats())

    def _failure_cause(self, first: BaseException) -> str:
        """The root cause once some node failed: a crashed actor, else a node's own failure."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        # Actors that died are the cause; the nodes that held after them only followed.
        crashed: list[tuple[str, BaseException]] = []
        failed: list[tuple[str, BaseException]] = []
        for node in self.graph.nodes:
            actor = self.actors[node.node_id]
            try:
                if ray.get(actor.is_finished.remote(), timeout=_PROBE_TIMEOUT_S):
                    ray.get(actor.wait_finished.remote(), timeout=_PROBE_TIMEOUT_S)
            except RayActorError as exc:
                crashed.append((node.name, exc))
            except GetTimeoutError:
                continue  # busy, so not what stopped the graph
            except Exception as exc:
                failed.append((node.name, exc))
        prefix = f"graph {self.graph.name!r} failed: "
        if crashed:
            return (f"{prefix}node(s) {[name for name, _ in crashed]} crashed: its actor died "
                    f"({failure_cause(crashed[0][1])})")
        # Else the first node that failed on its own, not one that held after it.
        own = [item for item in failed if not followed_a_failure(item[1])] or failed
        if not own:
            return prefix + failure_cause(first)
        return f"{prefix}node {own[0][0]!r} failed: {failure_cause(own[0][1])}"

    def stop(self) -> None:
        """Stop and kill every actor of this graph, sources first."""
        import ray

        order = sorted(self.actors.items(), key=lambda item: item[0] not in self._sources)
        for _, actor in order:
            # A dead actor is already stopped; killing it is all that is left.
            with contextlib.suppress(Exception):
                ray.get(actor.stop.remote(), timeout=10)
            ray.kill(actor)
        self.actors.clear()


class RayRunner:
    """Runs a graph with one Ray actor per node.

    Actors are created generation by generation in the streaming plan's order (sinks first);
    each generation is ready before the next one upstream is created, and sources start reading
    only when the whole chain below them is ready.
    """

    def __init__(
        self,
        settings: RuntimeSettings | None = None,
        default_source: Callable[[Node], SourceFactory] | None = None,
        default_sink: Callable[[Node], SinkFactory] | None = None,
        actor_options: Mapping[str, Any] | None = None,
        limits: LimitSettings | None = None,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        self._default_source = default_source
        self._default_sink = default_sink
        self._actor_options = dict(actor_options or {})
        #: Node count, actor count and memory budget a graph must fit before any actor starts.
        self.limits = limits or LimitSettings()

    def start(
        self,
        graph: Graph,
        sources: Mapping[str, SourceFactory] | None = None,
        sinks: Mapping[str, SinkFactory] | None = None,
    ) -> RunningGraph:
        """Create, wire and start every actor of ``graph``, once it fits ``limits``."""
        check_runner_budgets(graph, self.limits, actors=True)
        ensure_ray()
        generations, edges = wire_graph(
            graph, sources or {}, sinks or {}, self._default_source, self._default_sink
        )
        nodes = RayNodes(self.settings, self._actor_options)
        running = RunningGraph(graph, nodes.handles, nodes.sources)
        try:
            run_blocking(deploy(
                nodes, [[(h.node.node_id, h) for h in g] for g in generations], edges))
        except BaseException:
            running.stop()
            raise
        return running

    def run(
        self,
        graph: Graph,
        sources: Mapping[str, SourceFactory] | None = None,
        sinks: Mapping[str, SinkFactory] | None = None,
        timeout_s: float | None = 120.0,
    ) -> RunResult:
        """Run until every output node has seen EndOfStream; return the outputs."""
        started = time.perf_counter()
        running = self.start(graph, sources, sinks)
        try:
            remaining = None if timeout_s is None else timeout_s - (time.perf_counter() - started)
            return running.wait(remaining)
        finally:
            running.stop()
