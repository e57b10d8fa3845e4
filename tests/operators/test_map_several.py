"""map with several named expressions: every computed field against plain Python, fields in
the order given, the names and expressions in the node's id, a spec round trip, refusals."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import batches, quarters, run

import streamdag as sd
from streamdag import spec
from streamdag.errors import ParamError

QUOTES = sd.source("quotes", topic="quotes", key="symbol",
                   schema={"bid": "float64", "ask": "float64"})


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(st.tuples(st.integers(0, 50), st.sampled_from("abc"), quarters, quarters),
                     max_size=60),
       cuts=st.lists(st.integers(0, 60), max_size=4))
def test_several_fields_match_plain_python(rows: list[tuple[int, str, float, float]],
                                           cuts: list[int]) -> None:
    node = QUOTES.map(mid="(bid + ask) / 2", spread="ask - bid", bid="bid * 2")
    got = run(node, batches(rows, cuts, fields=("bid", "ask")))
    expected = [{"ts": t, "key": k, "bid": b * 2, "ask": a, "mid": (b + a) / 2,
                 "spread": a - b} for t, k, b, a in rows]
    assert got == expected
    assert all(list(record) == ["ts", "key", "bid", "ask", "mid", "spread"] for record in got)


def test_schema_keeps_inputs_and_appends_in_order() -> None:
    node = QUOTES.map(spread="ask - bid", mid="(bid + ask) / 2", name="both")
    assert node.output_schema == sd.Schema.of(bid="float64", ask="float64", spread="float64",
                                              mid="float64")
    assert node.name == "both"


def test_names_order_and_expressions_are_part_of_the_id() -> None:
    base = QUOTES.map(mid="(bid + ask) / 2", spread="ask - bid")
    assert QUOTES.map(mid="((bid)+ask)/2", spread="ask-bid").node_id == base.node_id
    assert QUOTES.map(spread="ask - bid", mid="(bid + ask) / 2").node_id != base.node_id
    assert QUOTES.map(mid="(bid + ask) / 2", gap="ask - bid").node_id != base.node_id
    assert QUOTES.map(mid="(bid + ask) / 2", spread="bid - ask").node_id != base.node_id
    single = QUOTES.map("ask - bid", output="spread")
    assert single.node_id != QUOTES.map(spread="ask - bid").node_id
    assert single.output_schema == QUOTES.map(spread="ask - bid").output_schema


def test_several_fields_round_trip_a_spec() -> None:
    graph = sd.Graph("g", outputs=[QUOTES.map(mid="(bid + ask) / 2", spread="ask - bid",
                                              name="m")])
    loaded = spec.loads(spec.dumps(graph, "toml"), "toml")
    assert loaded.node("m").node_id == graph.node("m").node_id
    assert loaded.node("m").output_schema.names == ("bid", "ask", "mid", "spread")


def test_one_or_several_not_both_and_each_checked() -> None:
    with pytest.raises(ParamError, match="one of the two"):
        QUOTES.map("bid", mid="ask")
    with pytest.raises(ParamError, match=r"expression 'mid'.*'bidd'"):
        QUOTES.map(mid="(bidd + ask) / 2")
    with pytest.raises(ParamError, match="param 'expressions' output '2x' is not a valid"):
        QUOTES.apply("map", expressions={"2x": "bid * 2"})


def test_nan_follows_ieee() -> None:
    node = QUOTES.map(mid="(bid + ask) / 2")
    got = run(node, [sd.Batch.from_columns(ts=[1], key=["a"], bid=[math.nan], ask=[1.0])])
    assert math.isnan(got[0]["mid"])
