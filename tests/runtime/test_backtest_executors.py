"""Backtests in process: warm-up gives the first output live gives, the batch executor equals
the streaming replay over every operator family, scenarios and sweeps share their nodes."""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest

import operators
import streamdag as sd
from runtime.backtest import (
    BacktestError,
    BacktestOptions,
    BacktestResult,
    ResultCache,
    Scenario,
    ScenarioError,
    SweepResult,
    TimeRangeError,
    backtest,
    parse_sweeps,
)
from runtime.backtest.executors import PacedSource
from runtime.backtest.progress import ProgressBar
from runtime.demo.synthetic import RandomWalk
from streamdag.batch import Batch
from streamdag.graph import Graph
from streamdag.operator_registry import available
from streamdag.testing import ManualClock

TICKS = RandomWalk(symbols=6, seed=5).next_batch(3_000)  # 1 ms apart, from 0
START, END = 1_000_000_000, 2_500_000_000  # ticks 1000 to 2499


@sd.udf(period=3)
def _spread(fast: np.ndarray, slow: np.ndarray) -> np.ndarray:
    """Latest fast minus the slow value two events earlier."""
    return fast[:, -1] - slow[:, 0]


def _double_price(rows: np.ndarray) -> np.ndarray:
    """A model on numpy rows: twice the price."""
    return rows[:, :1] * 2.0


