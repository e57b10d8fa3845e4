"""The rolling family against plain-Python references: count and time windows, many keys,
wraparound, empty and arbitrarily split batches, snapshots, non-finite values, stability."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import (
    Event,
    assert_records,
    batches,
    cut_lists,
    event_streams,
    quarters,
    run,
    special,
)

import streamdag as sd
from operators.errors import SnapshotMismatchError
from operators.rolling import RollingLogic  # importing registers the rolling family
from streamdag.errors import GraphError, ParamError, SchemaMismatchError
from streamdag.graph import Node
from streamdag.operator_registry import lookup

SOURCE = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
STATISTICS = ("sum", "mean", "std", "min", "max")
# std divides and takes a square root in a different order than statistics.stdev; everything
# else runs on exactly representable data (quarters) and must match to the last bit.
INEXACT = {"std"}


def _stdev(values: Sequence[float]) -> float:
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return math.nan
    return statistics.stdev(values)


def _extreme(pick: Callable[[Sequence[float]], float]) -> Callable[[Sequence[float]], float]:
    return lambda values: math.nan if any(math.isnan(v) for v in values) else pick(values)


REFERENCE: dict[str, Callable[[Sequence[float]], float]] = {
    "sum": lambda values: sum(values),
    "mean": lambda values: sum(values) / len(values),
    "std": _stdev,
    "min": _extreme(min),
    "max": _extreme(max),
}


def reference(events: Sequence[Event], statistic: str, window: int,
              time_window: int) -> list[dict[str, Any]]:
    """What the node must emit, computed from each key's whole history."""
    history: dict[str, list[tuple[int, float]]] = defaultdict(list)
    out = []
    for ts, key, x in events:
        history[key].append((ts, x))
        if window:
            if len(history[key]) < window:
                continue
            values = [v for _, v in history[key][-window:]]
        else:
            values = [v for t, v in history[key] if t > ts - time_window]
        out.append({"ts": ts, "key": key, "value": REFERENCE[statistic](values)})
    return out


def node_for(statistic: str, window: int = 0, time_window: int = 0) -> Node:
    """The rolling node of ``statistic`` over SOURCE's price."""
    spec = {"window": window} if window else {"time_window": time_window}
    return SOURCE.apply(f"rolling_{statistic}", field="price", name="rolled", **spec)


@pytest.mark.parametrize("statistic", STATISTICS)
@settings(max_examples=100, deadline=None)
@given(events=event_streams(), window=st.integers(1, 12), cuts=cut_lists)
def test_count_window_matches_reference(statistic: str, events: list[Event], window: int,
                                        cuts: list[int]) -> None:
    node = node_for(statistic, window=window)
    expected = reference(events, statistic, window, 0)
    assert_records(run(node, batches(events, cuts)), expected, statistic not in INEXACT)


@pytest.mark.parametrize("statistic", STATISTICS)
@settings(max_examples=100, deadline=None)
@given(events=event_streams(max_keys=6), time_window=st.integers(1, 25), cuts=cut_lists)
def test_time_window_matches_reference(statistic: str, events: list[Event], time_window: int,
                                       cuts: list[int]) -> None:
    node = node_for(statistic, time_window=time_window)
    expected = reference(events, statistic, 0, time_window)
    assert_records(run(node, batches(events, cuts)), expected, statistic not in INEXACT)


@pytest.mark.parametrize("statistic", STATISTICS)
@settings(max_examples=25, deadline=None)
@given(events=event_streams(values=st.one_of(quarters, quarters, quarters, special),
                            max_keys=3),
       window=st.integers(1, 6), time_window=st.integers(0, 8))
def test_non_finite_values_follow_ieee_over_the_window(
        statistic: str, events: list[Event], window: int, time_window: int) -> None:
    node = node_for(statistic, 0 if time_window else window, time_window)
    expected = reference(events, statistic, 0 if time_window else window, time_window)
    assert_records(run(node, batches(events, [])), expected, statistic not in INEXACT)


