"""asof_join against a plain-Python reference: ties, tolerance, state across batches."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import aligned_steps

import streamdag as sd
from streamdag.errors import SchemaMismatchError
from streamdag.operator import OperatorLogic
from streamdag.operator_registry import lookup

Left = tuple[int, str, float]  # ts, key, size
Right = tuple[int, str, float, int]  # ts, key, bid, level
Record = dict[str, Any]


def _sources() -> tuple[sd.Node, sd.Node]:
    trades = sd.source("trades", topic="trades", key="symbol", schema={"size": "float64"})
    quotes = sd.source("quotes", topic="quotes", key="symbol",
                       schema={"bid": "float64", "level": "int64"})
    return trades, quotes


def _logic(tolerance: int = 0, snapshot: bytes | None = None) -> OperatorLogic:
    trades, quotes = _sources()
    node = trades.asof_join(quotes, tolerance=tolerance, name="joined")
    return lookup("asof_join").create(node.config(), snapshot)


def _left(events: list[Left]) -> sd.Batch:
    if not events:
        return sd.Batch.empty(sd.Schema.of(size="float64"))
    ts, keys, sizes = zip(*events, strict=True)
    return sd.Batch.from_columns(ts=list(ts), key=list(keys), size=list(sizes))


def _right(events: list[Right]) -> sd.Batch:
    if not events:
        return sd.Batch.empty(sd.Schema.of(bid="float64", level="int64"))
    ts, keys, bids, levels = zip(*events, strict=True)
    return sd.Batch.from_columns(ts=list(ts), key=list(keys), bid=list(bids), level=list(levels))


def _plain(records: list[Record]) -> list[Record]:
    # NaN != NaN, so compare "no match" as None.
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
            for r in records]


def reference_join(steps: list[tuple[list[Left], list[Right]]],
                   tolerance: int) -> list[list[Record]]:
    """Per left event, the latest (by ts, then arrival) earlier-or-equal right event of its key."""
    seen: list[tuple[int, int, str, float, int]] = []  # ts, arrival, key, bid, level
    outputs = []
    for left, right in steps:
        arrivals = len(seen)
        current = [(ts, arrivals + i, key, bid, level)
                   for i, (ts, key, bid, level) in enumerate(right)]
        out = []
        for ts, key, size in left:
            candidates = [r for r in seen + current if r[2] == key and r[0] <= ts]
            match = max(candidates, default=None)
            if match is not None and tolerance and ts - match[0] > tolerance:
                match = None
            out.append({"ts": ts, "key": key, "size": size,
                        "right_bid": None if match is None else match[3],
                        "right_level": None if match is None else float(match[4])})
        seen += current
        outputs.append(out)
    return outputs


_ALIGNED_STEPS = aligned_steps(
    left_values=[st.integers(0, 9).map(float)],
    right_values=[st.integers(0, 99).map(float), st.integers(0, 5)], max_steps=6, max_span=12)


def _run(logic: OperatorLogic, steps: list[tuple[list[Left], list[Right]]]) -> list[list[Record]]:
    return [_plain(logic.process([_left(left), _right(right)]).to_records())
            for left, right in steps]


@settings(max_examples=150, deadline=None)
@given(steps=_ALIGNED_STEPS, tolerance=st.sampled_from([0, 1, 4]))
def test_matches_reference(steps: list[tuple[list[Left], list[Right]]], tolerance: int) -> None:
    assert _run(_logic(tolerance), steps) == reference_join(steps, tolerance)


@settings(max_examples=60, deadline=None)
@given(steps=_ALIGNED_STEPS, cut=st.integers(0, 6))
def test_snapshot_restore_carries_on_exactly(
    steps: list[tuple[list[Left], list[Right]]], cut: int
) -> None:
    first = _logic()
    before = _run(first, steps[:cut])
    resumed = _logic(snapshot=first.snapshot())
    assert before + _run(resumed, steps[cut:]) == reference_join(steps, 0)


def test_right_event_at_the_same_time_matches() -> None:
    out = _logic().process([_left([(5, "A", 1.0)]), _right([(5, "A", 10.0, 1), (6, "A", 11.0, 2)])])
    assert out.to_records() == [
        {"ts": 5, "key": "A", "size": 1.0, "right_bid": 10.0, "right_level": 1.0},
    ]


def test_tolerance_is_inclusive() -> None:
    logic = _logic(tolerance=3)
    logic.process([_left([]), _right([(10, "A", 1.0, 1)])])
    out = logic.process([_left([(13, "A", 1.0), (14, "A", 2.0)]), _right([])])
    assert _plain(out.to_records()) == [
        {"ts": 13, "key": "A", "size": 1.0, "right_bid": 1.0, "right_level": 1.0},
        {"ts": 14, "key": "A", "size": 2.0, "right_bid": None, "right_level": None},
    ]


def test_right_state_persists_across_batches() -> None:
    logic = _logic()
    first = logic.process([_left([(1, "A", 1.0)]), _right([(2, "A", 7.0, 3)])])
    second = logic.process([_left([(3, "A", 2.0), (3, "B", 3.0)]), _right([])])
    assert _plain(first.to_records()) == [
        {"ts": 1, "key": "A", "size": 1.0, "right_bid": None, "right_level": None},
    ]
    assert _plain(second.to_records()) == [
        {"ts": 3, "key": "A", "size": 2.0, "right_bid": 7.0, "right_level": 3.0},
        {"ts": 3, "key": "B", "size": 3.0, "right_bid": None, "right_level": None},
    ]


def test_empty_batches_keep_the_output_schema() -> None:
    out = _logic().process([_left([]), _right([(1, "A", 1.0, 1)])])
    assert len(out) == 0
    assert out.schema == sd.Schema.of(size="float64", right_bid="float64",
                                      right_level="float64")


def test_many_keys() -> None:
    keys = [f"k{i}" for i in range(5000)]
    logic = _logic()
    logic.process([_left([]), _right([(1, k, float(i), i) for i, k in enumerate(keys)])])
    out = logic.process([_left([(2, k, 0.0) for k in reversed(keys)]), _right([])])
    assert out.columns["right_bid"].tolist() == list(np.arange(4999, -1, -1, dtype=float))


def test_output_schema_and_prefix_collision() -> None:
    trades, quotes = _sources()
    node = trades.asof_join(quotes, prefix="q_", name="joined")
    assert node.output_schema == sd.Schema.of(size="float64", q_bid="float64",
                                              q_level="float64")
    clashing = sd.source("other", topic="other", key="symbol", schema={"right_size": "float64"})
    with pytest.raises(SchemaMismatchError, match="pass another prefix="):
        clashing.asof_join(trades, name="bad")
