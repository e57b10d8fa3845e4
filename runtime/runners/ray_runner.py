"""The Ray runner: one Ray actor per node, created sinks first, sources started last."""

from __future__ import annotations

import os
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from runtime.checkpoints.store import CheckpointStore, shared_store
from runtime.dataplane.checkpointing import CheckpointTarget
from runtime.dataplane.host import RuntimeSettings
from runtime.dataplane.startup_phases import LaunchPhases
from runtime.planning.budgets import check_runner_budgets
from runtime.planning.sharding import shard_plan
from runtime.planning.wiring import RunResult, wire_graph
from runtime.runners.deploy_sequence import deploy
from runtime.runners.process_memory import MMAP_THRESHOLD
from runtime.runners.ray_nodes import RayNodes, ShardOptions, node_actor_class, run_blocking
from runtime.runners.recovery import GraphFailedError
from runtime.runners.resident_pages import release_in_actor
from runtime.runners.running_graph import RecoveryPlan, RunningGraph
from streamdag.config import CheckpointSettings, LimitSettings
from streamdag.connector import SinkFactory, SourceFactory
from streamdag.graph import Graph, Node
from streamdag.tag_query import refuse_in_runner

__all__ = [
    "KAFKA_ENDPOINT_MODULES",
    "NODE_ACTOR_MODULES",
    "GraphFailedError",
    "RayNodes",
    "RayRunner",
    "RunningGraph",
    "ensure_ray",
    "node_actor_class",
]