@pytest.mark.parametrize("statistic", STATISTICS)
@settings(max_examples=25, deadline=None)
@given(events=event_streams(), window=st.integers(1, 12), time_window=st.integers(0, 10),
       cuts=cut_lists, restore_after=st.integers(0, 6))
def test_split_and_restored_runs_equal_one_batch(
        statistic: str, events: list[Event], window: int, time_window: int, cuts: list[int],
        restore_after: int) -> None:
    node = node_for(statistic, 0 if time_window else window, time_window)
    whole = run(node, batches(events, []))
    resumed = run(node, batches(events, cuts), restore_after=restore_after)
    assert_records(resumed, whole, exact=True)


@pytest.mark.parametrize("statistic", STATISTICS)
@pytest.mark.parametrize(("window", "time_window"), [(16, 0), (0, 2_000)])
def test_many_keys_long_stream_matches_reference(statistic: str, window: int,
                                                 time_window: int) -> None:
    # 150 keys force the key capacity (64) to double twice; 6,000 events wrap every ring
    # many times; ~27 events per key in 2,000 ns grow every time-window ring twice.
    rng = np.random.default_rng(11)
    ts = 1_000 + np.cumsum(rng.integers(0, 2, 6_000))
    keys = rng.integers(0, 150, 6_000)
    prices = rng.integers(-4_000, 4_000, 6_000) / 4
    events = [(int(t), f"k{k}", float(x)) for t, k, x in zip(ts, keys, prices, strict=True)]
    node = node_for(statistic, window, time_window)
    expected = reference(events, statistic, window, time_window)
    got = run(node, batches(events, [1_000, 1_000, 2_500, 5_999]), restore_after=2)
    assert_records(got, expected, statistic not in INEXACT)


def test_spike_leaving_the_window_leaves_sum_and_mean_exact() -> None:
    events = [(i, "a", x) for i, x in enumerate([1e16, 1.0, 1.0, 1.0, 1.0, 2.0])]
    summed = run(node_for("sum", window=3), batches(events, []))
    meaned = run(node_for("mean", window=3), batches(events, []))
    assert [r["value"] for r in summed] == [1e16 + 2.0, 3.0, 3.0, 4.0]
    assert [r["value"] for r in meaned] == [(1e16 + 2.0) / 3, 1.0, 1.0, 4.0 / 3]


def test_std_recovers_at_once_after_a_spike_and_a_level_shift() -> None:
    rng = np.random.default_rng(7)
    noise = rng.integers(-50, 50, 400) / 8
    # The spike leaves at event 225, between two of the once-per-window recomputations (every
    # 20 events here), so only the cancellation check can repair the sums in time.
    prices = np.concatenate([1e9 + noise[:205], [1e15], noise[205:]])
    events = [(i, "a", float(x)) for i, x in enumerate(prices)]
    got = np.array([r["value"] for r in run(node_for("std", window=20), batches(events, []))])
    windows = np.lib.stride_tricks.sliding_window_view(prices, 20)
    exact = np.array([statistics.stdev(w.tolist()) for w in windows])
    # Windows holding the spike or straddling the shift are ill-conditioned at 1e15 / 1e9;
    # every other window must be accurate to rounding, the first one after them included.
    spike_or_shift = np.zeros(len(exact), dtype=bool)
    spike_or_shift[205 - 19 : 206] = True
    assert np.allclose(got[~spike_or_shift], exact[~spike_or_shift], rtol=1e-12, atol=0)


def test_long_stream_sum_does_not_drift() -> None:
    rng = np.random.default_rng(3)
    prices = rng.normal(0.0, 1e6, 200_000)
    node = node_for("sum", window=7)
    logic = lookup(node.operator).create(node.config())
    batch = sd.Batch.from_columns(ts=np.arange(len(prices)), key=["a"] * len(prices),
                                  price=prices)
    got = logic.process([batch]).columns["value"]
    exact = [math.fsum(w) for w in np.lib.stride_tricks.sliding_window_view(prices, 7)]
    assert np.allclose(got, exact, rtol=0, atol=1e-6)


