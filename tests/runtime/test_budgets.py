"""Limits: bounded size params, the node-cache estimate, and refusals before any actor starts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import streamdag as sd
from operators.node_cache import NodeCache
from runtime.deployment.admission import ADMISSION_FILE, admit_submission, load_admitted
from runtime.deployment.controller import Controller, ControllerOptions
from runtime.deployment.lifecycle import SubmissionRecord
from runtime.deployment.node_registry import NodeRegistry, acquire, node_requests
from runtime.planning.budgets import (
    cache_key_slots,
    check_runner_budgets,
    estimate_graph,
    estimate_node,
    format_bytes,
    node_cache_bytes,
)
from runtime.planning.planner import diff_graph
from runtime.runners import ray_runner
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner
from streamdag.config import LimitSettings, RuntimeSection, Settings
from streamdag.errors import (
    ActorBudgetError,
    GraphSizeError,
    MemoryBudgetError,
    ParamError,
    SharedTopicError,
)
from streamdag.graph import Graph, Node
from streamdag.operator_registry import available
from streamdag.params import Param
from streamdag.testing import TestingSource

GIB = 1 << 30


def _ticks(topic: str = "ticks") -> Node:
    return sd.source("ticks", topic=topic, key="symbol", schema={"price": "float64"})


def _sma(window: int, topic: str = "out", graph: str = "g", **sink: Any) -> Graph:
    sma = _ticks().rolling_mean("price", window=window, name="sma")
    return Graph(graph, outputs=[sma.to_topic(topic, name="out", **sink)])


# -- size params are bounded when the node is built -------------------------------------------
@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda t: t.rolling_mean("price", window=10**12, name="n"),
         "param 'window' got 1000000000000 (int), over the maximum of 1000000; expected a int "
         "between 0 and 1000000"),
        (lambda t: t.rolling_max("price", time_window="400d", name="n"),
         "param 'time_window' got '400d' (str), over the maximum of 31d; expected a duration "
         "(int nanoseconds, or a string like '500ms', '5s', '1m') between 0 and 31d"),
        (lambda t: t.vwap("price", "price", window=10**7, name="n"),
         "param 'window' got 10000000 (int), over the maximum of 1000000; expected a int "
         "between 1 and 1000000"),
        (lambda t: t.zscore("price", window=2_000_000, name="n"),
         "param 'window' got 2000000 (int), over the maximum of 1000000; expected a int "
         "between 2 and 1000000"),
        (lambda t: t.ema("price", span=10**9, name="n"),
         "param 'span' got 1000000000 (int), over the maximum of 1000000; expected a int "
         "between 1 and 1000000"),
        (lambda t: t.ohlcv("price", "price", bar="1s", lateness="2d", name="n"),
         "param 'lateness' got '2d' (str), over the maximum of 1d; expected a duration (int "
         "nanoseconds, or a string like '500ms', '5s', '1m') between 0 and 1d"),
    ],
)
def test_size_params_of_the_built_ins_are_bounded(build: Any, expected: str) -> None:
    with pytest.raises(ParamError) as info:
        build(_ticks())
    assert str(info.value) == f"node 'n': {expected}"


def test_every_size_param_of_the_built_ins_declares_its_maximum() -> None:
    day = 86_400 * 10**9
    sizes = {(name, p.name): p.maximum for name, definition in available().items()
             if definition.__module__.startswith("operators.")
             for p in definition.params if p.size}
    rolling = [f"rolling_{statistic}"
               for statistic in ("sum", "mean", "std", "min", "max", "count")]
    assert sizes == {
        ("ema", "span"): 1_000_000,
        ("infer", "max_batch"): 65_536,
        ("iterate", "max_iterations"): 100_000,
        ("ohlcv", "bar"): 31 * day,
        ("ohlcv", "lateness"): day,
        **{(name, "window"): 1_000_000 for name in rolling},
        **{(name, "time_window"): 31 * day for name in rolling},
        ("vwap", "window"): 1_000_000,
        ("zscore", "window"): 1_000_000,
        ("count_window", "count"): 1_000_000,
        ("interval_join", "lower"): day,
        ("interval_join", "upper"): day,
        **{(name, "size"): 31 * day for name in ("tumbling_window", "hopping_window")},
        ("hopping_window", "step"): 31 * day,
        ("session_window", "gap"): 31 * day,
        **{(name, "lateness"): day
           for name in ("tumbling_window", "hopping_window", "session_window")},
    }


def test_a_size_param_without_a_maximum_cannot_be_declared() -> None:
    with pytest.raises(ValueError) as info:
        Param("window", "int", minimum=1, size=True)
    assert str(info.value) == (
        "param 'window' is declared size=True with kind 'int' and maximum None; a size param "
        "is an int or a duration with a maximum, so that no spec can ask a node for unbounded "
        "memory. Declare maximum=... (e.g. streamdag.params.MAX_EVENTS or MAX_SPAN_NS)"
    )


def test_a_period_over_the_maximum_is_refused_when_built() -> None:
    with pytest.raises(sd.StreamdagError) as info:
        _ticks().rolling_mean("price", window=3, name="sma").with_options(period=10**12)
    assert str(info.value) == (
        "node 'sma': period 1000000000000 is over the maximum of 1000000 events per key and "
        "input; a node holds its period of history in memory for every key, so ask for less"
    )


# -- the estimate ------------------------------------------------------------------------------
def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (0, 1023, 1024, 10**6, 8 * GIB, 512 * 10**12, 2**70)] == [
        "0 B", "1023 B", "1 KiB", "977 KiB", "8 GiB", "466 TiB", "1024 EiB"]


def test_key_slots_double_from_64_until_the_expected_keys_fit() -> None:
    assert [cache_key_slots(n) for n in (1, 64, 65, 1000, 10_000)] == [64, 64, 128, 1024, 16384]


@pytest.mark.parametrize(("inputs", "period", "keys"), [(1, 1, 64), (1, 50, 64), (3, 7, 1024)])
def test_the_estimate_is_what_a_node_cache_of_that_shape_holds(
    inputs: int, period: int, keys: int
) -> None:
    cache = NodeCache(inputs, period, 1, key_capacity=keys)
    assert node_cache_bytes(inputs, period, keys) == cache.resident_bytes()


def test_the_estimate_follows_a_cache_that_grew_to_its_keys() -> None:
    cache = NodeCache(1, 20, 1)
    cache.slots(np.array([f"k{i}".encode() for i in range(1000)]))
    assert cache.key_capacity == cache_key_slots(1000) == 1024
    node = _ticks().rolling_mean("price", window=20, name="sma")
    # The key table's pool grows with the keys' bytes: a few percent at most.
    assert abs(estimate_node(node, 1000).bytes - cache.resident_bytes()) < 0.05 * (
        cache.resident_bytes())


def test_node_estimates_come_from_each_node_s_inputs_and_period() -> None:
    ticks = _ticks()
    sma = ticks.rolling_mean("price", window=50, name="sma")
    std = ticks.rolling_std("price", window=20, name="std")

    @sd.udf(period=30)
    def spread(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        result: np.ndarray = a[:, -1] - b[:, -1]
        return result

    joined = spread(sma["value"], std["value"]).with_options(name="spread")
    graph = Graph("g", outputs=[joined.to_topic("out", name="out")])
    estimate = estimate_graph(graph, expected_keys=64)
    assert [(e.name, e.inputs, e.period) for e in estimate.nodes] == [
        ("spread", 2, 30), ("sma", 1, 50), ("std", 1, 20), ("out", 0, 0), ("ticks", 0, 0)]
    assert [e.bytes for e in estimate.nodes] == [
        NodeCache(2, 30, 1).resident_bytes(), NodeCache(1, 50, 1).resident_bytes(),
        NodeCache(1, 20, 1).resident_bytes(), 0, 0]
    assert estimate.bytes == sum(e.bytes for e in estimate.nodes)


# -- refusals of a graph run on its own ----------------------------------------------------------
WINDOW_REFUSAL = (
    "graph 'g' needs an estimated 244 GiB of node caches, over the budget of 8 GiB set by "
    "limits.memory_budget_bytes; node 'sma' alone needs 244 GiB (16,384 key slots for "
    "limits.expected_keys = 10,000 x 1 input x 1,000,000 events of history x 16 B); lower its "
    "window or period, or raise limits.memory_budget_bytes (or lower limits.expected_keys if "
    "fewer keys will come)"
)


def test_a_graph_over_the_memory_budget_is_refused_with_the_numbers() -> None:
    with pytest.raises(MemoryBudgetError) as info:
        check_runner_budgets(_sma(1_000_000), LimitSettings(), actors=True)
    assert str(info.value) == WINDOW_REFUSAL
    fits = check_runner_budgets(_sma(1_000_000), LimitSettings(memory_budget_bytes=300 * GIB,
                                                               expected_keys=10_000),
                                actors=True)
    assert format_bytes(fits.bytes) == "244 GiB"


def test_a_graph_with_more_nodes_than_allowed_is_refused() -> None:
    ticks = _ticks()
    means = [ticks.rolling_mean("price", window=w, name=f"m{w}") for w in range(1, 65)]
    graph = Graph("wide", outputs=means)
    assert len(graph.nodes) == 65
    with pytest.raises(GraphSizeError) as info:
        check_runner_budgets(graph, LimitSettings(), actors=False)
    assert str(info.value) == (
        "graph 'wide' has 65 nodes, over the limit of 64 set by limits.max_nodes_per_graph; "
        "split it into smaller graphs (nodes they share run once), or raise the limit"
    )


def test_actors_count_only_where_nodes_run_as_actors() -> None:
    limits = LimitSettings(max_actors=2)
    check_runner_budgets(_sma(3), limits, actors=False)
    with pytest.raises(ActorBudgetError) as info:
        check_runner_budgets(_sma(3), limits, actors=True)
    assert str(info.value) == (
        "graph 'g' needs 3 new node actors: 3 in all, over the limit of 2 set by "
        "limits.max_actors; remove submissions that are done, reuse nodes running graphs "
        "already have, or raise the limit"
    )


def test_the_local_runner_refuses_before_any_host_starts() -> None:
    opened: list[str] = []

    def source() -> TestingSource:
        opened.append("ticks")
        return TestingSource([])

    with pytest.raises(MemoryBudgetError) as info:
        LocalRunner().run(_sma(1_000_000), sources={"ticks": source})
    assert str(info.value) == WINDOW_REFUSAL
    assert opened == []


def test_the_ray_runner_refuses_before_it_touches_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_ray(*args: Any) -> None:
        raise AssertionError("the budget check must come before Ray is started")

    monkeypatch.setattr(ray_runner, "ensure_ray", no_ray)
    with pytest.raises(MemoryBudgetError) as info:
        RayRunner().start(_sma(1_000_000))
    assert str(info.value) == WINDOW_REFUSAL
    with pytest.raises(ActorBudgetError):
        RayRunner(limits=LimitSettings(max_actors=2)).start(_sma(3))


# -- a deployment's admission ---------------------------------------------------------------------
class _Deployment:
    """The registry and records a controller would hold, and its calls to admit_submission."""

    def __init__(self, state_dir: Path, limits: LimitSettings | None = None) -> None:
        self.state_dir = state_dir
        self.limits = limits or LimitSettings()
        self.registry = NodeRegistry()
        self.records: dict[str, SubmissionRecord] = {}

    def submit(self, submission: str, graph: Graph) -> None:
        """Admit, then hold the nodes (as the controller does once actors are up)."""
        self.records[submission] = SubmissionRecord.new(submission, graph.name)
        keys = {n.node_id: n.node_id for n in graph.nodes}
        diff = diff_graph(graph, self.registry.live_keys())
        admit_submission(self.state_dir, self.limits, self.registry, self.records.values(),
                         submission, graph, keys, diff)
        self.registry = acquire(self.registry, submission, node_requests("d", graph.nodes, keys))
        self.records[submission] = dataclasses.replace(self.records[submission],
                                                       holds_nodes=True)

    def release(self, submission: str) -> None:
        """The submission was removed: it holds no nodes any more."""
        self.records[submission] = dataclasses.replace(self.records[submission],
                                                       holds_nodes=False)


def test_a_second_graph_writing_a_running_graph_s_topic_is_refused(tmp_path: Path) -> None:
    deployment = _Deployment(tmp_path)
    deployment.submit("sub-a", _sma(20, topic="signals", graph="a"))
    with pytest.raises(SharedTopicError) as info:
        deployment.submit("sub-b", _sma(50, topic="signals", graph="b"))
    assert str(info.value) == (
        "graph 'b': sink 'out' writes topic 'signals', which sink 'out' of graph 'a' "
        "(submission sub-a) already writes; two graphs writing one topic interleave their "
        "records. Write another topic, remove submission sub-a first, or, if both should write "
        "it, declare it shared on 'out' and 'out' (.to_topic(..., shared=True); shared = true "
        "in a spec sink's params)"
    )
    assert [entry.submission for entry in load_admitted(tmp_path / ADMISSION_FILE)] == ["sub-a"]


def test_a_topic_every_writer_shares_may_have_several_writers(tmp_path: Path) -> None:
    deployment = _Deployment(tmp_path)
    deployment.submit("sub-a", _sma(20, topic="signals", graph="a", shared=True))
    with pytest.raises(SharedTopicError) as info:
        deployment.submit("sub-b", _sma(50, topic="signals", graph="b"))
    assert "declare it shared on 'out' (.to_topic" in str(info.value)
    deployment.submit("sub-c", _sma(50, topic="signals", graph="c", shared=True))
    claims = [(c.submission, c.topic, c.shared) for entry in load_admitted(
        tmp_path / ADMISSION_FILE) for c in entry.sinks]
    assert claims == [("sub-a", "signals", True), ("sub-c", "signals", True)]


def test_one_sink_shared_by_two_graphs_is_one_writer(tmp_path: Path) -> None:
    deployment = _Deployment(tmp_path)
    deployment.submit("sub-a", _sma(20, topic="signals", graph="a"))
    deployment.submit("sub-b", _sma(20, topic="signals", graph="b"))  # the same sink node


def test_a_removed_graph_no_longer_owns_its_topic(tmp_path: Path) -> None:
    deployment = _Deployment(tmp_path)
    deployment.submit("sub-a", _sma(20, topic="signals", graph="a"))
    deployment.release("sub-a")
    deployment.submit("sub-b", _sma(50, topic="signals", graph="b"))
    document = json.loads((tmp_path / ADMISSION_FILE).read_text())
    assert [entry["submission"] for entry in document["submissions"]] == ["sub-b"]


def test_actors_and_memory_count_what_the_deployment_already_runs(tmp_path: Path) -> None:
    limits = LimitSettings(max_actors=5, memory_budget_bytes=512 << 20, expected_keys=1000)
    deployment = _Deployment(tmp_path, limits)
    deployment.submit("sub-a", _sma(20_000, topic="a", graph="a"))
    with pytest.raises(ActorBudgetError) as actors:
        deployment.submit("sub-b", Graph("b", outputs=[
            _ticks().rolling_sum("price", window=20, name="sum").to_topic("b", name="out"),
            _ticks().rolling_std("price", window=20, name="std").to_topic("c", name="out2")]))
    assert str(actors.value) == (
        "graph 'b' needs 4 new node actors beside the 3 the deployment runs: 7 in all, over the "
        "limit of 5 set by limits.max_actors; remove submissions that are done, reuse nodes "
        "running graphs already have, or raise the limit"
    )
    with pytest.raises(MemoryBudgetError) as memory:
        deployment.submit("sub-c", _sma(30_000, topic="c", graph="c"))
    assert str(memory.value) == (
        "graph 'c' needs an estimated 469 MiB of node caches and the deployment's running nodes "
        "hold an estimated 313 MiB: 781 MiB in all, over the budget of 512 MiB set by "
        "limits.memory_budget_bytes; node 'sma' alone needs 469 MiB (1,024 key slots for "
        "limits.expected_keys = 1,000 x 1 input x 30,000 events of history x 16 B); lower its "
        "window or period, or raise limits.memory_budget_bytes (or lower limits.expected_keys "
        "if fewer keys will come)"
    )


class _Events:
    """A lifecycle emitter that keeps the events (no Kafka needed)."""

    def __init__(self) -> None:
        self.events: list[Mapping[str, Any]] = []

    async def emit(self, key: str, event: Mapping[str, Any]) -> None:
        """Keep ``event``."""
        self.events.append(event)

    async def close(self) -> None:
        """Nothing to release."""


def test_the_controller_fails_a_submission_over_budget_before_any_actor_starts(
    ray_session: None, tmp_path: Path
) -> None:
    events = _Events()
    controller = Controller(
        Settings(name=f"budget{uuid.uuid4().hex[:8]}", state_dir=str(tmp_path),
                 runtime=RuntimeSection(warm_pool=0)),  # an in-process controller, no Ray
        bootstrap_servers="127.0.0.1:9",  # never contacted: nothing gets that far
        state_dir=str(tmp_path / "controller"),
        options=ControllerOptions(health_interval_s=0.0), emitter=events,
    )
    refused = asyncio.run(controller.submit_graph(_sma(1_000_000)))
    assert refused["state"] == "failed"
    assert refused["cause"] == f"MemoryBudgetError: {WINDOW_REFUSAL}"
    assert [step["to"] for step in refused["history"]] == ["submitted", "processing", "failed"]
    assert controller.nodes() == []
    assert [e["data"]["to"] for e in events.events] == ["submitted", "processing", "failed"]
