"""The local runner: every node's host in one process and one event loop; no Ray."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping

from runtime.dataplane.channels import LocalTarget
from runtime.dataplane.host import NodeHost, RuntimeSettings, followed_a_failure
from runtime.planning.budgets import check_runner_budgets
from runtime.planning.wiring import HostSpec, RunResult, wire_graph
from runtime.runners.deploy_sequence import deploy
from streamdag.batch import Batch
from streamdag.config import LimitSettings
from streamdag.connector import SinkFactory, SourceFactory
from streamdag.graph import Graph, Node

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
    ) -> None:
        self.settings = settings or RuntimeSettings()
        self._default_source = default_source
        self._default_sink = default_sink
        #: Node count and memory budget a graph must fit before any host starts.
        self.limits = limits or LimitSettings()

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
        """The coroutine behind ``run``, for callers already inside an event loop."""
        check_runner_budgets(graph, self.limits, actors=False)
        generations, edges = wire_graph(
            graph, sources, sinks, self._default_source, self._default_sink
        )
        nodes = LocalNodes(self.settings)
        hosts = nodes.hosts
        try:
            await deploy(nodes, [[(h.node.node_id, h) for h in g] for g in generations], edges)
            # Every host, not only the leaves: a producer's counters are final once the
            # acknowledgements of its last pushes came back, after its consumers finished.
            await _wait_until_finished(list(hosts.values()), timeout_s)
            outputs: dict[str, Batch | None] = {}
            for node in (*graph.sinks, *graph.outputs):
                batches = hosts[node.node_id].results()
                outputs[node.name] = Batch.concat(batches) if batches else None
            return RunResult(outputs, {hosts[n.node_id].config.name: hosts[n.node_id].stats()
                                       for n in graph.nodes})
        finally:
            # Sources first (they were created last): nothing pushes to a host already stopped.
            for host in reversed(list(hosts.values())):
                await host.stop()


class LocalNodes:
    """The deployment sequence's backend for one process: each node a ``NodeHost`` here."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        #: The hosts created so far, by key, in creation order.
        self.hosts: dict[str, NodeHost] = {}

    def create(self, key: str, host: HostSpec) -> None:
        """Build the host of ``key``."""
        self.hosts[key] = NodeHost(**host.host_arguments(self.settings))

    async def wait_ready(self, names: Mapping[str, str]) -> None:
        """Open the connectors of every host of ``names``."""
        for key in names:
            await self.hosts[key].ready()

    async def subscribe(self, edge: str, upstream: str, downstream: str, index: int) -> None:
        """Connect ``downstream``'s input ``index`` and let ``upstream`` push to it."""
        consumer = self.hosts[downstream]
        consumer.connect_input(edge, index)
        self.hosts[upstream].subscribe(edge, LocalTarget(consumer.push))

    async def start_sources(self, keys: Iterable[str]) -> None:
        """Let the source hosts of ``keys`` start reading."""
        for key in keys:
            await self.hosts[key].start_source()


async def _wait_until_finished(hosts: list[NodeHost], timeout_s: float | None) -> None:
    """Until every host finished; raise the root cause as soon as any host failed."""
    waits = {asyncio.ensure_future(host.wait_finished()): host for host in hosts}
    try:
        pending = set(waits)
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        while pending:
            remaining = (None if deadline is None
                         else max(0.0, deadline - asyncio.get_running_loop().time()))
            done, _ = await asyncio.wait(waits, timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            failed = [host.error for host in hosts if host.error is not None]
            if failed:
                # The nodes that held after a failure only followed it: raise the first cause.
                raise next((e for e in failed if not followed_a_failure(e)), failed[0])
            if not done:
                raise TimeoutError(f"{len(pending)} node(s) did not finish within "
                                   f"{timeout_s} s")
            pending -= done
            for task in done:
                del waits[task]
    finally:
        for task in waits:
            task.cancel()
