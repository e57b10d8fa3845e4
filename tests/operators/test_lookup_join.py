"""lookup_join: against a plain-Python table, and in the worker, where the table's watermark
holds nothing back."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from runtime.dataplane.messages import EndOfStream, Envelope, Watermark
from runtime.dataplane.worker import NodeWorker
from streamdag.operator_registry import lookup

TRADES = sd.source("trades", topic="t", key="k", schema={"size": "float64"})
LIMITS = sd.source("limits", topic="l", key="k", schema={"max": "float64"})
rows = st.lists(st.tuples(st.integers(0, 50), st.sampled_from("ABC"),
                          st.integers(-9, 9).map(float)), max_size=12)


def _batch(events: list[tuple[int, str, float]], field: str) -> sd.Batch:
    return sd.Batch.from_columns(ts=np.array([e[0] for e in events], dtype=np.int64),
                                 key=[e[1] for e in events] or np.empty(0, "S1"),
                                 **{field: np.array([e[2] for e in events], dtype=np.float64)})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(rows, rows), max_size=6), st.one_of(st.none(), st.integers(0, 5)))
def test_lookup_join_matches_a_plain_table(calls: list[tuple[list[Any], list[Any]]],
                                           restore_after: int | None) -> None:
    node = TRADES.lookup_join(LIMITS, prefix="limit_", name="j")
    definition = lookup("lookup_join")
    logic: Any = definition.create(node.config())
    table: dict[str, float] = {}
    for index, (left, changes) in enumerate(calls):
        left = sorted(left, key=lambda e: e[0])
        got = logic.process([_batch(left, "size"), _batch(changes, "max")]).to_records()
        for _, key, value in changes:  # records replace rows in arrival order
            table[key] = value
        want = [(t, key, size, table.get(key, math.nan)) for t, key, size in left]
        assert [(r["ts"], r["key"], r["size"]) for r in got] == [w[:3] for w in want]
        for record, (*_, limit) in zip(got, want, strict=True):
            assert record["limit_max"] == limit or (
                math.isnan(record["limit_max"]) and math.isnan(limit))
        if index == restore_after:
            logic = definition.create(node.config(), logic.snapshot())


def test_a_stalled_table_never_holds_the_left_stream_back() -> None:
    worker = NodeWorker(TRADES.lookup_join(LIMITS, name="j").config())
    worker.connect("trades", 0)
    worker.connect("limits", 1)
    # The table's only records, then its watermark stalls at 2 while trades go on to 1000.
    assert worker.accept(Envelope("limits", 0, 0, _batch([(1, "A", 10.0), (2, "A", 20.0)],
                                                         "max"))) == []
    assert worker.accept(Envelope("limits", 0, 1, Watermark(2))) == []
    assert worker.accept(Envelope("trades", 0, 0, _batch([(500, "A", 1.0), (900, "B", 2.0)],
                                                         "size"))) == []
    out = worker.accept(Envelope("trades", 0, 1, Watermark(1000)))
    joined = [(r["ts"], r["key"], r["right_max"]) for r in out[0].to_records()]
    assert joined[0] == (500, "A", 20.0)
    assert joined[1][:2] == (900, "B") and math.isnan(joined[1][2])
    assert out[1] == Watermark(1000)
    worker.accept(Envelope("trades", 0, 2, EndOfStream()))
    assert worker.accept(Envelope("limits", 0, 2, EndOfStream()))[-1] == EndOfStream()