def test_constant_window_has_exactly_zero_std() -> None:
    rng = np.random.default_rng(9)
    prices = [*(rng.normal(0.0, 1e3, 50)), *([0.1] * 30)]
    events = [(i, "a", float(x)) for i, x in enumerate(prices)]
    got = [r["value"] for r in run(node_for("std", window=7), batches(events, []))]
    # Windows ending at events 56..79 hold only 0.1: zero, not rounding noise.
    assert got[56 - 6 :] == [0.0] * 24


def test_output_keeps_lineage_of_emitted_rows() -> None:
    batch = sd.Batch(np.array([1, 2, 3], dtype=np.int64), sd.batch.encode_keys(["a"] * 3),
                     {"price": np.array([1.0, 2.0, 3.0])},
                     partition=np.array([0, 0, 1], dtype=np.int32),
                     offset=np.array([10, 11, 12], dtype=np.int64))
    out = run_logic(node_for("max", window=2), batch)
    assert out.offset is not None and out.offset.tolist() == [11, 12]
    assert out.partition is not None and out.partition.tolist() == [0, 1]


def run_logic(node: Node, batch: sd.Batch) -> sd.Batch:
    """One process() call of a fresh logic."""
    return lookup(node.operator).create(node.config()).process([batch])


def test_int64_field_is_read_as_float() -> None:
    ints = sd.source("ints", topic="ints", schema={"size": "int64"})
    node = ints.rolling_sum("size", window=2, name="total")
    batch = sd.Batch.from_columns(ts=[1, 2], key=["a", "a"], size=[3, 4])
    assert run_logic(node, batch).to_records() == [{"ts": 2, "key": "a", "value": 7.0}]


def test_on_watermark_emits_nothing() -> None:
    logic = lookup("rolling_mean").create(node_for("mean", window=2).config())
    assert logic.on_watermark(10**18) is None


@pytest.mark.parametrize("spec", [{}, {"window": 3, "time_window": "1s"}])
def test_exactly_one_window_is_required(spec: dict[str, Any]) -> None:
    with pytest.raises(ParamError, match=r"node .bad.: rolling_mean needs exactly one of window"):
        SOURCE.rolling_mean("price", name="bad", **spec)


def test_unknown_field_is_refused_when_built() -> None:
    with pytest.raises(SchemaMismatchError, match="'volume'"):
        SOURCE.rolling_max("volume", window=3, name="bad")


def test_interval_is_refused_when_built() -> None:
    with pytest.raises(GraphError, match="node 'm': rolling_mean updates on every event"):
        SOURCE.rolling_mean("price", window=3, name="m", interval="1s")


def test_history_is_the_count_window() -> None:
    assert node_for("mean", window=30).period == 30
    assert node_for("mean", time_window=5).period == 1


def test_slots_not_from_the_table_are_refused() -> None:
    logic = RollingLogic(node_for("sum", window=2).config(), "sum")
    with pytest.raises(IndexError, match="map keys with slots"):
        logic.update(np.array([0]), np.array([1]), np.array([1.0]))


def test_snapshot_of_another_window_is_refused() -> None:
    three, four = node_for("mean", window=3), node_for("mean", window=4)
    snapshot = lookup("rolling_mean").create(three.config()).snapshot()
    with pytest.raises(SnapshotMismatchError, match="belongs to another node configuration"):
        lookup("rolling_mean").create(four.config(), snapshot)


def test_batch_without_the_field_is_refused() -> None:
    batch = sd.Batch.from_columns(ts=[1], key=["a"], volume=[1.0])
    with pytest.raises(SchemaMismatchError, match="reads field 'price'"):
        run_logic(node_for("sum", window=2), batch)
