"""The local runner: every node's host in one process and one event loop; no Ray."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from runtime.checkpoints.coordinator import CheckpointCoordinator, CheckpointFigures
from runtime.checkpoints.quiet import SourceQuiet
from runtime.checkpoints.store import CheckpointStore, SnapshotRef
from runtime.dataplane.channels import LocalTarget
from runtime.dataplane.checkpointing import CheckpointTarget, NodeSnapshot
from runtime.dataplane.exchange import KeyRoute, RoutedTarget
from runtime.dataplane.failures import failure_cause
from runtime.dataplane.host import NodeHost, RuntimeSettings, followed_a_failure
from runtime.dataplane.warming import read_only_push
from runtime.inference.host import host_class
from runtime.planning.budgets import check_runner_budgets
from runtime.planning.sharding import gather_outputs, shard_plan, shard_stats
from runtime.planning.wiring import HostSpec, RunResult, wire_graph
from runtime.runners.deploy_sequence import deploy
from runtime.runners.process_memory import limit_heap_growth
from runtime.runners.recovery import RestartPolicy
from runtime.runners.resident_pages import (
    LibraryPageReleaser,
    ReleasingThread,
    start_numba_runtime_between_releases,
)
from streamdag.cancellation import cancel_and_wait
from streamdag.config import CheckpointSettings, LimitSettings
from streamdag.connector import SinkFactory, SourceFactory
from streamdag.graph import Graph, Node
from streamdag.tag_query import refuse_in_runner

__all__ = ["LocalNodes", "LocalRunner"]


class LocalRunner:
    """Runs a graph to completion in this process, over the same hosts the Ray runner uses.

    >>> import streamdag as sd
    >>> from streamdag.testing import TestingSource
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> graph = sd.Graph("g", outputs=[ticks])
    >>> batch = sd.Batch.from_columns(ts=[1, 2], key=["a", "b"], price=[1.0, 2.0])
    >>> result = LocalRunner().run(graph, sources={"ticks": lambda: TestingSource([batch])})
    >>> result.records("ticks")
    [{'ts': 1, 'key': 'a', 'price': 1.0}, {'ts': 2, 'key': 'b', 'price': 2.0}]
    """

    def __init__(
        self,
        settings: RuntimeSettings | None = None,
        default_source: Callable[[Node], SourceFactory] | None = None,
        default_sink: Callable[[Node], SinkFactory] | None = None,
        limits: LimitSettings | None = None,
        checkpoints: CheckpointSettings | None = None,
    ) -> None:
        self.settings = settings or RuntimeSettings()
        self._default_source = default_source
        self._default_sink = default_sink
        #: Node count and memory budget a graph must fit before any host starts.
        self.limits = limits or LimitSettings()
        #: Checkpoints and recovery; None: off (a failed node ends the run with its error).
        self.checkpoints = checkpoints
        #: Recoveries of the last run.
        self.recoveries = 0

    def run(
        self,
        graph: Graph,
        sources: Mapping[str, SourceFactory] | None = None,
        sinks: Mapping[str, SinkFactory] | None = None,
        timeout_s: float | None = None,
    ) -> RunResult:
        """Run until every output node has seen EndOfStream; return the outputs."""
        return asyncio.run(self.run_async(graph, sources or {}, sinks or {}, timeout_s))

    async def run_async(
        self,
        graph: Graph,
        sources: Mapping[str, SourceFactory],
        sinks: Mapping[str, SinkFactory],
        timeout_s: float | None = None,
    ) -> RunResult:
        """The coroutine behind ``run``, for callers already inside an event loop.

        With ``checkpoints``, a failed node is recovered as the Ray runner recovers an actor
        (``runtime.runners.running_graph``): count it against the restart policy, stop every
        host, back off, restore the newest complete checkpoint through the deployment
        sequence with the next incarnation, and go on.
        """
        refuse_in_runner(graph, "LocalRunner")
        check_runner_budgets(graph, self.limits, actors=False)
        nodes = LocalNodes(self.settings)
        # From the start, in a thread: what the imports left mapped (numba's import maps 90 MiB
        # of LLVM's pages) goes while the graph is planned; the kernels' warm-up maps LLVM's
        # pages again, so do later loads, while they hold the event loop; it also trims the
        # free heap, which large allocations no longer fragment (``limit_heap_growth``).
        limit_heap_growth()
        # numba's runtime compiled now (a first kernel load would compile it otherwise),
        # between two releases: the pages the imports left and the ones the code generator
        # maps were the process's peak together.
        start_numba_runtime_between_releases(nodes.pages)
        releasing = ReleasingThread(nodes.pages).start()
        try:
            return await self._run_planned(graph, sources, sinks, timeout_s, nodes)
        finally:
            releasing.stop()

    async def _run_planned(
        self,
        graph: Graph,
        sources: Mapping[str, SourceFactory],
        sinks: Mapping[str, SinkFactory],
        timeout_s: float | None,
        nodes: LocalNodes,
    ) -> RunResult:
        generations, edges = wire_graph(
            graph, sources, sinks, self._default_source, self._default_sink
        )
        keyed, edges = shard_plan(graph, generations, edges)
        policy = store = region = None
        if self.checkpoints is not None:
            policy = RestartPolicy(self.checkpoints)
            store = CheckpointStore(
                self.checkpoints.url or f"memory://streamdag-local-{uuid.uuid4().hex}",
                keep=self.checkpoints.keep)
            region = f"local-{uuid.uuid4().hex[:12]}"
            delivery = graph.delivery or self.checkpoints.delivery
            nodes.checkpoints = CheckpointTarget(store, region, delivery == "exactly_once")
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        next_id = 1
        figures = CheckpointFigures()
        self.recoveries = 0
        try:
            while True:
                await deploy(nodes, keyed, edges)
                nodes.snapshots = {}
                coordinator = coordinating = None
                if self.checkpoints is not None and store is not None and region is not None:
                    coordinator = CheckpointCoordinator(
                        region, store, nodes, list(nodes.hosts),
                        [k for k, h in nodes.hosts.items() if h.source is not None],
                        interval_s=self.checkpoints.interval_s,
                        timeout_s=self.checkpoints.timeout_s, first_id=next_id)
                    coordinator.figures = figures  # counted over every incarnation
                    coordinating = asyncio.ensure_future(coordinator.run())
                try:
                    remaining = None if deadline is None else max(0.0, deadline - loop.time())
                    # Every host, not only the leaves: a producer's counters are final once
                    # the acknowledgements of its last pushes came back.
                    await _wait_until_finished(list(nodes.hosts.values()), remaining,
                                               coordinating)
                    break
                except TimeoutError:
                    raise
                except Exception as exc:
                    if policy is None or store is None or region is None:
                        raise
                    delay = policy.next_delay(f"graph {graph.name!r} failed: "
                                              f"{failure_cause(exc)}", figures.completed)
                finally:
                    await cancel_and_wait(coordinating)
                # Recovery: stop everything, back off, restore the newest checkpoint.
                assert coordinator is not None
                next_id = coordinator.next_id
                for host in reversed(list(nodes.hosts.values())):
                    await host.stop()
                nodes.hosts.clear()
                await asyncio.sleep(delay)
                loaded = await asyncio.to_thread(store.latest, region)
                nodes.snapshots = ({} if loaded is None else
                                   {key: NodeSnapshot.from_bytes(data)
                                    for key, data in loaded.snapshots.items()})
                nodes.incarnation += 1
                self.recoveries += 1
            hosts = nodes.hosts
            outputs = gather_outputs(graph, lambda key: hosts[key].results())
            stats, shards = shard_stats(graph, {key: host.stats()
                                                for key, host in hosts.items()})
            return RunResult(outputs, stats, shards)
        finally:
            # Sources first (they were created last): nothing pushes to a host already stopped.
            for host in reversed(list(nodes.hosts.values())):
                await host.stop()


class LocalNodes:
    """The deployment sequence's backend for one process: each node a ``NodeHost`` here."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        #: The hosts created so far, by key, in creation order.
        self.hosts: dict[str, NodeHost] = {}
        #: What the next hosts are created with when a region is restored.
        self.incarnation = 0
        self.snapshots: dict[str, NodeSnapshot] = {}
        self.checkpoints: CheckpointTarget | None = None
        #: Releases this process's library pages (LLVM's) when the hosts' kernels mapped them.
        self.pages = LibraryPageReleaser()

    def create(self, key: str, host: HostSpec) -> None:
        """Build the host of ``key``."""
        self.hosts[key] = host_class(host.node.operator)(**host.host_arguments(
            self.settings, incarnation=self.incarnation, snapshot=self.snapshots.get(key),
            checkpoints=self.checkpoints))

    async def wait_ready(self, names: Mapping[str, str]) -> None:
        """Load the kernels and open the connectors of every host of ``names``, all at once."""
        await asyncio.gather(*(self.hosts[key].ready() for key in names))

    async def subscribe(self, edge: str, upstream: str, downstream: str, index: int,
                        route: KeyRoute | None = None) -> None:
        """Connect ``downstream``'s input ``index`` and let ``upstream`` push to it (the
        records of ``route``'s keys, when set)."""
        consumer = self.hosts[downstream]
        consumer.connect_input(edge, index)
        # Read-only, as on Ray: the consumer runs the kernel variants its warm-up loaded.
        target = LocalTarget(read_only_push(consumer.push))
        self.hosts[upstream].subscribe(
            edge, target if route is None else RoutedTarget(target, route))

    async def start_sources(self, keys: Iterable[str]) -> None:
        """Let the source hosts of ``keys`` start reading, once this process dropped the library
        pages its hosts' warm-up touched (LLVM's, up to 100 MiB; ``LibraryPageReleaser``)."""
        await self.pages.release_if_grown_in_thread()
        for key in keys:
            await self.hosts[key].start_source()

    # -- checkpoints (runtime.checkpoints.coordinator.CheckpointCalls) ---------------------
    async def inject_barrier(self, key: str, checkpoint_id: int) -> bool:
        """Let source ``key`` emit ``Barrier(checkpoint_id)`` next; False once it finished."""
        return await self.hosts[key].inject_barrier(checkpoint_id)

    async def checkpoint_done(self, key: str, checkpoint_id: int) -> SnapshotRef:
        """Once host ``key`` persisted its snapshot of ``checkpoint_id``: where it lies."""
        return await self.hosts[key].checkpoint_done(checkpoint_id)

    async def commit_checkpoint(self, key: str, checkpoint_id: int) -> None:
        """Tell host ``key`` that ``checkpoint_id`` is complete."""
        await self.hosts[key].commit_checkpoint(checkpoint_id)

    async def source_quiet(self, key: str, known: SourceQuiet | None) -> SourceQuiet:
        """Source ``key``'s ``SourceQuiet`` once it differs from ``known`` (a long poll)."""
        return await self.hosts[key].source_quiet(known)


