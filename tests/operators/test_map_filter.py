"""The map and filter operators: build-time checks, exact outputs, stateless contract."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from operators.map_filter import FilterDef, FilterLogic, MapDef, MapLogic
from streamdag.batch import Batch
from streamdag.errors import GraphError, ParamError, SchemaMismatchError
from streamdag.graph import Node, make_node
from streamdag.operator_registry import lookup
from streamdag.schema import Schema

SCHEMA = {"price": "float64", "size": "int64", "buy": "bool"}


def ticks(schema: dict[str, str] | None = None) -> Node:
    return sd.source("ticks", topic="ticks", key="symbol", schema=schema or SCHEMA)


def sample_batch() -> Batch:
    return Batch(
        ts=np.array([10, 20, 30, 40], dtype=np.int64),
        key=np.array([b"a", b"b", b"a", b"c"]),
        columns={
            "price": np.array([10.0, 2.5, np.nan, 4.0]),
            "size": np.array([3, 4, 9, 0], dtype=np.int64),
            "buy": np.array([True, False, True, True]),
        },
        partition=np.array([0, 1, 0, 1], dtype=np.int32),
        offset=np.array([100, 200, 101, 201], dtype=np.int64),
    )


def run_map(node: Node, batch: Batch) -> Batch:
    logic = MapDef.create(node.config(), b"")
    return logic.process([batch])


def records(batch: Batch) -> list[dict[str, Any]]:
    """Records with NaN replaced by the string 'nan' so that they compare with ==."""
    return [
        {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
        for r in batch.to_records()
    ]


def test_both_operators_are_registered_under_their_catalog_names() -> None:
    assert lookup("map") is MapDef
    assert lookup("filter") is FilterDef


# -- map -------------------------------------------------------------------------------------


def test_map_appends_a_float64_field_and_keeps_everything_else() -> None:
    node = ticks().map("price * size + where(buy, 1, -1)", output="signed")
    assert node.output_schema == Schema.of(
        price="float64", size="int64", buy="bool", signed="float64"
    )
    out = run_map(node, sample_batch())
    assert records(out) == [
        {"ts": 10, "key": "a", "price": 10.0, "size": 3, "buy": True, "signed": 31.0},
        {"ts": 20, "key": "b", "price": 2.5, "size": 4, "buy": False, "signed": 9.0},
        {"ts": 30, "key": "a", "price": "nan", "size": 9, "buy": True, "signed": "nan"},
        {"ts": 40, "key": "c", "price": 4.0, "size": 0, "buy": True, "signed": 1.0},
    ]
    assert out.schema == node.output_schema
    assert out.partition is not None and out.offset is not None
    assert out.partition.tolist() == [0, 1, 0, 1]
    assert out.offset.tolist() == [100, 200, 101, 201]


def test_map_output_defaults_to_value() -> None:
    node = ticks().map("size * 2")
    assert node.output_schema.names == ("price", "size", "buy", "value")
    assert run_map(node, sample_batch()).columns["value"].tolist() == [6.0, 8.0, 18.0, 0.0]


def test_map_replaces_a_same_named_field_in_place_as_float64() -> None:
    node = ticks().map("size // 2", output="size")
    assert node.output_schema == Schema.of(price="float64", size="float64", buy="bool")
    out = run_map(node, sample_batch())
    assert out.schema == node.output_schema
    assert out.columns["size"].dtype == np.float64
    assert out.columns["size"].tolist() == [1.0, 2.0, 4.0, 0.0]
    assert np.array_equal(out.columns["price"], sample_batch().columns["price"], equal_nan=True)


def test_map_turns_integer_and_boolean_results_into_floats() -> None:
    as_int = run_map(ticks().map("size + 1", output="n"), sample_batch()).columns["n"]
    as_bool = run_map(ticks().map("price > 3", output="high"), sample_batch()).columns["high"]
    assert as_int.dtype == as_bool.dtype == np.dtype(np.float64)
    assert as_int.tolist() == [4.0, 5.0, 10.0, 1.0]
    assert as_bool.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_map_of_a_constant_fills_every_row() -> None:
    out = run_map(ticks().map("2.5", output="k"), sample_batch())
    assert out.columns["k"].tolist() == [2.5, 2.5, 2.5, 2.5]


def test_map_divides_by_zero_into_inf_and_nan() -> None:
    out = run_map(ticks().map("price / size", output="unit"), sample_batch())
    assert records(out)[3]["unit"] == math.inf
    assert out.columns["unit"].tolist()[:2] == [10.0 / 3.0, 2.5 / 4.0]


def test_map_does_not_modify_its_input_batch() -> None:
    batch = sample_batch()
    run_map(ticks().map("-price", output="price"), batch)
    assert records(batch) == records(sample_batch())


def test_map_of_an_empty_batch_is_an_empty_batch_of_the_output_schema() -> None:
    node = ticks().map("sqrt(price) * size", output="root")
    out = run_map(node, Batch.empty(node.inputs[0].output_schema))
    assert len(out) == 0
    assert out.schema == node.output_schema


@settings(max_examples=50, deadline=None)
@given(
    prices=st.lists(st.floats(-1e6, 1e6), max_size=30),
    factor=st.floats(-100, 100),
)
def test_map_matches_a_per_row_reference(prices: list[float], factor: float) -> None:
    node = ticks({"price": "float64"}).map(f"abs(price) * ({factor!r}) - 1", output="scaled")
    batch = Batch.from_columns(
        ts=list(range(len(prices))), key=["k"] * len(prices), price=np.array(prices, dtype=float)
    )
    out = run_map(node, batch).columns["scaled"].tolist()
    assert out == [abs(p) * factor - 1 for p in prices]


# -- filter ----------------------------------------------------------------------------------


def run_filter(expression: str, batch: Batch) -> Batch:
    node = ticks().filter(expression)
    assert node.output_schema == ticks().output_schema
    return FilterDef.create(node.config(), b"").process([batch])


def test_filter_keeps_matching_events_in_order_with_lineage() -> None:
    out = run_filter("buy and price * size >= 10", sample_batch())
    assert records(out) == [
        {"ts": 10, "key": "a", "price": 10.0, "size": 3, "buy": True},
    ]
    assert out.partition is not None and out.offset is not None
    assert (out.partition.tolist(), out.offset.tolist()) == ([0], [100])


def test_filter_comparisons_with_nan_are_false() -> None:
    assert records(run_filter("price > 0", sample_batch())) == [
        {"ts": 10, "key": "a", "price": 10.0, "size": 3, "buy": True},
        {"ts": 20, "key": "b", "price": 2.5, "size": 4, "buy": False},
        {"ts": 40, "key": "c", "price": 4.0, "size": 0, "buy": True},
    ]
    assert [r["ts"] for r in records(run_filter("not price > 0", sample_batch()))] == [30]


def test_filter_that_keeps_everything_returns_the_batch_itself() -> None:
    batch = sample_batch()
    assert run_filter("True", batch) is batch
    assert len(run_filter("False", batch)) == 0


def test_filter_of_an_empty_batch() -> None:
    out = run_filter("size > 1", Batch.empty(Schema.from_mapping(SCHEMA)))
    assert len(out) == 0
    assert out.schema == Schema.from_mapping(SCHEMA)


@pytest.mark.parametrize("expression", ["price", "size * 2", "where(buy, 1, 0)"])
def test_filter_needs_a_boolean_expression(expression: str) -> None:
    with pytest.raises(ParamError) as raised:
        ticks().filter(expression)
    assert f"filter param 'expression' = {expression!r} computes" in str(raised.value)
    assert "values, but a filter needs a boolean" in str(raised.value)


# -- build-time validation, as a data-only spec would reach it -------------------------------


@pytest.mark.parametrize("operator", ["map", "filter"])
def test_unknown_fields_are_refused_when_the_node_is_built(operator: str) -> None:
    with pytest.raises(SchemaMismatchError) as raised:
        make_node(operator, [ticks()], {"expression": "volume > 0"}, name="bad")
    message = str(raised.value)
    assert message.startswith(f"node 'bad': {operator} param 'expression': 'volume > 0' uses")
    assert "'volume', which is not a name available here" in message
    assert "available names: ['buy', 'price', 'size']" in message


@pytest.mark.parametrize("operator", ["map", "filter"])
@pytest.mark.parametrize(
    "expression",
    ["__import__('os').system('echo hacked')", "price.__class__", "open('x') > 0", "price[0]"],
)
def test_code_in_a_spec_is_refused_at_build_time(operator: str, expression: str) -> None:
    with pytest.raises(ParamError, match=f"{operator} param 'expression': .* uses "):
        make_node(operator, [ticks()], {"expression": expression})


def test_map_output_must_be_a_field_name() -> None:
    with pytest.raises(ParamError, match="map param 'output' = '1st' is not a valid field name"):
        ticks().map("price", output="1st")


def test_missing_and_mistyped_params_are_refused() -> None:
    with pytest.raises(ParamError, match="needs param 'expression'"):
        make_node("map", [ticks()], {})
    with pytest.raises(ParamError, match="param 'expression' got 3"):
        make_node("filter", [ticks()], {"expression": 3})
    with pytest.raises(GraphError, match="takes 1 input"):
        make_node("map", [ticks(), ticks()], {"expression": "price"})


def test_equal_expressions_share_a_node_id_and_different_ones_do_not() -> None:
    assert ticks().map("price * 2").node_id == ticks().map("price * 2").node_id
    assert ticks().map("price * 2").node_id != ticks().map("price * 3").node_id
    assert ticks().map("price * 2").node_id != ticks().map("price * 2", output="p2").node_id
    assert ticks().filter("price > 1").node_id != ticks().map("price > 1").node_id


@pytest.mark.parametrize(
    "spelling", ["price*2", "price * 2", "(price) * (2)", "((price * 2))", "  price  *2 "]
)
def test_spellings_of_one_expression_make_one_node(spelling: str) -> None:
    canonical = ticks().map("price * 2", output="doubled")
    node = ticks().map(spelling, output="doubled")
    assert node.params["expression"] == "price * 2"
    assert node.node_id == canonical.node_id
    assert run_map(node, sample_batch()).columns["doubled"].tolist()[:2] == [20.0, 5.0]
    spec_node = make_node("map", [ticks()], {"expression": spelling, "output": "doubled"})
    assert spec_node.node_id == canonical.node_id


def test_spellings_of_one_predicate_make_one_filter() -> None:
    nodes = [ticks().filter(text) for text in
             ("buy and price*size>=10", "(buy) and ((price * size) >= 10)",
              "buy and (price * size >= 10)")]
    assert [node.params["expression"] for node in nodes] == ["buy and price * size >= 10"] * 3
    assert len({node.node_id for node in nodes}) == 1


def test_different_expressions_keep_different_ids() -> None:
    texts = ["price * 2", "2 * price", "price * 2.0", "price * 3", "price - size - 1",
             "price - (size - 1)", "-price ** 2", "(-price) ** 2", "price / size * 2",
             "price / (size * 2)"]
    nodes = [ticks().map(text) for text in texts]
    assert [node.params["expression"] for node in nodes] == texts
    assert len({node.node_id for node in nodes}) == len(texts)


# -- stateless contract ----------------------------------------------------------------------


def test_logic_is_stateless() -> None:
    map_logic = MapDef.create(ticks().map("price").config())
    filter_logic = FilterDef.create(ticks().filter("buy").config(), None)
    assert isinstance(map_logic, MapLogic)
    assert isinstance(filter_logic, FilterLogic)
    for logic in (map_logic, filter_logic):
        assert logic.snapshot() == b""
        assert logic.on_watermark(123) is None
    restored = MapDef.create(ticks().map("price").config(), map_logic.snapshot())
    assert records(restored.process([sample_batch()])) == records(
        map_logic.process([sample_batch()])
    )
