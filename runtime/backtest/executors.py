"""The two ways a backtest runs a graph over recorded input held in memory.

- ``BatchExecutor``: generations in order (sources first); each node processes its whole input
  range at once, through the same ``NodeWorker`` a live actor runs (one batch per input, then
  end of stream), so it aligns, orders and computes exactly as live; independent nodes of a
  generation run concurrently in threads (which overlap only where numpy releases the GIL: the
  numba kernels hold it). Nodes are keyed by
  node_id, so variants of a sweep run as one union and a node they share runs once; with a
  cache, a node whose (node_id, input fingerprint) was computed before is read from it. With
  ``workers="ray"``, each node of a generation is a Ray task instead (its inputs travel through
  the object store), so independent nodes use every core of the cluster.
- ``run_streaming``: the local runner over in-memory sources cut into micro-batches, exactly as
  a live run is fed; optionally paced to N times event-time speed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from runtime.backtest.cache import ResultCache
from runtime.dataplane.host import RuntimeSettings
from runtime.dataplane.messages import EndOfStream
from runtime.dataplane.worker import NodeWorker
from runtime.runners.local_runner import LocalRunner
from streamdag.batch import Batch
from streamdag.connector import SourceChunk
from streamdag.graph import Graph, Node
from streamdag.testing import ListSink, TestingSource

__all__ = ["BatchExecutor", "ExecutionFigures", "PacedSource", "Workers", "batch_generations",
           "run_streaming"]

#: Where the batch executor runs a generation's nodes.
Workers = Literal["threads", "ray"]


@dataclass
class ExecutionFigures:
    """What one execution did: nodes computed, read from the cache, and seconds per node."""

    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def batch_generations(nodes: Sequence[Node]) -> list[list[Node]]:
    """Distinct nodes (by node_id) in generations: each after every one of its inputs.

    >>> import streamdag as sd
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> fast = ticks.rolling_mean("price", window=2, name="fast")
    >>> cross = fast.crossover(ticks.rolling_mean("price", window=3, name="slow"), name="x")
    >>> [[n.name for n in g] for g in batch_generations(sd.Graph("g", outputs=[cross]).nodes)]
    [['ticks'], ['fast', 'slow'], ['x']]
    """
    level: dict[str, int] = {}
    unique: dict[str, Node] = {}
    pending = list(nodes)
    while pending:
        node = pending.pop()
        if node.node_id in level:
            continue
        missing = [i for i in node.inputs if i.node_id not in level]
        if missing:
            pending.append(node)
            pending.extend(missing)
            continue
        level[node.node_id] = 1 + max((level[i.node_id] for i in node.inputs), default=-1)
        unique[node.node_id] = node
    depth = max(level.values(), default=-1) + 1
    generations: list[list[Node]] = [[] for _ in range(depth)]
    for node_id, node in unique.items():
        generations[level[node_id]].append(node)
    return [sorted(generation, key=lambda n: (n.name, n.node_id)) for generation in generations]


class BatchExecutor:
    """Runs nodes generation by generation over whole input ranges, sharing and caching results.

    >>> import streamdag as sd
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> sma = ticks.rolling_mean("price", window=2, name="sma")
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a"] * 3, price=[1.0, 2.0, 4.0])
    >>> out = BatchExecutor().run([sma], {ticks.node_id: batch}, "range-1")
    >>> out[sma.node_id].columns["value"].tolist()
    [1.5, 3.0]
    """

    def __init__(self, cache: ResultCache | None = None, parallelism: int = 4,
                 workers: Workers = "threads") -> None:
        if workers not in ("threads", "ray"):
            raise ValueError(f"workers {workers!r} is not one of threads, ray")
        self.cache = cache
        self.parallelism = max(1, parallelism)
        self.workers = workers
        #: Figures of the last run.
        self.figures = ExecutionFigures()

    def run(
        self,
        outputs: Sequence[Node],
        inputs: Mapping[str, Batch],
        range_fingerprint: str,
        on_node: Callable[[Node], None] | None = None,
    ) -> dict[str, Batch]:
        """Every node's output (by node_id) upstream of ``outputs``.

        ``inputs`` holds each source node's recorded events (by node_id);
        ``range_fingerprint`` identifies them (and any input overrides) in cache keys.
        """
        self.figures = ExecutionFigures()
        results: dict[str, Batch] = {}
        compute_all = self._on_ray if self.workers == "ray" else None
        with ThreadPoolExecutor(self.parallelism, thread_name_prefix="backtest") as pool:
            for generation in batch_generations(outputs):
                # Step 1: what the cache has; Step 2: the rest, in parallel; Step 3: keep it.
                todo = []
                for node in generation:
                    key = _result_key(node, range_fingerprint)
                    # A node whose code could not be hashed with certainty (not shareable)
                    # may compute something else under the same id: never cached.
                    cached = (self.cache.get(key) if self.cache is not None and node.shareable
                              else None)
                    if cached is not None:
                        results[node.node_id] = cached
                        self.figures.cached.append(node.name)
                        if on_node is not None:
                            on_node(node)
                    else:
                        todo.append((node, key))
                batches = [[inputs[node.node_id]] if not node.inputs
                           else [results[i.node_id] for i in node.inputs] for node, _ in todo]
                nodes = [node for node, _ in todo]
                computed = (compute_all(nodes, batches) if compute_all is not None
                            else list(pool.map(_compute, nodes, batches)))
                for (node, key), (output, seconds) in zip(todo, computed, strict=True):
                    results[node.node_id] = output
                    self.figures.computed.append(node.name)
                    self.figures.seconds[node.name] = seconds
                    if self.cache is not None and node.shareable:
                        self.cache.put(key, output)
                    if on_node is not None:
                        on_node(node)
        return results


    @staticmethod
    def _on_ray(nodes: list[Node], inputs: list[list[Batch]]) -> list[tuple[Batch, float]]:
        """One Ray task per node, all at once; each input batch is put in the store once."""
        import ray

        from runtime.runners.ray_runner import ensure_ray

        ensure_ray()
        task = ray.remote(_compute)
        stored: dict[int, Any] = {}
        refs = []
        for node, batches in zip(nodes, inputs, strict=True):
            args = [stored.setdefault(id(batch), ray.put(batch)) for batch in batches]
            refs.append(task.remote(node, args))
        return list(ray.get(refs))


def _compute(node: Node, inputs: Sequence[Any]) -> tuple[Batch, float]:
    started = time.perf_counter()
    if inputs and not isinstance(inputs[0], Batch):  # a Ray task gets object refs
        import ray

        inputs = ray.get(list(inputs))
    worker = NodeWorker(node.config())
    produced = []
    for index, batch in enumerate(inputs):
        if len(batch):
            produced.extend(worker.feed(index, batch))
    for index in range(len(inputs)):
        produced.extend(worker.feed(index, EndOfStream()))
    batches = [payload for payload in produced if isinstance(payload, Batch)]
    output = Batch.concat(batches) if batches else Batch.empty(node.output_schema)
    return output, time.perf_counter() - started


def _result_key(node: Node, range_fingerprint: str) -> str:
    return hashlib.sha256(f"node-output\n{node.node_id}\n{range_fingerprint}".encode()
                          ).hexdigest()


class PacedSource:
    """A TestingSource over one batch, released no faster than ``pace`` x event time.

    The wall clock is read here, at the edge where input enters; nodes never read it.
    """

    def __init__(self, batch: Batch, pace: float | None,
                 on_read: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._inner = TestingSource([batch])
        self._pace = pace
        self._on_read = on_read
        self._clock = clock
        self._sleep = sleep
        self._first: tuple[int, float] | None = None

    async def open(self) -> None:
        """Nothing to connect."""

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """The next micro-batch, once its event time is due at this pace."""
        chunk = await self._inner.read(max_records, linger_s)
        if len(chunk.batch):
            if self._pace is not None:
                newest = int(chunk.batch.ts[-1])
                if self._first is None:
                    self._first = (int(chunk.batch.ts[0]), self._clock())
                due = self._first[1] + (newest - self._first[0]) / 1e9 / self._pace
                await self._sleep(max(0.0, due - self._clock()))
            if self._on_read is not None:
                self._on_read(len(chunk.batch))
        return chunk

    def position(self) -> dict[int, int]:
        """The wrapped source's position."""
        return self._inner.position()

    async def close(self) -> None:
        """Nothing to release."""


def run_streaming(
    graph: Graph,
    inputs: Mapping[str, Batch],
    *,
    pace: float | None = None,
    max_batch_records: int = 8_192,
    on_read: Callable[[int], None] | None = None,
) -> dict[str, Batch]:
    """The outputs (by node name) of ``graph`` run by the local runner over ``inputs``
    (by source node_id), in micro-batches of ``max_batch_records``."""
    sources = {
        node.name: _source_factory(inputs[node.node_id], pace, on_read)
        for node in graph.sources
    }
    sinks = {node.name: ListSink for node in graph.nodes if node.role == "sink"}
    runner = LocalRunner(RuntimeSettings(max_batch_records=max_batch_records, linger_s=0.0))
    result = runner.run(graph, sources=sources, sinks=sinks)
    return {name: batch if batch is not None else Batch.empty(graph.node(name).output_schema)
            for name, batch in result.outputs.items()}


def _source_factory(batch: Batch, pace: float | None,
                    on_read: Callable[[int], None] | None) -> Callable[[], PacedSource]:
    return lambda: PacedSource(batch, pace, on_read)