def _families(*, ema: bool = True) -> Graph:
    """Every operator family: rolling sum/mean/std/min/max/count (count and time windows,
    min_periods), running count, ema, zscore, vwap, bars, crossover, as-of joins (backward,
    forward), interval join, lookup join, tumbling/hopping/session/count windows, combine, map
    (one and several expressions), filter, iterate, a udf, inference, a sink."""
    ticks = sd.source("ticks", topic="bt.ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    fast = ticks.rolling_mean("price", window=5, name="fast")
    slow = ticks.rolling_std("price", window=9, name="slow")
    cross = fast.crossover(ticks.rolling_max("price", window=7, name="high"), name="cross")
    joined = ticks.zscore("price", window=8, name="z").asof_join(cross, name="joined")
    gap = _spread(ticks.map("price * 10", name="b"), slow, name="diamond")
    bars = ticks.ohlcv(bar=40_000_000, name="bars")
    vwap = ticks.vwap(window=6, name="vwap").filter("value > 100", name="rich")
    smooth = ticks.ema("price", span=12, name="smooth")
    roots = ticks.iterate({"x": "price"}, {"x": "0.5 * (x + price / x)"}, output="x",
                          name="roots")
    counted = sd.combine(n=ticks.running_count(name="n"),
                         recent=ticks.rolling_count(window=5, min_periods=1, name="recent"),
                         first=ticks.rolling_mean("price", window=4, min_periods=1,
                                                  name="early"), name="counted")
    windows = [
        ticks.tumbling_window("20ms", agg=["mean", "count"], field="price", name="tumbling"),
        ticks.hopping_window("20ms", "10ms", agg="max", field="price", early_interval="5ms",
                             name="hopping"),
        ticks.session_window("3ms", agg="sum", field="size", name="sessions"),
        ticks.session_window("3ms", agg=["sum", "count"], field="size", early_interval="2ms",
                             name="early_sessions"),
        ticks.count_window(7, agg="last", field="price", name="sevens"),
    ]
    ahead = ticks.asof_join(ticks.filter("size > 50", name="big"), direction="forward",
                            tolerance="5ms", name="ahead")
    pairs = ticks.interval_join(ticks.map(double="price * 2", half="price / 2", name="two"),
                                lower="1ms", upper="1ms", name="pairs")
    looked = ticks.lookup_join(ticks.filter("size > 80", name="table"), prefix="row_",
                               name="looked")
    scored = ticks.infer(_double_price, features=["price", "size"], outputs=["score"],
                         name="scored")
    return sd.Graph("families", outputs=[
        joined.to_topic("bt.joined", name="joined_out"), gap, bars, vwap, roots,
        ticks.rolling_min("price", time_window="15ms", name="low"),
        ticks.rolling_sum("size", window=4, name="volume"),
        counted, ahead, pairs, looked, scored, *windows,
        *([smooth] if ema else [])])


def _bounded() -> Graph:
    """Only nodes whose state is their period: rolling mean/max/min, vwap, bars, crossover,
    as-of join, map, filter, a udf."""
    ticks = sd.source("ticks", topic="bt.ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    fast = ticks.rolling_mean("price", window=5, name="fast")
    cross = fast.crossover(ticks.rolling_max("price", window=7, name="high"), name="cross")
    joined = fast.asof_join(cross, name="joined")
    gap = _spread(ticks.map("price * 10", name="b"), ticks.vwap(window=9, name="vwap9"),
                  name="diamond")
    return sd.Graph("bounded", outputs=[
        joined.to_topic("bt.joined", name="joined_out"), gap,
        ticks.ohlcv(bar=40_000_000, name="bars"),
        ticks.vwap(window=6, name="vwap").filter("value > 100", name="rich"),
        ticks.rolling_min("price", time_window="15ms", name="low")])


def _run(graph: Graph, start: int, end: int, **options: object) -> BacktestResult:
    result = backtest(graph, start, end, inputs={"ticks": TICKS},
                      options=BacktestOptions(**options))  # type: ignore[arg-type]
    assert isinstance(result, BacktestResult)
    return result


def test_batch_executor_equals_streaming_replay_over_every_family() -> None:
    graph = _families()
    batch = _run(graph, START, END, executor="batch")
    streaming = _run(graph, START, END, executor="streaming", max_batch_records=97)
    assert sorted(batch.outputs) == [
        "ahead", "bars", "counted", "diamond", "early_sessions", "hopping", "joined_out",
        "looked", "low", "pairs", "rich", "roots", "scored", "sessions", "sevens", "smooth",
        "tumbling", "volume"]
    built_in = {name for name, definition in available().items()
                if definition.__module__.startswith(("operators.", "streamdag.endpoints"))}
    # Every family (tag queries follow running nodes: only deployments run them).
    assert {node.operator for node in graph.nodes} == built_in
    for name in batch.outputs:
        assert len(batch.outputs[name]) > 0, name
        assert repr(batch.records(name)) == repr(streaming.records(name)), name  # NaN too
    assert batch.digests() == streaming.digests()
    # Early updates by event time are the same whether 97 events or all came at once.
    assert any(r["early"] for r in batch.records("hopping"))
    assert any(r["early"] for r in batch.records("early_sessions"))


@pytest.mark.parametrize("bounded", [True, False])
def test_warm_up_makes_the_range_equal_a_run_over_all_history(bounded: bool) -> None:
    graph = _bounded() if bounded else _families(ema=False)
    everything = _run(graph, 0, END, executor="batch")
    ranged = _run(graph, START, END, executor="batch")
    warm_up = ranged.figures["warm_up_events"]
    if bounded:  # per symbol 9 + 3 events (vwap9, diamond) and 40 ms (bars)
        assert warm_up == 6 * (9 + 3)
    else:  # a rolling std remembers the shift of an earlier window: all of history
        assert warm_up == START // 1_000_000
    for name, batch in everything.outputs.items():
        inside = batch.take(np.flatnonzero(batch.ts >= START))
        # ...yet the same outputs (NaN compared as text)
        assert repr(ranged.records(name)) == repr(inside.to_records()), name
    assert min(int(b.ts.min()) for b in ranged.outputs.values()) >= START


def test_without_warm_up_the_first_outputs_differ() -> None:
    graph = _bounded()
    cold = _run(graph, START, END, executor="batch", warmup="none")
    warm = _run(graph, START, END, executor="batch")
    assert cold.digests()["diamond"] != warm.digests()["diamond"]


def test_two_backtests_are_byte_identical() -> None:
    graph = _families()
    first, second = _run(graph, START, END), _run(graph, START, END)
    for name in first.outputs:
        a, b = first.outputs[name], second.outputs[name]
        assert a.ts.tobytes() == b.ts.tobytes() and a.key.tobytes() == b.key.tobytes()
        assert all(a.columns[c].tobytes() == b.columns[c].tobytes() for c in a.columns)


def test_a_param_change_recomputes_only_that_node_and_its_dependents() -> None:
    graph = _families()
    cache = ResultCache()
    first = backtest(graph, START, END, inputs={"ticks": TICKS}, cache=cache)
    assert isinstance(first, BacktestResult) and first.figures["cached"] == []
    again = backtest(graph, START, END, inputs={"ticks": TICKS}, cache=cache)
    assert isinstance(again, BacktestResult) and again.figures["computed"] == []
    assert again.digests() == first.digests()
    changed = backtest(graph, START, END, inputs={"ticks": TICKS}, cache=cache,
                       scenarios=[Scenario.parse(["slow.window=12"])])
    assert isinstance(changed, SweepResult)
    assert sorted(changed.figures["computed"]) == ["diamond", "slow"]
    variant = changed["slow.window=12"]
    assert variant.digests()["bars"] == first.digests()["bars"]
    assert variant.digests()["diamond"] != first.digests()["diamond"]


def test_a_sweep_runs_shared_nodes_once_and_equals_separate_runs() -> None:
    graph = _families()
    variants = parse_sweeps(["slow.window=3,9,11"])
    swept = backtest(graph, START, END, inputs={"ticks": TICKS}, scenarios=variants)
    assert isinstance(swept, SweepResult)
    computed = swept.figures["computed"]
    assert computed.count("slow") == 3 and computed.count("diamond") == 3
    assert computed.count("ticks") == computed.count("bars") == computed.count("fast") == 1
    for scenario in variants:
        alone = backtest(graph, START, END, inputs={"ticks": TICKS}, scenarios=[scenario])
        assert isinstance(alone, SweepResult)
        assert swept[scenario.name].digests() == alone[scenario.name].digests()
    assert swept["slow.window=9"].digests() == _run(graph, START, END).digests()
    assert swept["slow.window=3"].digests()["diamond"] != _run(graph, START, END).digests()[
        "diamond"]


def test_bad_scenarios_and_ranges_are_refused_with_the_fix() -> None:
    graph = _families()
    with pytest.raises(ScenarioError, match=r"does not have; its nodes are"):
        backtest(graph, START, END, inputs={"ticks": TICKS},
                 scenarios=[Scenario.parse(["nope.window=3"])])
    with pytest.raises(ScenarioError, match=r"has no param\(s\) \['span'\]; its params"):
        backtest(graph, START, END, inputs={"ticks": TICKS},
                 scenarios=[Scenario.parse(["fast.span=3"])])
    with pytest.raises(ScenarioError, match=r"is not NODE\.PARAM=VALUE"):
        Scenario.parse(["fast=3"])
    with pytest.raises(ScenarioError, match="repeat a name"):
        backtest(graph, START, END, inputs={"ticks": TICKS},
                 scenarios=[Scenario.parse(["fast.window=3"], name="a"),
                            Scenario.parse(["fast.window=4"], name="a")])
    with pytest.raises(TimeRangeError, match="the range is empty"):
        backtest(graph, END, START, inputs={"ticks": TICKS})
    with pytest.raises(TimeRangeError, match="start: 'yesterday' is not a time"):
        backtest(graph, "yesterday", END, inputs={"ticks": TICKS})


def test_outputs_come_as_columns() -> None:
    result = _run(_families(), START, END)
    columns = result["bars"]
    assert list(columns)[:2] == ["ts", "key"] and columns["key"].dtype.kind == "U"
    assert len(columns["ts"]) == len(result.outputs["bars"])
    assert isinstance(result.outputs["bars"], Batch)


@pytest.mark.integration
def test_the_batch_executor_on_ray_tasks_equals_threads(ray_session: None) -> None:
    graph = _families()
    on_ray = _run(graph, START, END, workers="ray")
    assert on_ray.digests() == _run(graph, START, END).digests()
    assert len(on_ray.figures["computed"]) == len(graph.nodes)


def test_outputs_convert_to_pandas_when_it_is_installed() -> None:
    result = _run(_bounded(), START, END)
    if importlib.util.find_spec("pandas") is None:
        with pytest.raises(BacktestError, match="pip install pandas"):
            result.to_pandas("bars")
    else:
        frame = result.to_pandas("bars")
        assert list(frame.columns[:2]) == ["ts", "key"]
        assert frame["close"].tolist() == result["bars"]["close"].tolist()


def test_a_paced_replay_waits_for_each_batch_s_event_time_at_n_times_speed() -> None:
    clock, slept = ManualClock(100.0), []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    ticks = TICKS.slice(0, 1_000)  # 0 to 999 ms
    source = PacedSource(ticks, 4.0, clock=clock, sleep=sleep)

    async def read_all() -> list[int]:
        sizes = []
        while not (chunk := await source.read(250, 0.0)).finished:
            sizes.append(len(chunk.batch))
        return sizes

    assert asyncio.run(read_all()) == [250] * 4
    # Each batch is due when its newest event is, at 4x: 249 ms / 4, then 250 ms / 4 more.
    assert slept == pytest.approx([0.06225, 0.0625, 0.0625, 0.0625])
    assert clock() == pytest.approx(100.0 + 0.999 / 4)


#: The inference engine's clock decides when rows go to the model (``max_wait_ms``) and times
#: its figures, never a value: an inference node's outputs are row by row, the same whatever
#: the batching (tests/operators/test_inference.py checks that).
_BATCHING_CLOCKS = {"inference_queue.py", "inference_models.py"}


def test_no_operator_reads_the_wall_clock() -> None:
    clocks = {"time", "datetime"}
    for path in sorted(Path(operators.__file__).parent.glob("*.py")):
        if path.name in _BATCHING_CLOCKS:
            continue
        tree = ast.parse(path.read_text())
        imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                    if isinstance(node, ast.Import) for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom)}
        assert not imported & clocks, f"{path.name} imports {imported & clocks}"


