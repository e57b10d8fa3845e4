"""Interval nodes (user functions with ``interval``): first buckets, late events, batch cuts."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import aligned_steps
from test_node_cache import bucketed_reference

import streamdag as sd
from operators.errors import DataGapError
from operators.node_cache import NodeCache
from streamdag.operator import MissingPolicy, OperatorLogic
from streamdag.operator_registry import lookup

Row = tuple[int, str, float]  # ts, key, value


def _source(name: str = "ticks") -> sd.Node:
    return sd.source(name, topic=name, key="symbol", schema={"price": "float64"})


def _batch(rows: Sequence[Row]) -> sd.Batch:
    if not rows:
        return sd.Batch.empty(sd.Schema.of(price="float64"))
    ts, keys, values = zip(*rows, strict=True)
    return sd.Batch.from_columns(ts=list(ts), key=list(keys), price=list(values))


def _create(node: sd.Node) -> OperatorLogic:
    return lookup(node.operator).create(node.config())


def change(prices: np.ndarray) -> np.ndarray:
    """Newest minus oldest value of each window."""
    result: np.ndarray = prices[:, -1] - prices[:, 0]
    return result


class Recorder:
    """A user function that keeps every window it is given and returns their newest values."""

    def __init__(self) -> None:
        self.windows: list[list[list[float]]] = []

    def __call__(self, *windows: np.ndarray) -> np.ndarray:
        self.windows += [[w[e].tolist() for w in windows] for e in range(len(windows[0]))]
        return np.sum([w[:, -1] for w in windows], axis=0)


def _recording_node(recorder: Recorder, *inputs: sd.Column, period: int,
                    missing: MissingPolicy) -> sd.Node:
    function = sd.udf(period=period, interval=10, missing=missing, shareable=False)
    return function(recorder.__call__)(*inputs, name="interval")


def test_fail_does_not_fire_while_a_key_has_fewer_than_period_buckets() -> None:
    node = sd.udf(period=3, interval=10, missing="fail")(change)(_source()["price"], name="c")
    logic = _create(node)
    rows = [(1, "A", 1.0), (3, "B", 5.0), (12, "A", 2.0), (25, "A", 4.0), (31, "A", 8.0)]
    assert logic.process([_batch(rows)]).to_records() == [
        {"ts": 25, "key": "A", "value": 3.0},
        {"ts": 31, "key": "A", "value": 6.0},
    ]


def test_a_late_event_emits_nothing_and_is_counted() -> None:
    node = sd.udf(period=2, interval=10)(change)(_source()["price"], name="c")
    logic = _create(node)
    assert logic.process([_batch([(1, "A", 1.0), (12, "A", 2.0)])]).to_records() == [
        {"ts": 12, "key": "A", "value": 1.0}]
    # 5 belongs before bucket 10, and 13 before 14: their windows would hold newer data.
    later = [(5, "A", 9.0), (14, "A", 3.0), (13, "A", 7.0), (22, "A", 4.0)]
    assert logic.process([_batch(later)]).to_records() == [
        {"ts": 14, "key": "A", "value": 2.0},
        {"ts": 22, "key": "A", "value": 1.0},
    ]
    assert NodeCache.restore(logic.snapshot()).stats.tolist() == [0, 0, 2]


def test_two_inputs_emit_nothing_for_an_event_older_than_another_inputs_newest() -> None:
    recorder = Recorder()
    node = _recording_node(recorder, _source("x")["price"], _source("y")["price"], period=1,
                           missing="skip")
    logic = _create(node)
    logic.process([_batch([(1, "A", 1.0)]), _batch([(8, "A", 10.0)])])
    # x's 5 is on time for x, but y already holds 8: the event at 5 would see it.
    out = logic.process([_batch([(5, "A", 2.0), (9, "A", 3.0)]), _batch([])])
    assert out.to_records() == [{"ts": 9, "key": "A", "value": 13.0}]
    assert recorder.windows == [[[1.0], [10.0]], [[3.0], [10.0]]]


def _reference_outputs(events: list[Row], period: int, missing: MissingPolicy
                       ) -> tuple[list[dict[str, Any]], list[list[list[float]]], int]:
    """Records and windows a one-input interval node emits, and where it fails (or -1)."""
    windows, failed, _, _ = bucketed_reference(
        [(t, key.encode(), value) for t, key, value in events], period, 10, missing)
    records, seen = [], []
    for (t, key, _), window in zip(events, windows, strict=False):
        if window is None or (len(window) < period and missing != "interpolate"):
            continue
        full = [window[0]] * (period - len(window)) + window
        records.append({"ts": t, "key": key, "value": full[-1]})
        seen.append([full])
    return records, seen, failed


def _run(node: sd.Node, parts: Sequence[Sequence[sd.Batch]]
         ) -> tuple[list[dict[str, Any]], str | None]:
    """Records emitted (with those a failure carries) and the failure's message, if any."""
    logic = _create(node)
    records: list[dict[str, Any]] = []
    for inputs in parts:
        try:
            records += logic.process(list(inputs)).to_records()
        except DataGapError as gap:
            assert gap.emitted is not None
            return records + gap.emitted.to_records(), str(gap)
    return records, None


