"""ema and zscore against plain-Python references: many keys, wraparound, empty and split
batches, snapshots, non-finite values."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
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
from operators.smoothing import EmaLogic  # importing registers ema and zscore
from streamdag.errors import ParamError

SOURCE = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})


def reference_ema(events: Sequence[Event], span: int) -> list[dict[str, Any]]:
    """The recurrence, event by event; non-finite inputs leave the average as it is."""
    alpha = 2.0 / (span + 1.0)
    average: dict[str, float] = {}
    out = []
    for ts, key, x in events:
        if math.isfinite(x):
            previous = average.get(key)
            average[key] = x if previous is None else previous + alpha * (x - previous)
        out.append({"ts": ts, "key": key, "value": average.get(key, math.nan)})
    return out


def reference_zscore(events: Sequence[Event], window: int) -> list[dict[str, Any]]:
    """(x - mean) / stdev over each key's last ``window`` events, x included."""
    history: dict[str, list[float]] = defaultdict(list)
    out = []
    for ts, key, x in events:
        history[key].append(x)
        values = history[key][-window:]
        if len(values) < window:
            continue
        if not all(math.isfinite(v) for v in values):
            value = math.nan
        elif len(set(values)) == 1:
            value = 0.0
        else:
            value = (x - statistics.fmean(values)) / statistics.stdev(values)
        out.append({"ts": ts, "key": key, "value": value})
    return out


with_specials = st.one_of(quarters, quarters, quarters, special)


@settings(max_examples=100, deadline=None)
@given(events=event_streams(values=with_specials), span=st.integers(1, 30), cuts=cut_lists,
       restore_after=st.integers(0, 6))
def test_ema_matches_the_recurrence(events: list[Event], span: int, cuts: list[int],
                                    restore_after: int) -> None:
    node = SOURCE.ema("price", span=span, name="e")
    got = run(node, batches(events, cuts), restore_after)
    assert_records(got, reference_ema(events, span), exact=True)


@settings(max_examples=100, deadline=None)
@given(events=event_streams(), window=st.integers(2, 12), cuts=cut_lists,
       restore_after=st.integers(0, 6))
def test_zscore_matches_reference(events: list[Event], window: int, cuts: list[int],
                                  restore_after: int) -> None:
    node = SOURCE.zscore("price", window=window, name="z")
    whole = run(node, batches(events, []))
    assert_records(whole, reference_zscore(events, window), exact=False)
    assert_records(run(node, batches(events, cuts), restore_after), whole, exact=True)


@settings(max_examples=50, deadline=None)
@given(events=event_streams(values=with_specials, max_keys=3), window=st.integers(2, 6))
def test_zscore_is_nan_while_a_non_finite_value_is_in_the_window(events: list[Event],
                                                                 window: int) -> None:
    node = SOURCE.zscore("price", window=window, name="z")
    assert_records(run(node, batches(events, [])), reference_zscore(events, window),
                   exact=False)


def test_many_keys_long_stream() -> None:
    rng = np.random.default_rng(5)
    ts = 1_000 + np.cumsum(rng.integers(0, 2, 6_000))
    keys = rng.integers(0, 150, 6_000)
    prices = rng.integers(-4_000, 4_000, 6_000) / 4
    events = [(int(t), f"k{k}", float(x)) for t, k, x in zip(ts, keys, prices, strict=True)]
    parts = batches(events, [1_000, 1_000, 2_500, 5_999])
    assert_records(run(SOURCE.ema("price", span=9, name="e"), parts, 2),
                   reference_ema(events, 9))
    assert_records(run(SOURCE.zscore("price", window=16, name="z"), parts, 2),
                   reference_zscore(events, 16), exact=False)


def test_zscore_of_a_constant_window_is_zero() -> None:
    events = [(i, "a", x) for i, x in enumerate([0.1, 0.7, 0.1, 0.1, 0.1])]
    got = run(SOURCE.zscore("price", window=3, name="z"), batches(events, []))
    assert [r["value"] for r in got][-1] == 0.0


def test_zscore_window_must_be_at_least_two() -> None:
    with pytest.raises(ParamError, match="'window'"):
        SOURCE.zscore("price", window=1, name="z")


def test_ema_needs_a_span() -> None:
    with pytest.raises(ParamError, match="'span'"):
        SOURCE.ema("price", name="e")


def test_ema_update_on_premapped_slots() -> None:
    logic = EmaLogic(SOURCE.ema("price", span=1, name="e").config())
    slots = logic.slots(sd.batch.encode_keys(["a", "b", "a"]))
    assert logic.update(slots, np.array([1.0, 2.0, 3.0])).tolist() == [1.0, 2.0, 3.0]
    assert logic.on_watermark(0) is None
