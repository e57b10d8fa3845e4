"""What the operator tests share: rows as batches, runs resumed from a snapshot, exact
comparison of records, and the event streams hypothesis draws."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import strategies as st

import streamdag as sd
from streamdag.graph import Node
from streamdag.operator_registry import lookup

#: One event: (ts, key, value).
Event = tuple[int, str, float]
#: What one process() call receives: a batch, or one batch per input.
Part = sd.Batch | Sequence[sd.Batch]

quarters = st.integers(-4000, 4000).map(lambda n: n / 4)
special = st.sampled_from([math.nan, math.inf, -math.inf])
cut_lists = st.lists(st.integers(0, 300), max_size=6)


def batch_of(rows: Sequence[tuple[Any, ...]], fields: Sequence[str] = ("price",)) -> sd.Batch:
    """Rows ``(ts, key, *values)`` as one batch whose float64 value columns are ``fields``."""
    columns = {name: np.array([row[2 + index] for row in rows], dtype=np.float64)
               for index, name in enumerate(fields)}
    return sd.Batch.from_columns(ts=np.array([row[0] for row in rows], dtype=np.int64),
                                 key=[row[1] for row in rows], **columns)


def batches(rows: Sequence[tuple[Any, ...]], cuts: Sequence[int],
            fields: Sequence[str] = ("price",)) -> list[sd.Batch]:
    """The rows cut into consecutive batches at ``cuts`` (repeated cuts give empty batches)."""
    bounds = [0, *sorted(min(c, len(rows)) for c in cuts), len(rows)]
    return [batch_of(rows[a:b], fields) for a, b in itertools.pairwise(bounds)]


def run(node: Node, parts: Sequence[Part], restore_after: int | None = None
        ) -> list[dict[str, Any]]:
    """Process ``parts`` in order; after part ``restore_after``, continue from a snapshot."""
    definition = lookup(node.operator)
    logic = definition.create(node.config())
    out: list[dict[str, Any]] = []
    for index, part in enumerate(parts):
        inputs = [part] if isinstance(part, sd.Batch) else list(part)
        out += logic.process(inputs).to_records()
        if index == restore_after:
            logic = definition.create(node.config(), logic.snapshot())
    return out


def assert_records(actual: list[dict[str, Any]], expected: list[dict[str, Any]],
                   exact: bool = True) -> None:
    """Equal ts and keys; equal values (NaN equals NaN), bit for bit unless ``exact`` is off."""
    assert [(r["ts"], r["key"]) for r in actual] == [(r["ts"], r["key"]) for r in expected]
    for got, want in zip(actual, expected, strict=True):
        if math.isnan(want["value"]):
            assert math.isnan(got["value"]), (got, want)
        elif exact:
            assert got["value"] == want["value"], (got, want)
        else:
            assert got["value"] == pytest.approx(want["value"], rel=1e-9, abs=1e-9), (got, want)


@st.composite
def event_streams(draw: st.DrawFn, values: st.SearchStrategy[float] = quarters,
                  max_keys: int = 80) -> list[Event]:
    """ts-sorted events with repeated timestamps over up to ``max_keys`` keys."""
    keys = draw(st.integers(1, max_keys))
    rows = draw(st.lists(st.tuples(st.integers(0, 3), st.integers(0, keys - 1), values),
                         max_size=300))
    events, ts = [], 1_000
    for step, key, x in rows:
        ts += step
        events.append((ts, f"k{key}", x))
    return events


@st.composite
def aligned_steps(draw: st.DrawFn, left_values: Sequence[st.SearchStrategy[Any]],
                  right_values: Sequence[st.SearchStrategy[Any]], max_steps: int,
                  max_span: int) -> list[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Pairs of ts-sorted ``(ts, key, *values)`` row lists over consecutive event-time ranges.

    Each pair is what the runtime hands a two-input node in one call: both sides cover the
    same range.
    """
    steps = []
    base = 0
    for _ in range(draw(st.integers(0, max_steps))):
        span = draw(st.integers(1, max_span))
        times = st.integers(base, base + span - 1)
        keys = st.sampled_from(["A", "B", "C"])
        left, right = (sorted(draw(st.lists(st.tuples(times, keys, *values), max_size=8)),
                              key=lambda row: row[0])
                       for values in (left_values, right_values))
        steps.append((left, right))
        base += span
    return steps
