"""asof_join forward and nearest against a plain-Python reference, in left order."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import aligned_steps

import streamdag as sd
from runtime.dataplane.worker import END_OF_TIME
from streamdag.errors import ParamError
from streamdag.operator_registry import lookup

Row = tuple[Any, ...]
Steps = list[tuple[list[Row], list[Row]]]
LEFT = sd.source("left", topic="l", key="k", schema={"x": "float64"})
RIGHT = sd.source("right", topic="r", key="k", schema={"y": "float64"})
values = st.integers(-50, 50).map(float)


def _batch(rows: list[Row], field: str) -> sd.Batch:
    return sd.Batch.from_columns(ts=np.array([r[0] for r in rows], dtype=np.int64),
                                 key=[r[1] for r in rows] or np.empty(0, "S1"),
                                 **{field: np.array([r[2] for r in rows], dtype=np.float64)})


def _reference(steps: Steps, direction: str, tolerance: int) -> list[tuple[int, str, float, float]]:
    lefts = sorted((r for left, _ in steps for r in left), key=lambda r: r[0])
    rights = [r for _, right in steps for r in right]  # in arrival order
    out = []
    for t, key, x in lefts:
        mine = [(ts, n, y) for n, (ts, k, y) in enumerate(rights) if k == key]
        ahead = min((r for r in mine if r[0] >= t), key=lambda r: (r[0], r[1]), default=None)
        behind = max((r for r in mine if r[0] <= t), key=lambda r: (r[0], r[1]), default=None)
        best = ahead
        if direction == "nearest" and behind is not None and (
                ahead is None or t - behind[0] <= ahead[0] - t):
            best = behind
        if best is None or (tolerance > 0 and abs(best[0] - t) > tolerance):
            out.append((t, key, x, math.nan))
        else:
            out.append((t, key, x, best[2]))
    return out


def _run(node: sd.Node, steps: Steps, group: int, restore_after: int | None
         ) -> list[tuple[int, str, float, float]]:
    definition = lookup("asof_join")
    logic: Any = definition.create(node.config())
    out: list[dict[str, Any]] = []
    forwarded = None
    for index in range(0, len(steps), group):
        chunk = steps[index : index + group]
        left = sorted((r for s in chunk for r in s[0]), key=lambda r: r[0])
        right = sorted((r for s in chunk for r in s[1]), key=lambda r: r[0])
        emitted = logic.process([_batch(left, "x"), _batch(right, "y")]).to_records()
        later = [r[0] for s in steps[index + group :] for rows in s for r in rows]
        watermark = min(later) if later else END_OF_TIME
        settled = logic.on_watermark(watermark)
        emitted += settled.to_records() if settled is not None else []
        # Nothing comes out behind the watermark the node sent before (it holds it back).
        assert forwarded is None or all(r["ts"] >= forwarded for r in emitted)
        held = logic.holds_from()
        forwarded = watermark if held is None else min(watermark, held)
        out += emitted
        if restore_after is not None and index // group == restore_after:
            logic = definition.create(node.config(), logic.snapshot())
    return [(r["ts"], r["key"], r["x"], r["right_y"]) for r in out]


def _same(actual: list[tuple[int, str, float, float]],
          expected: list[tuple[int, str, float, float]]) -> None:
    assert [r[:3] for r in actual] == [r[:3] for r in expected]
    for got, want in zip(actual, expected, strict=True):
        assert got[3] == want[3] or (math.isnan(got[3]) and math.isnan(want[3])), (got, want)


@settings(max_examples=60, deadline=None)
@given(aligned_steps([values], [values], max_steps=8, max_span=6),
       st.sampled_from(["forward", "nearest"]), st.sampled_from([1, 3, 20]), st.integers(1, 4),
       st.one_of(st.none(), st.integers(0, 4)))
def test_forward_and_nearest_asof_join_match_reference(steps: Steps, direction: str,
                                                       tolerance: int, group: int,
                                                       restore_after: int | None) -> None:
    node = LEFT.asof_join(RIGHT, direction=direction, tolerance=tolerance, name="j")
    expected = _reference(steps, direction, tolerance)
    _same(_run(node, steps, 1, None), expected)
    _same(_run(node, steps, group, restore_after), expected)


def test_a_look_ahead_without_tolerance_is_refused_when_built() -> None:
    with pytest.raises(ParamError, match="needs a tolerance > 0"):
        LEFT.asof_join(RIGHT, direction="forward", name="j")
