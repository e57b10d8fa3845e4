"""User functions returning several named arrays: a dict or a tuple, one float64 field per
name, against plain Python; one and several inputs; the names in the id; bad returns refused."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import Event, batches, cut_lists, event_streams, run

import streamdag as sd
from operators.errors import UserFunctionOutputError
from streamdag.errors import ParamError

TICKS = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})


@sd.udf(period=3, outputs=("low", "high"))
def band(prices: np.ndarray) -> dict[str, np.ndarray]:
    """Lowest and highest of the last 3 prices."""
    return {"high": prices.max(axis=1), "low": prices.min(axis=1)}


@sd.udf(period=1, outputs=("total", "gap"))
def sum_and_gap(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a + b and a - b of the latest values."""
    return a[:, -1] + b[:, -1], a[:, -1] - b[:, -1]


@settings(max_examples=100, deadline=None)
@given(events=event_streams(max_keys=6), cuts=cut_lists, restore_after=st.integers(0, 6))
def test_dict_outputs_match_plain_python(events: list[Event], cuts: list[int],
                                         restore_after: int) -> None:
    seen: dict[str, list[float]] = defaultdict(list)
    expected: list[dict[str, Any]] = []
    for ts, key, x in events:
        seen[key].append(x)
        if len(seen[key]) >= 3:
            last = seen[key][-3:]
            expected.append({"ts": ts, "key": key, "low": min(last), "high": max(last)})
    got = run(band(TICKS["price"], name="band"), batches(events, cuts),
              restore_after=restore_after)
    assert got == expected


def test_tuple_outputs_over_aligned_inputs() -> None:
    doubled = TICKS.map("price * 2", output="twice", name="twice")
    node = sum_and_gap(TICKS["price"], doubled["twice"], name="both")
    assert node.output_schema == sd.Schema.of(total="float64", gap="float64")
    price = sd.Batch.from_columns(ts=[1, 2], key=["a", "a"], price=[1.0, 3.0])
    twice = sd.Batch.from_columns(ts=[1, 2], key=["a", "a"], price=[1.0, 3.0],
                                  twice=[2.0, 6.0])
    assert run(node, [[price, twice]]) == [{"ts": 1, "key": "a", "total": 3.0, "gap": -1.0},
                                          {"ts": 2, "key": "a", "total": 9.0, "gap": -3.0}]


def test_output_names_are_part_of_the_id() -> None:
    def spread(prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return prices[:, 0], prices[:, -1]

    first = sd.udf(period=2, outputs=("a", "b"))(spread)(TICKS["price"])
    assert sd.udf(period=2, outputs=("a", "b"))(spread)(TICKS["price"]).node_id == first.node_id
    assert sd.udf(period=2, outputs=("b", "a"))(spread)(TICKS["price"]).node_id != first.node_id


def test_bad_returns_and_names_are_refused() -> None:
    @sd.udf(period=1, outputs=("a", "b"), shareable=False)
    def wrong_names(prices: np.ndarray) -> dict[str, np.ndarray]:
        return {"a": prices[:, 0], "c": prices[:, 0]}

    batch = sd.Batch.from_columns(ts=[1], key=["a"], price=[1.0])
    with pytest.raises(UserFunctionOutputError, match=r"declares outputs \['a', 'b'\]"):
        run(wrong_names(TICKS["price"]), [batch])

    @sd.udf(period=1, outputs=("a", "b"), shareable=False)
    def short(prices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return prices[:, 0], prices[:0, 0]

    with pytest.raises(UserFunctionOutputError, match=r"for 'b' for 1 event\(s\)"):
        run(short(TICKS["price"]), [batch])
    with pytest.raises(ParamError, match="give one field name as output, or several"):
        sd.udf(period=1, output="x", outputs=("a", "b"), shareable=False)(short)(TICKS["price"])
