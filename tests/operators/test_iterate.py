"""The iterate fixed-point block: convergence, recorded iterations and deltas, validation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import streamdag as sd
from operators.errors import UnknownFieldError
from operators.iterate import IterateDef, IterateLogic
from streamdag.batch import Batch
from streamdag.errors import ParamError, SchemaMismatchError
from streamdag.graph import Node, make_node
from streamdag.operator_registry import lookup
from streamdag.schema import Schema

NEWTON: dict[str, Any] = {
    "initial": {"x": "value"},
    "update": {"x": "0.5 * (x + value / x)"},
    "output": "x",
}


def numbers(schema: dict[str, str] | None = None) -> Node:
    return sd.source("numbers", topic="numbers", schema=schema or {"value": "float64"})


def block(*, upstream: Node | None = None, **params: Any) -> Node:
    return make_node("iterate", [upstream or numbers()], params, name="block")


def run(node: Node, **columns: list[Any]) -> list[dict[str, Any]]:
    length = len(next(iter(columns.values())))
    batch = Batch.from_columns(ts=list(range(1, length + 1)), key=["k"] * length, **columns)
    return IterateDef.create(node.config(), b"").process([batch]).to_records()


def test_registered_as_iterate() -> None:
    assert lookup("iterate") is IterateDef


def test_newton_square_root_converges_and_records_its_iterations() -> None:
    node = block(**NEWTON, tolerance=1e-9)
    assert node.output_schema == Schema.of(x="float64", iterations="int64", delta="float64")
    values = [4.0, 2.0, 1e6, 0.25]
    out = run(node, value=values)
    assert [(r["iterations"], r["delta"]) for r in out] == [
        (6, 2.220446049250313e-15),
        (5, 1.5949463971764999e-12),
        (15, 1.1823431123048067e-11),
        (6, 5.551115123125783e-16),
    ]
    assert [r["x"] for r in out] == [2.0, 1.414213562373095, 1000.0, 0.5]
    for record, value in zip(out, values, strict=True):
        assert abs(record["x"] - math.sqrt(value)) < 1e-9
        assert record["delta"] < 1e-9


def test_a_block_that_hits_max_iterations_reports_it() -> None:
    node = block(initial={"n": "value"}, update={"n": "n + 1"}, output="n", max_iterations=5)
    assert run(node, value=[0.0, 10.0]) == [
        {"ts": 1, "key": "k", "n": 5.0, "iterations": 5, "delta": 1.0},
        {"ts": 2, "key": "k", "n": 15.0, "iterations": 5, "delta": 1.0},
    ]


def test_each_event_stops_at_its_own_fixed_point() -> None:
    # Halving converges from 1 in few steps and from 1e6 in more; both in one batch.
    node = block(initial={"h": "value"}, update={"h": "h / 2"}, output="h", tolerance=0.5)
    assert run(node, value=[1.0, 1e6, 0.0]) == [
        {"ts": 1, "key": "k", "h": 0.25, "iterations": 2, "delta": 0.25},
        {"ts": 2, "key": "k", "h": 0.476837158203125, "iterations": 21, "delta": 0.476837158203125},
        {"ts": 3, "key": "k", "h": 0.0, "iterations": 1, "delta": 0.0},
    ]


def test_updates_are_simultaneous_jacobi_style() -> None:
    # A swap: Jacobi gives (a, b) = (old b, old a); updating a first would give (0, 0).
    params: dict[str, Any] = {"initial": {"a": "value", "b": "0"}, "update": {"a": "b", "b": "a"}}
    after_one = [
        run(block(**params, output=var, max_iterations=1), value=[3.0])[0][var]
        for var in ("a", "b")
    ]
    assert after_one == [0.0, 3.0]
    swapped_thrice = run(block(**params, output="a", max_iterations=3), value=[3.0])
    assert swapped_thrice == [{"ts": 1, "key": "k", "a": 0.0, "iterations": 3, "delta": 3.0}]


def test_coupled_vars_converge_together() -> None:
    # Fixed point of a = (b + value) / 2, b = a / 2: a = 2 * value / 3, b = value / 3.
    node = block(
        initial={"a": "0", "b": "0"},
        update={"a": "(b + value) / 2", "b": "a / 2"},
        output="a",
        tolerance=1e-12,
    )
    (record,) = run(node, value=[3.0])
    assert abs(record["a"] - 2.0) < 1e-11
    assert record["delta"] < 1e-12
    assert record["iterations"] == 42


def test_nan_is_a_fixed_point_and_becoming_nan_is_a_change() -> None:
    node = block(**NEWTON)
    out = run(node, value=[0.0, float("nan")])
    # 0 -> 0/0 = NaN changes (delta inf), then NaN -> NaN does not.
    assert [(math.isnan(r["x"]), r["iterations"], r["delta"]) for r in out] == [
        (True, 2, 0.0),
        (True, 1, 0.0),
    ]


def test_an_oscillating_nan_never_counts_as_converged() -> None:
    node = block(
        initial={"s": "value"}, update={"s": "where(isnan(s), 1, s / 0 * 0)"}, output="s",
        max_iterations=4,
    )  # fmt: skip
    (record,) = run(node, value=[1.0])
    assert (record["iterations"], record["delta"]) == (4, math.inf)


def test_results_do_not_depend_on_how_events_are_batched() -> None:
    node = block(**NEWTON)
    values = [4.0, 2.0, 1e6, 0.25, 9.0]
    together = run(node, value=values)
    apart = [run(node, value=[v])[0] for v in values]
    assert [(r["x"], r["iterations"], r["delta"]) for r in together] == [
        (r["x"], r["iterations"], r["delta"]) for r in apart
    ]


@settings(max_examples=40, deadline=None)
@given(values=st.lists(st.floats(1e-6, 1e9), min_size=1, max_size=20), cut=st.integers(0, 20))
def test_newton_property_any_batching_gives_the_same_square_roots(
    values: list[float], cut: int
) -> None:
    node = block(**NEWTON, tolerance=1e-9)
    whole = run(node, value=values)
    cut = min(cut, len(values))
    parts = (run(node, value=values[:cut]) if cut else []) + (
        run(node, value=values[cut:]) if cut < len(values) else []
    )
    strip = [(r["x"], r["iterations"], r["delta"]) for r in whole]
    assert strip == [(r["x"], r["iterations"], r["delta"]) for r in parts]
    for record, value in zip(whole, values, strict=True):
        assert math.isclose(record["x"], math.sqrt(value), rel_tol=1e-9)
        assert record["iterations"] < 100


def test_integer_fields_and_untouched_inputs() -> None:
    node = block(
        upstream=numbers({"count": "int64", "other": "float64"}),
        initial={"x": "count"},
        update={"x": "x / 2 + count / 4"},
        output="x",
    )
    batch = Batch.from_columns(ts=[1, 2], key=["a", "b"], count=[8, 0], other=[1.0, 2.0])
    out = IterateDef.create(node.config()).process([batch])
    assert out.columns["x"].dtype == np.float64
    assert out.columns["x"].tolist() == pytest.approx([4.0, 0.0], abs=1e-8)
    assert batch.columns["count"].tolist() == [8, 0]
    assert out.ts.tolist() == [1, 2] and out.key.tolist() == [b"a", b"b"]


def test_the_initial_column_is_not_modified_in_place() -> None:
    batch = Batch.from_columns(ts=[1], key=["k"], value=[16.0])
    IterateDef.create(block(**NEWTON).config()).process([batch])
    assert batch.columns["value"].tolist() == [16.0]


def test_an_empty_batch_gives_an_empty_output() -> None:
    node = block(**NEWTON)
    out = IterateDef.create(node.config()).process([Batch.empty(Schema.of(value="float64"))])
    assert len(out) == 0
    assert out.schema == node.output_schema


def test_logic_is_stateless() -> None:
    logic = IterateDef.create(block(**NEWTON).config(), None)
    assert isinstance(logic, IterateLogic)
    assert logic.snapshot() == b""
    assert logic.on_watermark(5) is None


def test_params_are_canonical_so_equal_blocks_share_a_node_id() -> None:
    first = block(initial={"a": "value", "b": "1"}, update={"b": "a", "a": "b"}, output="a")
    second = block(initial={"b": "1", "a": "value"}, update={"a": "b", "b": "a"}, output="a")
    assert first.node_id == second.node_id


# -- build-time validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"initial": {}, "update": {}},
            "iterate param 'initial' is empty; give at least one var",
        ),
        (
            {"initial": {"x": "value", "y": "1"}, "update": {"x": "x"}, "output": "x"},
            "iterate params 'initial' and 'update' must define the same vars; initial defines "
            "['x', 'y'] and update defines ['x']",
        ),
        (
            {"initial": {"x": "value"}, "update": {"x": "x"}},
            "iterate param 'output' = 'value' is not a var of the block; its vars are ['x']",
        ),
        (
            {"initial": {"value": "value"}, "update": {"value": "value"}},
            "iterate var 'value' has the name of an input field",
        ),
        (
            {"initial": {"delta": "value"}, "update": {"delta": "delta"}, "output": "delta"},
            "iterate param 'output' = 'delta' clashes with the recorded column",
        ),
        (
            {"initial": {"2x": "value"}, "update": {"2x": "value"}, "output": "2x"},
            "iterate var '2x' is not a valid name",
        ),
        (
            {"initial": {"lambda": "value"}, "update": {"lambda": "value"}, "output": "lambda"},
            "iterate var 'lambda' is not a valid name",
        ),
        ({**NEWTON, "tolerance": 0}, "iterate param 'tolerance' = 0.0; expected a float > 0"),
        ({**NEWTON, "max_iterations": 0}, "param 'max_iterations' got 0"),
        ({**NEWTON, "max_iterations": 10**6}, "param 'max_iterations' got 1000000"),
        (
            {**NEWTON, "update": {"x": "x.conjugate()"}},
            "iterate update of var 'x': 'x.conjugate()' uses attribute access ('.conjugate')",
        ),
        (
            {**NEWTON, "initial": {"x": "value > 0 and value"}},
            "iterate initial value of var 'x': in 'value > 0 and value', 'and' combines",
        ),
    ],
)
def test_malformed_blocks_are_refused_at_build_time(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ParamError) as raised:
        block(**params)
    assert message in str(raised.value)


def test_update_may_reference_only_vars_and_fields() -> None:
    params = {**NEWTON, "update": {"x": "0.5 * (x + value / y)"}}
    with pytest.raises(SchemaMismatchError) as raised:
        block(**params)
    assert str(raised.value).startswith("node 'block': iterate update of var 'x'")
    assert "available names: ['value', 'x']" in str(raised.value)
    with pytest.raises(UnknownFieldError):
        IterateDef.output_schema(
            {**params, "tolerance": 1e-9, "max_iterations": 100}, [Schema.of(value="float64")]
        )


def test_initial_values_see_only_the_input_fields() -> None:
    with pytest.raises(SchemaMismatchError) as raised:
        block(initial={"a": "value", "b": "a"}, update={"a": "b", "b": "a"}, output="a")
    assert "iterate initial value of var 'b': 'a' uses 'a'" in str(raised.value)
    assert "available names: ['value']" in str(raised.value)
