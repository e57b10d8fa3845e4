"""interval_join against a plain-Python reference: every pair, once, in a fixed order."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import aligned_steps

import streamdag as sd
from streamdag.errors import SchemaMismatchError
from streamdag.operator_registry import lookup

Row = tuple[Any, ...]
LEFT = sd.source("left", topic="l", key="k", schema={"x": "float64"})
RIGHT = sd.source("right", topic="r", key="k", schema={"y": "int64"})
values = st.integers(-50, 50).map(float)


def _batch(rows: list[Row], field: str) -> sd.Batch:
    dtype = np.float64 if field == "x" else np.int64
    return sd.Batch.from_columns(ts=np.array([r[0] for r in rows], dtype=np.int64),
                                 key=[r[1] for r in rows] or np.empty(0, "S1"),
                                 **{field: np.array([r[2] for r in rows], dtype=dtype)})


def _reference(steps: list[tuple[list[Row], list[Row]]], lower: int,
               upper: int) -> list[dict[str, Any]]:
    # Every event in time order, a right one before a left one of the same time; each pairs
    # with the other side's earlier events of its key, oldest first.
    events = [(row[0], 0 if side == "r" else 1, n, side, row)
              for left, right in steps for side, rows in (("l", left), ("r", right))
              for n, row in enumerate(rows)]
    seen: dict[str, list[Row]] = {"l": [], "r": []}
    out = []
    for _, _, _, side, row in sorted(events, key=lambda e: e[:3]):
        for other in seen["r" if side == "l" else "l"]:
            a, b = (row, other) if side == "l" else (other, row)
            if a[1] == b[1] and a[0] - lower <= b[0] <= a[0] + upper:
                out.append({"ts": max(a[0], b[0]), "key": a[1], "x": float(a[2]),
                            "right_y": int(b[2]), "left_ts": a[0], "right_ts": b[0]})
        seen[side].append(row)
    return out


def _run(node: sd.Node, steps: list[tuple[list[Row], list[Row]]], group: int,
         restore_after: int | None) -> list[dict[str, Any]]:
    definition = lookup("interval_join")
    logic: Any = definition.create(node.config())
    out: list[dict[str, Any]] = []
    for index in range(0, len(steps), group):
        chunk = steps[index : index + group]
        left = sorted((r for s in chunk for r in s[0]), key=lambda r: r[0])
        right = sorted((r for s in chunk for r in s[1]), key=lambda r: r[0])
        out += logic.process([_batch(left, "x"), _batch(right, "y")]).to_records()
        later = [r[0] for s in steps[index + group :] for rows in s for r in rows]
        if later:
            logic.on_watermark(min(later))
        if restore_after is not None and index // group == restore_after:
            logic = definition.create(node.config(), logic.snapshot())
    return out


@settings(max_examples=60, deadline=None)
@given(aligned_steps([values], [st.integers(-9, 9)], max_steps=8, max_span=6),
       st.integers(0, 7), st.integers(0, 7), st.integers(1, 4),
       st.one_of(st.none(), st.integers(0, 4)))
def test_interval_join_matches_reference(steps: list[tuple[list[Row], list[Row]]], lower: int,
                                         upper: int, group: int,
                                         restore_after: int | None) -> None:
    node = LEFT.interval_join(RIGHT, lower=lower, upper=upper, name="j")
    expected = _reference(steps, lower, upper)
    assert _run(node, steps, 1, None) == expected
    # Releases of several steps at once, and a snapshot in between, change nothing.
    assert _run(node, steps, group, restore_after) == expected


def test_interval_join_refuses_a_field_name_it_would_repeat() -> None:
    clash = sd.source("c", topic="c", key="k", schema={"right_y": "float64"})
    with pytest.raises(SchemaMismatchError, match="'right_y' would appear twice"):
        clash.interval_join(RIGHT, lower=1)