async def _wait_until_finished(hosts: list[NodeHost], timeout_s: float | None,
                               coordinating: asyncio.Future[None] | None = None) -> None:
    """Until every host finished; raise the root cause as soon as any host (or the checkpoint
    coordinator) failed."""
    pending: set[asyncio.Future[Any]] = {asyncio.ensure_future(h.wait_finished()) for h in hosts}
    watched = set(pending)
    if coordinating is not None:
        watched.add(coordinating)
    try:
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        while pending:
            remaining = (None if deadline is None
                         else max(0.0, deadline - asyncio.get_running_loop().time()))
            done, _ = await asyncio.wait(watched, timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            if coordinating is not None and coordinating in done:
                watched.discard(coordinating)  # it ends once the sources finished, or fails
                error = None if coordinating.cancelled() else coordinating.exception()
                if error is not None:
                    raise error
            failed = [host.error for host in hosts if host.error is not None]
            if failed:
                # The nodes that held after a failure only followed it: raise the first cause.
                raise next((e for e in failed if not followed_a_failure(e)), failed[0])
            if not done:
                raise TimeoutError(f"{len(pending)} node(s) did not finish within "
                                   f"{timeout_s} s")
            pending -= done
            watched -= done
    finally:
        for task in pending:
            task.cancel()
