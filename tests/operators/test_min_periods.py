"""min_periods on the rolling family, zscore and vwap, against plain-Python references:
a window emits once it holds min_periods events (pandas' meaning), over fewer than its size."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import Event, assert_records, batches, cut_lists, event_streams, run
from test_rolling import INEXACT, REFERENCE, SOURCE, STATISTICS

import streamdag as sd
from streamdag.errors import ParamError


def reference(events: Sequence[Event], statistic: str, window: int, time_window: int,
              min_periods: int) -> list[dict[str, Any]]:
    """What the node must emit: the statistic of each key's window once it holds enough."""
    history: dict[str, list[tuple[int, float]]] = defaultdict(list)
    out = []
    for ts, key, x in events:
        history[key].append((ts, x))
        if window:
            values = [v for _, v in history[key][-window:]]
        else:
            values = [v for t, v in history[key] if t > ts - time_window]
        if len(values) >= min_periods:
            out.append({"ts": ts, "key": key, "value": REFERENCE[statistic](values)})
    return out


@pytest.mark.parametrize("statistic", STATISTICS)
@settings(max_examples=60, deadline=None)
@given(events=event_streams(max_keys=8), window=st.integers(1, 10), data=st.data(),
       cuts=cut_lists, restore_after=st.integers(0, 6))
def test_count_window_min_periods_matches_reference(statistic: str, events: list[Event],
                                                    window: int, data: st.DataObject,
                                                    cuts: list[int], restore_after: int) -> None:
    min_periods = data.draw(st.integers(1, window))
    node = SOURCE.apply(f"rolling_{statistic}", field="price", window=window,
                        min_periods=min_periods, name="rolled")
    expected = reference(events, statistic, window, 0, min_periods)
    got = run(node, batches(events, cuts), restore_after=restore_after)
    assert_records(got, expected, statistic not in INEXACT)


@pytest.mark.parametrize("statistic", STATISTICS)
@settings(max_examples=60, deadline=None)
@given(events=event_streams(max_keys=4), time_window=st.integers(1, 25),
       min_periods=st.integers(1, 12), cuts=cut_lists, restore_after=st.integers(0, 6))
def test_time_window_min_periods_matches_reference(statistic: str, events: list[Event],
                                                   time_window: int, min_periods: int,
                                                   cuts: list[int], restore_after: int) -> None:
    node = SOURCE.apply(f"rolling_{statistic}", field="price", time_window=time_window,
                        min_periods=min_periods, name="rolled")
    expected = reference(events, statistic, 0, time_window, min_periods)
    got = run(node, batches(events, cuts), restore_after=restore_after)
    assert_records(got, expected, statistic not in INEXACT)


def test_default_min_periods_is_pandas_default() -> None:
    events = [(1, "a", 1.0), (2, "a", 2.0), (3, "a", 4.0)]
    full = run(SOURCE.rolling_mean("price", window=2), batches(events, []))
    assert [r["value"] for r in full] == [1.5, 3.0]
    partial = run(SOURCE.rolling_mean("price", window=2, min_periods=1), batches(events, []))
    assert [r["value"] for r in partial] == [1.0, 1.5, 3.0]
    timed = run(SOURCE.rolling_max("price", time_window=2), batches(events, []))
    assert [r["value"] for r in timed] == [1.0, 2.0, 4.0]


def test_zscore_and_vwap_take_min_periods() -> None:
    events = [(1, "a", 1.0), (2, "a", 3.0), (3, "a", 5.0)]
    z = run(SOURCE.zscore("price", window=3, min_periods=2), batches(events, []))
    assert [r["ts"] for r in z] == [2, 3]
    assert [round(r["value"], 12) for r in z] == [0.707106781187, 1.0]
    trades = sd.source("trades", topic="trades", schema={"price": "float64", "size": "float64"})
    vwap = trades.vwap(window=3, min_periods=1)
    rows = [(1, "a", 10.0, 1.0), (2, "a", 20.0, 3.0)]
    got = run(vwap, batches(rows, [], fields=("price", "size")))
    assert [r["value"] for r in got] == [10.0, 17.5]


def test_min_periods_above_the_window_is_refused() -> None:
    with pytest.raises(ParamError, match="min_periods=5 is above its window=3"):
        SOURCE.rolling_sum("price", window=3, min_periods=5)