_MALLOC_TUNING = {"MALLOC_TRIM_THRESHOLD_": "1000000000",
                  "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
#: What every node actor imports when it receives its class (numba, the operators, the data
#: plane), with numba's runtime compiled and the pages of the start released
#: (``runtime.runners.node_preload``): about a second of CPU per process. A Ray that streamdag
#: starts has its workers import them before they take work, so the workers Ray starts with
#: the cluster (one per CPU) do it during Ray's own start, not after a graph is submitted. A
#: pooled worker does not know yet which node it will host, so the Kafka connectors
#: (aiokafka's 58 modules, about 4 MiB of every process that imports them) are not in it: a
#: Kafka endpoint's actor imports them when it unpickles its reader or writer factory
#: (``KAFKA_ENDPOINT_MODULES``, 50-80 ms), and the other nodes never do.
NODE_ACTOR_MODULES = ("runtime.runners.node_preload",)
#: What a Kafka source's or sink's actor imports on top of ``NODE_ACTOR_MODULES``.
KAFKA_ENDPOINT_MODULES = ("runtime.runners.kafka_binding",)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to Ray at ``address`` (``auto``, ``ray://...``, ``host:port``), or start one.

    With no address, ``RAY_ADDRESS`` is used when set (as Ray's own tools do); otherwise a new
    cluster bound to 127.0.0.1 is started even when one started with ``ray start`` runs on this
    machine (Ray's own ``address=None`` would attach to it).
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    # A local Ray (new, or one `streamdag up` started on 127.0.0.1) runs with cluster mode off.
    loopback = address is None or address.startswith(("127.0.0.1:", "localhost:"))
    if loopback:
        # A local Ray binds to loopback only: Ray otherwise resolves 127.0.0.1 to the host's
        # routable address unless "cluster mode" is off (the same switch Ray uses on macOS).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # Node actors allocate a batch-sized array per column per batch; glibc's default
        # thresholds hand that memory back to the OS each time, so every batch page-faults it
        # in again (measured: 13x slower numpy ops on 100k floats). Keep it in the heap instead;
        # each actor's page releaser trims what stays free (process_memory.HeapTrimmer).
        # Blocks of 1 MiB and more (fetch responses, their frames) get pages of their own,
        # handed back when freed, so they leave no holes in the heap (MMAP_THRESHOLD).
        for name, value in _MALLOC_TUNING.items():
            os.environ.setdefault(name, value)
    import ray
    from ray._private import ray_constants

    if loopback:
        ray_constants.ENABLE_RAY_CLUSTER = False
    if not ray.is_initialized():
        ray.init(
            # "local" always starts a new cluster: address=None would attach to any cluster
            # started on this machine with `ray start`, and run the user's graph on it.
            address=address if address is not None else "local",
            num_cpus=num_cpus if address is None else None,
            include_dashboard=False,
            configure_logging=False,
            _system_config=(None if address is not None
                            else {"preload_python_modules": list(NODE_ACTOR_MODULES)}),
            # `streamdag` commands keep workers' output in Ray's logs (runtime/cli/console.py).
            log_to_driver=os.environ.get("STREAMDAG_RAY_LOG_TO_DRIVER", "1") != "0",
        )


def _release_library_pages(handles: Iterable[Any]) -> None:
    """Have every actor of ``handles`` drop the library pages its start and warm-up touched
    (LLVM's, about 100 MiB of each actor's RSS) shortly, and keep doing so while it runs
    (``release_library_pages_in_thread``); nothing waits for it.

    An actor whose stream already holds its default concurrency group (an inference node
    inside a slow model) takes the call once it gets to it.
    """
    for handle in handles:  # a function of a light module: the actor imports nothing big
        handle.__ray_call__.remote(release_in_actor)


def _region_of(graph: Graph) -> str:
    """A region name for one run of ``graph``, safe in a path."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", graph.name)[:40] or "graph"
    return f"{stem}-{uuid.uuid4().hex[:12]}"


class RayRunner:
    """Runs a graph with one Ray actor per node.

    Actors are created in the streaming plan's order (sinks first), all at once so their
    processes start in parallel; each generation is ready (restored, connectors open) and wired
    before the next one upstream is, so nothing sends to an actor that is not ready, and sources
    start reading only when the whole chain below them is ready.

    With ``checkpoints``, the graph is checkpointed every ``checkpoints.interval_s`` into
    ``checkpoints.url`` (empty: a temporary folder of this run) and recovers by itself from a
    crashed actor or a failed node (``RunningGraph``); with ``delivery = "exactly_once"``
    sinks publish an epoch only once its checkpoint is complete, so a recovery duplicates
    nothing. Outputs that are not sinks are captured per incarnation: after a recovery they
    hold only what the last one produced, so read exactly-once results from a sink.
    """

    def __init__(
        self,
        settings: RuntimeSettings | None = None,
        default_source: Callable[[Node], SourceFactory] | None = None,
        default_sink: Callable[[Node], SinkFactory] | None = None,
        actor_options: Mapping[str, Any] | None = None,
        limits: LimitSettings | None = None,
        checkpoints: CheckpointSettings | None = None,
        shard_options: ShardOptions | None = None,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        #: Extra actor options per actor, from ``(node name, shard, shards)`` (an unsharded
        #: node is shard 0 of 1): e.g. custom resources that place the shards of a node on
        #: different machines of the cluster.
        self.shard_options = shard_options
        #: Checkpoints and recovery; None: off (a failure ends the run).
        self.checkpoints = checkpoints
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
        """Create, wire and start every actor of ``graph``, once it fits ``limits``.

        When each step ended is in the returned graph's ``launch_phases``.
        """
        phases = LaunchPhases(launched=time.time())
        refuse_in_runner(graph, "RayRunner")
        check_runner_budgets(graph, self.limits, actors=True)
        # Planned before Ray starts: a graph or binding error costs no Ray start.
        generations, edges = wire_graph(
            graph, sources or {}, sinks or {}, self._default_source, self._default_sink
        )
        keyed, edges = shard_plan(graph, generations, edges)
        phases.planned = time.time()
        ensure_ray()
        phases.ray_ready = time.time()
        nodes = RayNodes(self.settings, self._actor_options)
        nodes.shard_options = self.shard_options
        plan = None
        if self.checkpoints is not None:
            plan = RecoveryPlan(keyed, edges, self._store(self.checkpoints),
                                _region_of(graph), self.checkpoints)
            delivery = graph.delivery or self.checkpoints.delivery
            nodes.checkpoints = CheckpointTarget(plan.store, plan.region,
                                                 delivery == "exactly_once")
        running = RunningGraph(graph, nodes, plan)
        running.launch_phases = phases
        try:
            progress = run_blocking(deploy(nodes, keyed, edges))
            phases.created = progress.created_at
            phases.generations_ready = progress.generations_ready_at
            phases.sources_started = progress.sources_started_at
            _release_library_pages(nodes.handles.values())
            running.start_checkpoints()
            running.supervise()
        except BaseException:
            running.stop()
            raise
        return running

    @staticmethod
    def _store(settings: CheckpointSettings) -> CheckpointStore:
        url = settings.url or Path(tempfile.mkdtemp(prefix="streamdag-checkpoints-")).as_uri()
        return shared_store(url, settings.keep, "a Ray runner's")

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
