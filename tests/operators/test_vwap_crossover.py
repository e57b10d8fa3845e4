"""vwap and crossover against plain-Python references: many keys, wraparound, empty and split
batches, snapshots, non-finite values, unpaired and duplicate rows."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import assert_records, batch_of, batches, cut_lists, quarters, run

import streamdag as sd
from operators.crossover import CrossoverLogic  # importing registers crossover
from operators.vwap import VwapLogic  # importing registers vwap
from streamdag.errors import SchemaMismatchError

Trade = tuple[int, str, float, float]
TRADE_FIELDS = ("price", "size")
VALUE = ("value",)
TRADES = sd.source("trades", topic="trades", key="symbol",
                   schema={"price": "float64", "size": "float64"})
FAST = TRADES.ema("price", span=3, name="fast")
SLOW = TRADES.ema("price", span=9, name="slow")


def reference_vwap(trades: Sequence[Trade], window: int) -> list[dict[str, Any]]:
    """sum(p * s) / sum(s) over each key's last ``window`` trades."""
    history: dict[str, list[tuple[float, float]]] = defaultdict(list)
    out = []
    for ts, key, price, size in trades:
        history[key].append((price, size))
        last = history[key][-window:]
        if len(last) < window:
            continue
        total = sum(s for _, s in last)
        finite = all(math.isfinite(p * s) and math.isfinite(s) for p, s in last)
        value = sum(p * s for p, s in last) / total if finite and total != 0 else math.nan
        out.append({"ts": ts, "key": key, "value": value})
    return out


sizes = st.one_of(st.integers(0, 20).map(float), st.integers(0, 20).map(float),
                  st.sampled_from([math.nan, math.inf]))


@st.composite
def trade_streams(draw: st.DrawFn) -> list[Trade]:
    """ts-sorted trades with repeated timestamps over up to 80 keys."""
    keys = draw(st.integers(1, 80))
    rows = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, keys - 1), quarters,
                                   sizes), max_size=300))
    trades, ts = [], 1_000
    for step, key, price, size in rows:
        ts += step
        trades.append((ts, f"k{key}", price, size))
    return trades


@settings(max_examples=100, deadline=None)
@given(trades=trade_streams(), window=st.integers(1, 12),
       cuts=cut_lists, restore_after=st.integers(0, 6))
def test_vwap_matches_reference(trades: list[Trade], window: int, cuts: list[int],
                                restore_after: int) -> None:
    node = TRADES.vwap(window=window, name="v")
    got = run(node, batches(trades, cuts, TRADE_FIELDS), restore_after)
    assert_records(got, reference_vwap(trades, window))


def test_vwap_many_keys_long_stream() -> None:
    rng = np.random.default_rng(2)
    n = 6_000
    trades = [(1_000 + i // 3, f"k{k}", float(p), float(s)) for i, (k, p, s) in enumerate(
        zip(rng.integers(0, 150, n), rng.integers(1, 4_000, n) / 4, rng.integers(1, 50, n),
            strict=True))]
    logic = VwapLogic(TRADES.vwap(window=10, name="v").config())
    got = logic.process([batch_of(trades[:2_000], TRADE_FIELDS)]).to_records()
    got += logic.process([batch_of(trades[2_000:], TRADE_FIELDS)]).to_records()
    assert_records(got, reference_vwap(trades, 10))


def test_vwap_refuses_a_missing_size_field() -> None:
    prices = sd.source("p", topic="p", schema={"price": "float64"})
    with pytest.raises(SchemaMismatchError, match="'size'"):
        prices.vwap(window=3, name="v")


# -- crossover -----------------------------------------------------------------------------
Row = tuple[int, str, float]


