"""The Ray runner: one Ray actor per node, created sinks first, sources started last."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from runtime.dataplane.channels import RayTarget
from runtime.dataplane.host import NodeHost, RuntimeSettings, followed_a_failure
from runtime.dataplane.stats import NodeStats
from runtime.deployment.lifecycle import failure_cause
from runtime.planning.budgets import check_runner_budgets
from runtime.planning.wiring import RunResult, wire_graph
from streamdag.batch import Batch
from streamdag.config import LimitSettings
from streamdag.connector import SinkFactory, SourceFactory
from streamdag.errors import StreamdagError
from streamdag.graph import Graph, Node

__all__ = ["GraphFailedError", "RayRunner", "RunningGraph", "ensure_ray", "node_actor_class"]

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


class RunningGraph:
    """A graph whose actors are up: wait for it, read its stats, attach or stop it."""

    def __init__(self, graph: Graph, actors: dict[str, Any], sources: list[Any]) -> None:
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

        # Step 1: actors that died are the cause; the nodes that held after them only followed.
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
        # Step 2: else the first node that failed on its own, not one that held after it.
        own = [item for item in failed if not followed_a_failure(item[1])] or failed
        if not own:
            return prefix + failure_cause(first)
        return f"{prefix}node {own[0][0]!r} failed: {failure_cause(own[0][1])}"

    def stop(self) -> None:
        """Stop and kill every actor of this graph, sources first."""
        import ray

        order = sorted(self.actors.items(), key=lambda item: item[1] not in self._sources)
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
        self._actor_options = {"num_cpus": 0, **(actor_options or {})}
        #: Node count, actor count and memory budget a graph must fit before any actor starts.
        self.limits = limits or LimitSettings()

    def start(
        self,
        graph: Graph,
        sources: Mapping[str, SourceFactory] | None = None,
        sinks: Mapping[str, SinkFactory] | None = None,
    ) -> RunningGraph:
        """Create, wire and start every actor of ``graph``, once it fits ``limits``."""
        import ray

        check_runner_budgets(graph, self.limits, actors=True)
        ensure_ray()
        generations, edges = wire_graph(
            graph, sources or {}, sinks or {}, self._default_source, self._default_sink
        )
        actor_class = node_actor_class().options(**self._actor_options)
        actors: dict[str, Any] = {}
        source_actors: list[Any] = []
        running = RunningGraph(graph, actors, source_actors)
        try:
            for generation in generations:
                created = {}
                for spec in generation:
                    created[spec.node.node_id] = actor_class.remote(
                        spec.node.config(),
                        settings=self.settings,
                        source=spec.source,
                        sink=spec.sink,
                        capture=spec.capture,
                    )
                    if spec.source is not None:
                        source_actors.append(created[spec.node.node_id])
                ray.get([actor.ready.remote() for actor in created.values()])
                actors.update(created)
                wiring = []
                for edge in edges:
                    if edge.upstream in created and edge.downstream in actors:
                        downstream = actors[edge.downstream]
                        ray.get(downstream.connect_input.remote(edge.edge, edge.input_index))
                        wiring.append(
                            created[edge.upstream].subscribe.remote(
                                edge.edge, RayTarget(downstream)
                            )
                        )
                ray.get(wiring)
            ray.get([actor.start_source.remote() for actor in source_actors])
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
