"""``backtest``: one call that replays recorded input through a graph and returns its outputs.

The protocol, for one run or a sweep of scenarios:

1. Resolve the range and build one graph per scenario (unchanged nodes keep their node_id).
2. Read each source's recorded events once (Kafka, or given in memory), through the cache.
3. Keep the range plus each source's warm-up (the most any variant needs: more history never
   changes an output in the range), so the first output equals live.
4. Run: the batch executor over the union of the variants (a node they share runs once, and a
   node computed before is read from the cache), or the streaming runner per variant.
5. Keep each output's records in ``[start, end)``: warm-up outputs are suppressed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import numpy as np

from runtime.backtest.cache import ResultCache
from runtime.backtest.errors import BacktestError, ScenarioError, TimeRangeError
from runtime.backtest.executors import (
    BatchExecutor,
    Workers,
    batch_generations,
    run_streaming,
)
from runtime.backtest.inputs import RecordedInput, read_recorded
from runtime.backtest.progress import ProgressBar
from runtime.backtest.results import BacktestResult, SweepResult
from runtime.backtest.scenarios import Scenario, apply_scenario
from runtime.backtest.times import parse_time
from runtime.backtest.warmup import WARM_UP_MODES, WarmUp, describe, select_range, warm_up_of
from streamdag.batch import Batch
from streamdag.graph import Graph, Node

__all__ = ["BacktestOptions", "Executor", "backtest", "output_nodes"]

Executor = Literal["auto", "batch", "streaming"]
TimeLike = str | int | float | datetime


@dataclass(frozen=True)
class BacktestOptions:
    """How a backtest runs.

    ``executor``: ``batch`` (whole ranges per node, generation by generation), ``streaming``
    (micro-batches through the local runner, as live) or ``auto`` (batch, unless paced); the
    cache serves the batch executor (the streaming one computes every node, as live does).
    ``pace``: with the streaming executor, replay at N times event-time speed (None: as fast as
    possible). ``workers``: where the batch executor runs a generation's independent nodes,
    ``threads`` here or ``ray`` tasks (``ensure_ray``: a local Ray unless configured).
    ``warmup``: ``auto`` (what the nodes need to equal live), ``period``, ``all`` or
    ``none`` (``runtime.backtest.warmup``).
    """

    executor: Executor = "auto"
    pace: float | None = None
    warmup: str = "auto"
    max_batch_records: int = 8_192
    parallelism: int = 4
    workers: Workers = "threads"

    def __post_init__(self) -> None:
        if self.executor not in ("auto", "batch", "streaming"):
            raise BacktestError(f"executor {self.executor!r} is not one of auto, batch, "
                                "streaming")
        if self.pace is not None and not self.pace > 0:
            raise BacktestError(f"pace must be a positive speed-up, got {self.pace}")
        if self.pace is not None and self.executor == "batch":
            raise BacktestError("the batch executor cannot pace; use executor='streaming' "
                                "(or auto) with a pace, or drop the pace")
        if self.warmup not in WARM_UP_MODES:
            raise BacktestError(f"warmup {self.warmup!r} is not one of "
                                f"{', '.join(WARM_UP_MODES)}")

    @property
    def chosen_executor(self) -> Literal["batch", "streaming"]:
        """The executor ``auto`` stands for: batch, or streaming when paced."""
        if self.executor != "auto":
            return self.executor
        return "streaming" if self.pace is not None else "batch"


def backtest(
    graph: Graph,
    start: TimeLike,
    end: TimeLike,
    *,
    bootstrap_servers: str | None = None,
    inputs: Mapping[str, Batch | RecordedInput] | None = None,
    scenarios: Sequence[Scenario] = (),
    options: BacktestOptions | None = None,
    cache: ResultCache | None = None,
    progress: ProgressBar | None = None,
) -> BacktestResult | SweepResult:
    """Replay ``graph`` over ``[start, end)`` and return every output node's records.

    Times are nanoseconds since the epoch (an int), or ISO-8601 / epoch text. Recorded input
    comes from each source's topic at ``bootstrap_servers``, or from ``inputs`` (source name ->
    events, or a ``RecordedInput`` whose key names them so they need not be hashed). With
    ``scenarios``, each is applied to the graph and the result is a SweepResult
    by scenario name; without, a BacktestResult. Nothing is written anywhere.

    >>> import streamdag as sd
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> sma = ticks.rolling_mean("price", window=2, name="sma")
    >>> recorded = sd.Batch.from_columns(ts=[1, 2, 3, 4], key=["a"] * 4,
    ...                                  price=[1.0, 2.0, 4.0, 8.0])
    >>> result = backtest(sd.Graph("g", outputs=[sma]), 3, 5, inputs={"ticks": recorded})
    >>> result["sma"]["value"].tolist(), result["sma"]["ts"].tolist()
    ([3.0, 6.0], [3, 4])
    """
    options = options or BacktestOptions()
    progress = progress or ProgressBar(force=False)
    started = time.perf_counter()
    # Step 1: the range and the variants.
    start_ns, end_ns = _to_ns(start, "start"), _to_ns(end, "end")
    if end_ns <= start_ns:
        raise TimeRangeError(f"the range is empty: end ({end}) must be after start ({start})")
    names = [scenario.name for scenario in scenarios]
    if len(set(names)) != len(names):
        raise ScenarioError(f"scenarios {names} repeat a name; give each its own, since "
                            "each variant's outputs come back under its name")
    variants = {s.name: apply_scenario(graph, s) for s in scenarios} or {"base": graph}
    sources = {node.node_id: node for g in variants.values() for node in g.sources}
    # Step 2: recorded input, once per distinct source.
    recorded = _recorded(sources, bootstrap_servers, inputs, cache, progress)
    # Step 3: the range plus the deepest warm-up any variant asks of each source.
    need: dict[str, WarmUp] = {}
    for variant in variants.values():
        for name, warm_up in warm_up_of(variant, options.warmup).items():
            node_id = variant.node(name).node_id
            need[node_id] = _deeper(need.get(node_id, WarmUp()), warm_up)
    selected: dict[str, Batch] = {}
    hasher = hashlib.sha256()
    for node_id in sorted(sources):
        # The events fed are a function of the recorded events' identity, the range and the
        # warm-up: that is their fingerprint, and the key of the selection kept in memory.
        key = hashlib.sha256(repr((recorded[node_id].key, start_ns, end_ns,
                                   need[node_id].canonical())).encode()).hexdigest()
        hasher.update(f"{node_id}\n{key}\n".encode())
        chosen = cache.get(key) if cache is not None else None
        if chosen is None:
            chosen = select_range(recorded[node_id].batch, start_ns, end_ns, need[node_id])
            if cache is not None:
                cache.put(key, chosen, memory_only=True)  # cheap to recompute from the input
        selected[node_id] = chosen
    range_fingerprint = hasher.hexdigest()
    events = sum(len(batch) for batch in selected.values())
    warm_up_events = sum(int(np.count_nonzero(batch.ts < start_ns))
                         for batch in selected.values())
    # Step 4: run.
    executor = options.chosen_executor
    figures: dict[str, object] = {
        "executor": executor, "events": events, "warm_up_events": warm_up_events,
        "warm_up": describe({sources[node_id].name: need[node_id] for node_id in sources})}
    outputs_by_variant: dict[str, dict[str, Batch]] = {}
    if executor == "batch":
        runner = BatchExecutor(cache, options.parallelism, options.workers)
        wanted = [node for g in variants.values() for node in output_nodes(g)]
        progress.start("running", sum(len(g) for g in batch_generations(wanted)), "nodes")
        results = runner.run(wanted, selected, range_fingerprint,
                             on_node=lambda _node: progress.advance(1))
        for name, variant in variants.items():
            outputs_by_variant[name] = {n.name: results[n.node_id] for n in output_nodes(variant)}
        figures.update(computed=runner.figures.computed, cached=runner.figures.cached,
                       node_seconds=runner.figures.seconds)
    else:
        progress.start("replaying", events * len(variants), "events")
        for name, variant in variants.items():
            by_id = {node.node_id: selected[node.node_id] for node in variant.sources}
            outputs_by_variant[name] = run_streaming(
                variant, by_id, pace=options.pace, max_batch_records=options.max_batch_records,
                on_read=progress.advance)
        figures.update(computed=sorted({n.name for g in variants.values() for n in g.nodes}),
                       cached=[])
    progress.finish()
    if cache is not None:
        cache.persist()
    # Step 5: suppress what lies before the range.
    figures["seconds"] = time.perf_counter() - started
    results_by_variant = {
        name: BacktestResult({n: _within(b, start_ns, end_ns) for n, b in outputs.items()},
                             figures, name)
        for name, outputs in outputs_by_variant.items()}
    if not scenarios:
        return results_by_variant["base"]
    return SweepResult(results_by_variant, figures)


def output_nodes(graph: Graph) -> list[Node]:
    """The nodes whose records a backtest returns: every sink and every declared output."""
    seen: dict[str, Node] = {}
    for node in (*graph.sinks, *graph.outputs):
        seen.setdefault(node.node_id, node)
    return list(seen.values())


def _recorded(sources: Mapping[str, Node], bootstrap_servers: str | None,
              inputs: Mapping[str, Batch | RecordedInput] | None, cache: ResultCache | None,
              progress: ProgressBar) -> dict[str, RecordedInput]:
    if inputs is not None:
        missing = sorted({n.name for n in sources.values()} - set(inputs))
        if missing:
            raise BacktestError(f"no recorded input for source(s) {missing}; pass "
                                f"inputs={{name: Batch}} for each of them")
        given = {node_id: inputs[node.name] for node_id, node in sources.items()}
        return {node_id: value if isinstance(value, RecordedInput) else RecordedInput.of(value)
                for node_id, value in given.items()}
    if bootstrap_servers is None:
        raise BacktestError("a backtest needs recorded input: bootstrap_servers= to read the "
                            "sources' topics, or inputs={source name: Batch}")
    progress.start("reading", 0, "events")

    async def read_all() -> dict[str, RecordedInput]:
        return {node_id: await read_recorded(bootstrap_servers, node, cache=cache,
                                             on_progress=progress.advance,
                                             on_size=progress.expect)
                for node_id, node in sources.items()}

    return asyncio.run(read_all())


def _deeper(a: WarmUp, b: WarmUp) -> WarmUp:
    return WarmUp(max(a.events, b.events), max(a.span_ns, b.span_ns),
                  a.everything or b.everything)


def _within(batch: Batch, start_ns: int, end_ns: int) -> Batch:
    inside = (batch.ts >= start_ns) & (batch.ts < end_ns)
    return batch if bool(inside.all()) else batch.take(np.flatnonzero(inside))


def _to_ns(value: TimeLike, what: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value  # the Python API's unit: nanoseconds
    try:
        return parse_time(value)
    except TimeRangeError as exc:
        raise TimeRangeError(f"{what}: {exc}") from None