def reference_crossover(fast: Sequence[Row], slow: Sequence[Row]) -> list[dict[str, Any]]:
    """Pair the k-th fast row of a (ts, key) with the k-th slow one; signal per key."""
    partners: dict[tuple[int, str], list[float]] = defaultdict(list)
    for ts, key, x in slow:
        partners[(ts, key)].append(x)
    used: dict[tuple[int, str], int] = defaultdict(int)
    previous: dict[str, float] = {}
    out = []
    for ts, key, x in fast:
        k = used[(ts, key)]
        if k >= len(partners[(ts, key)]):
            continue
        used[(ts, key)] += 1
        d = x - partners[(ts, key)][k]
        before = previous.get(key, math.nan)
        signal = 1.0 if before <= 0 < d else -1.0 if before >= 0 > d else 0.0
        previous[key] = d
        out.append({"ts": ts, "key": key, "value": signal})
    return out


small = st.integers(-8, 8).map(float)


@st.composite
def paired_streams(draw: st.DrawFn) -> tuple[list[Row], list[Row]]:
    """Two ts-sorted inputs sharing most (ts, key) rows, each with some rows of its own."""
    keys = draw(st.integers(1, 80))
    rows = draw(st.lists(st.tuples(st.integers(0, 2), st.integers(0, keys - 1), small, small,
                                   st.sampled_from(["both", "both", "both", "fast", "slow"])),
                         max_size=300))
    fast, slow, ts = [], [], 1_000
    for step, key, x, y, where in rows:
        ts += step
        if where != "slow":
            fast.append((ts, f"k{key}", x))
        if where != "fast":
            slow.append((ts, f"k{key}", y))
    return fast, slow


@settings(max_examples=100, deadline=None)
@given(streams=paired_streams(), cut_times=st.lists(st.integers(1_000, 1_700), max_size=5),
       restore_after=st.integers(0, 5))
def test_crossover_matches_reference(streams: tuple[list[Row], list[Row]],
                                     cut_times: list[int], restore_after: int) -> None:
    fast, slow = streams
    node = FAST.crossover(SLOW, name="x")
    bounds = [-1, *sorted(cut_times), 10**9]
    # The runtime aligns the inputs: each call covers the same event-time range in both.
    parts = [[batch_of([r for r in rows if low <= r[0] < high], VALUE) for rows in (fast, slow)]
             for low, high in itertools.pairwise(bounds)]
    got = run(node, parts, restore_after)
    assert_records(got, reference_crossover(fast, slow))


def test_crossover_many_keys_sharing_timestamps() -> None:
    rng = np.random.default_rng(4)
    ts = np.repeat(np.arange(1_000, 1_040), 200)  # 200 keys tick at every timestamp
    keys = np.tile(np.arange(200), 40)
    fast = [(int(t), f"k{k}", float(x)) for t, k, x in zip(ts, keys, rng.integers(-3, 4, 8_000),
                                                           strict=True)]
    slow = [(int(t), f"k{k}", float(x)) for t, k, x in zip(ts, keys, rng.integers(-3, 4, 8_000),
                                                           strict=True)]
    logic = CrossoverLogic(FAST.crossover(SLOW, name="x").config())
    got = logic.process([batch_of(fast, VALUE), batch_of(slow[::-1], VALUE)]).to_records()
    assert_records(got, reference_crossover(fast, slow))


def test_crossover_first_event_and_unpaired_rows() -> None:
    logic = CrossoverLogic(FAST.crossover(SLOW, name="x").config())
    fast = batch_of([(1, "a", 1.0), (2, "a", -1.0), (2, "b", 5.0), (3, "a", 2.0)], VALUE)
    slow = batch_of([(1, "a", 0.0), (3, "a", 0.0)], VALUE)
    assert logic.process([fast, slow]).to_records() == [
        {"ts": 1, "key": "a", "value": 0.0},
        {"ts": 3, "key": "a", "value": 0.0},
    ]
    assert logic.on_watermark(5) is None


def test_crossover_fields_are_checked_when_built() -> None:
    with pytest.raises(SchemaMismatchError, match="'close'"):
        FAST.crossover(SLOW, fast_field="close", name="x")
