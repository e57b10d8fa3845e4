"""combine against a plain-Python reference: rows pair on (ts, key) by occurrence, rows without
a partner in every input are dropped, however the aligned input is split into calls."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import Event, event_streams, run

import streamdag as sd
from streamdag import spec
from streamdag.errors import GraphError, ParamError

TICKS = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})


def _inputs() -> tuple[sd.Node, sd.Node]:
    return TICKS.map("price * 2", output="value", name="doubled"), TICKS.running_count(name="n")


def reference(base: Sequence[Event], doubled: Sequence[Event],
              counted: Sequence[tuple[int, str, int]]) -> list[dict[str, Any]]:
    """Each base row whose (ts, key) occurrence has a partner in both other inputs."""
    def occurrences(rows: Sequence[tuple[Any, ...]]) -> dict[tuple[int, str, int], Any]:
        seen: dict[tuple[int, str], int] = defaultdict(int)
        found = {}
        for ts, key, value in rows:
            found[(ts, key, seen[(ts, key)])] = value
            seen[(ts, key)] += 1
        return found

    twice, counts = occurrences(doubled), occurrences(counted)
    seen: dict[tuple[int, str], int] = defaultdict(int)
    out = []
    for ts, key, price in base:
        k = seen[(ts, key)]
        seen[(ts, key)] += 1
        if (ts, key, k) in twice and (ts, key, k) in counts:
            out.append({"ts": ts, "key": key, "price": price, "doubled": twice[(ts, key, k)],
                        "n": counts[(ts, key, k)]})
    return out


def _batch(rows: Sequence[tuple[Any, ...]], field: str, dtype: type) -> sd.Batch:
    return sd.Batch.from_columns(ts=np.array([r[0] for r in rows], dtype=np.int64),
                                 key=[r[1] for r in rows],
                                 **{field: np.array([r[2] for r in rows], dtype=dtype)})


@settings(max_examples=100, deadline=None)
@given(events=event_streams(max_keys=5), data=st.data())
def test_combine_matches_reference(events: list[Event], data: st.DataObject) -> None:
    keep_doubled = data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)))
    keep_count = data.draw(st.lists(st.booleans(), min_size=len(events), max_size=len(events)))
    doubled = [(t, k, x * 2) for (t, k, x), keep in zip(events, keep_doubled, strict=True)
               if keep]
    counted = [(t, k, i) for i, ((t, k, _), keep) in enumerate(zip(events, keep_count,
                                                                    strict=True)) if keep]
    cuts = sorted(data.draw(st.lists(st.integers(1_000, 1_400), max_size=4)))
    twice, count = _inputs()
    node = sd.combine(price=TICKS["price"], doubled=twice["value"], n=count)
    parts = []
    for low, high in zip([0, *cuts], [*cuts, 10**9], strict=True):
        def part(rows: Sequence[tuple[Any, ...]], low: int = low,
                 high: int = high) -> list[tuple[Any, ...]]:
            return [r for r in rows if low <= r[0] < high]
        # The aligner hands each call every input's events of one range of event time.
        parts.append([_batch(part(events), "price", np.float64),
                      _batch(part(doubled), "value", np.float64),
                      _batch(part(counted), "value", np.int64)])
    assert run(node, parts) == reference(events, doubled, counted)


def test_combined_schema_types_and_order() -> None:
    twice, count = _inputs()
    node = sd.combine(n=count, price=TICKS["price"], doubled=twice["value"])
    assert node.output_schema == sd.Schema.of(n="int64", price="float64", doubled="float64")
    assert dict(node.params["columns"]) == {"n": "0.value", "price": "1.price",
                                            "doubled": "2.value"}


def test_column_names_and_order_are_part_of_the_id() -> None:
    twice, count = _inputs()
    base = sd.combine(n=count, twice=twice["value"])
    assert sd.combine(n=count, twice=twice["value"]).node_id == base.node_id
    assert sd.combine(twice=twice["value"], n=count).node_id != base.node_id
    assert sd.combine(n=count, doubled=twice["value"]).node_id != base.node_id


def test_combine_round_trips_through_a_spec() -> None:
    twice, count = _inputs()
    graph = sd.Graph("g", outputs=[sd.combine(n=count, twice=twice["value"], name="row")])
    loaded = spec.loads(spec.dumps(graph, "toml"), "toml")
    assert loaded.node("row").node_id == graph.node("row").node_id


def test_bad_combinations_are_refused_when_built() -> None:
    with pytest.raises(GraphError, match=r"pick one, e.g. row=both\['price'\]"):
        both = TICKS.map("price + 1", output="other", name="both")
        sd.combine(row=both)
    with pytest.raises(GraphError, match="needs at least one stream"):
        sd.combine()
    with pytest.raises(ParamError, match="reads input 3, but the node has 1 input"):
        sd.make_node("combine", [TICKS], {"columns": {"p": "3.price"}})
    with pytest.raises(ParamError, match="input 1 gives no column"):
        sd.make_node("combine", [TICKS, TICKS.running_count()], {"columns": {"p": "0.price"}})
