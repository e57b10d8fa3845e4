"""running_count and rolling_count against plain-Python references: many keys, count and
time windows, min_periods, arbitrarily split batches and restored snapshots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import Event, batches, cut_lists, event_streams, run

import streamdag as sd
from streamdag.errors import ParamError

SOURCE = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})


def reference(events: Sequence[Event], window: int, time_window: int,
              min_periods: int) -> list[dict[str, Any]]:
    """Each event's count of its key's events in the window, once it reaches min_periods."""
    times: dict[str, list[int]] = defaultdict(list)
    out = []
    for ts, key, _ in events:
        times[key].append(ts)
        if time_window:
            count = sum(1 for t in times[key] if t > ts - time_window)
        else:
            count = min(len(times[key]), window) if window else len(times[key])
        if count >= min_periods:
            out.append({"ts": ts, "key": key, "value": count})
    return out


@settings(max_examples=100, deadline=None)
@given(events=event_streams(), window=st.integers(0, 12), time_window=st.integers(0, 25),
       data=st.data(), cuts=cut_lists, restore_after=st.integers(0, 6))
def test_counts_match_reference(events: list[Event], window: int, time_window: int,
                                data: st.DataObject, cuts: list[int], restore_after: int) -> None:
    if time_window:
        min_periods = data.draw(st.integers(0, 8))
        node = SOURCE.rolling_count(time_window=time_window, min_periods=min_periods)
        expected = reference(events, 0, time_window, min_periods)
    elif window:
        min_periods = data.draw(st.integers(0, window))
        node = SOURCE.rolling_count(window=window, min_periods=min_periods)
        expected = reference(events, window, 0, min_periods or window)
    else:
        min_periods = data.draw(st.integers(0, 8))
        node = SOURCE.running_count(min_periods=min_periods)
        expected = reference(events, 0, 0, min_periods)
    got = run(node, batches(events, cuts), restore_after=restore_after)
    assert got == expected
    assert all(type(r["value"]) is int for r in got)


def test_count_is_int64() -> None:
    assert SOURCE.running_count().output_schema == sd.Schema.of(value="int64")
    assert SOURCE.rolling_count(window=3).output_schema == sd.Schema.of(value="int64")


def test_rolling_count_needs_one_window() -> None:
    with pytest.raises(ParamError, match="use running_count for a count without end"):
        SOURCE.rolling_count()
    with pytest.raises(ParamError, match="min_periods=4 is above its window=2"):
        SOURCE.rolling_count(window=2, min_periods=4)