def test_nodes_whose_code_is_not_hashed_with_certainty_are_never_cached() -> None:
    calls = []

    def latest(prices: np.ndarray) -> np.ndarray:
        calls.append(len(prices))
        return prices[:, -1]

    ticks = sd.source("ticks", topic="bt.ticks", key="symbol",
                      schema={"price": "float64", "size": "float64"})
    unhashed = sd.udf(period=1, shareable=False)(latest)(ticks["price"], name="latest")
    graph = sd.Graph("opaque", outputs=[unhashed, ticks.rolling_mean("price", window=3)])
    cache = ResultCache()
    for _ in range(2):
        result = backtest(graph, START, END, inputs={"ticks": TICKS}, cache=cache)
        assert isinstance(result, BacktestResult)
    assert len(calls) == 2 and "latest" in result.figures["computed"]
    assert sorted(result.figures["cached"])[0].startswith("rolling_mean")


def test_a_scenario_rewires_inputs_and_refuses_cycles_and_strangers() -> None:
    graph, cache = _families(), ResultCache()
    base = backtest(graph, START, END, inputs={"ticks": TICKS}, cache=cache)
    assert isinstance(base, BacktestResult)
    rewired = backtest(graph, START, END, inputs={"ticks": TICKS}, cache=cache,
                       scenarios=[Scenario.parse(['diamond.inputs=["b", "fast"]'])])
    assert isinstance(rewired, SweepResult)
    assert rewired.figures["computed"] == ["diamond"]  # fast and b come from the cache
    assert rewired["diamond.inputs=[\"b\", \"fast\"]"].digests()["diamond"] != base.digests()[
        "diamond"]
    with pytest.raises(ScenarioError, match="into a cycle: fast -> cross -> fast"):
        backtest(graph, START, END, inputs={"ticks": TICKS},
                 scenarios=[Scenario.parse(["fast.inputs=cross"])])
    with pytest.raises(ScenarioError, match=r"\['nowhere'\] are not nodes of the graph"):
        backtest(graph, START, END, inputs={"ticks": TICKS},
                 scenarios=[Scenario.parse(["diamond.inputs=b,nowhere"])])


def test_the_progress_bar_counts_events_of_the_range_and_nodes() -> None:
    graph, out = _bounded(), io.StringIO()
    backtest(graph, START, END, inputs={"ticks": TICKS}, options=BacktestOptions(
        executor="streaming", max_batch_records=500), progress=ProgressBar(out, force=True))
    events = (END - START) // 1_000_000 + 6 * (9 + 3)  # the range and its warm-up
    last = out.getvalue().rstrip("\n").split("\r")[-1]
    assert last.startswith(f"replaying [{'#' * 30}] {events:,}/{events:,} events  100%  ETA")
    out = io.StringIO()
    backtest(graph, START, END, inputs={"ticks": TICKS}, progress=ProgressBar(out, force=True))
    assert f"running [{'#' * 30}] {len(graph.nodes)}/{len(graph.nodes)} nodes" in out.getvalue()