_events = st.lists(st.tuples(st.integers(-12, 30), st.sampled_from(["A", "B", "C"]),
                             st.integers(-20, 20).map(float)), max_size=50)


@settings(max_examples=150, deadline=None)
@given(steps=_events, cuts=st.lists(st.integers(0, 50), max_size=5), period=st.integers(1, 3),
       missing=st.sampled_from(["skip", "fail", "interpolate"]))
def test_one_input_gives_the_same_outputs_and_failure_however_the_input_is_cut(
    steps: list[Row], cuts: list[int], period: int, missing: MissingPolicy
) -> None:
    events, t = [], 50
    for step, key, value in steps:  # mostly forward, with late events and gaps
        t = max(0, t + step)
        events.append((t, key, value))
    bounds = [0, *sorted(min(c, len(events)) for c in cuts), len(events)]
    parts = [[_batch(events[a:b])] for a, b in itertools.pairwise(bounds)]
    whole, cut = Recorder(), Recorder()
    source = _source()
    expected = _run(_recording_node(whole, source["price"], period=period, missing=missing),
                    [[_batch(events)]])
    assert _run(_recording_node(cut, source["price"], period=period, missing=missing),
                parts) == expected
    assert cut.windows == whole.windows
    records, windows, failed = _reference_outputs(events, period, missing)
    assert expected[0] == records and whole.windows == windows
    assert (expected[1] is None) == (failed < 0)
    if failed >= 0:
        t, key, _ = events[failed]
        assert expected[1] is not None
        assert expected[1].startswith(f"node 'interval', input 0 (field 'price'): input 0, key "
                                      f"{key!r}: event at {t} follows the bucket at ")


_value = st.integers(-20, 20).map(float)


@settings(max_examples=120, deadline=None)
@given(steps=aligned_steps([_value], [_value], max_steps=5, max_span=25),
       period=st.integers(1, 2), missing=st.sampled_from(["skip", "fail", "interpolate"]))
def test_two_inputs_give_the_same_outputs_and_failure_however_time_is_cut(
    steps: list[tuple[list[Row], list[Row]]], period: int, missing: MissingPolicy
) -> None:
    whole, cut = Recorder(), Recorder()
    x, y = _source("x")["price"], _source("y")["price"]
    merged = [[_batch([row for left, _ in steps for row in left]),
               _batch([row for _, right in steps for row in right])]]
    parts = [[_batch(left), _batch(right)] for left, right in steps]
    expected = _run(_recording_node(whole, x, y, period=period, missing=missing), merged)
    assert _run(_recording_node(cut, x, y, period=period, missing=missing), parts) == expected
    assert cut.windows == whole.windows


@pytest.mark.parametrize("missing", ["skip", "interpolate"])
def test_gaps_go_on_under_skip_and_interpolate(missing: MissingPolicy) -> None:
    recorder = Recorder()
    logic = _create(_recording_node(recorder, _source()["price"], period=3, missing=missing))
    out = logic.process([_batch([(0, "A", 1.0), (10, "A", 2.0), (40, "A", 5.0)])])
    if missing == "skip":
        assert out.to_records() == [{"ts": 40, "key": "A", "value": 5.0}]
        assert recorder.windows == [[[1.0, 2.0, 5.0]]]
    else:
        assert [r["ts"] for r in out.to_records()] == [0, 10, 40]
        assert recorder.windows == [[[1.0, 1.0, 1.0]], [[1.0, 1.0, 2.0]], [[3.0, 4.0, 5.0]]]
