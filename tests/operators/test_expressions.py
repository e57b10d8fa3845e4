"""The safe expression language: what it accepts, how it computes, and what it refuses."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.expressions import (
    ALLOWED_FUNCTIONS,
    MAX_EXPRESSION_DEPTH,
    MAX_EXPRESSION_LENGTH,
    ExpressionParam,
    UnknownFieldError,
    canonical_expression,
    compile_expression,
)
from streamdag.errors import ParamError, SchemaMismatchError

NAMES = {"x": "float64", "y": "float64", "i": "int64", "j": "int64", "b": "bool"}
COLUMNS = {
    "x": np.array([1.5, -2.0, 0.0, np.nan]),
    "y": np.array([0.5, 4.0, -3.0, 1.0]),
    "i": np.array([7, -7, 0, 2], dtype=np.int64),
    "j": np.array([2, 2, 0, -3], dtype=np.int64),
    "b": np.array([True, False, True, False]),
}
NAN = math.nan
INF = math.inf


def evaluate(text: str) -> tuple[str, list[Any]]:
    expression = compile_expression(text, NAMES, context="test")
    values = expression.evaluate(COLUMNS, 4)
    assert values.dtype == expression.dtype
    return expression.result_type, values.tolist()


def same(actual: list[Any], expected: list[Any]) -> bool:
    """Exact equality where NaN equals NaN."""
    return len(actual) == len(expected) and all(
        (isinstance(a, float) and isinstance(e, float) and math.isnan(a) and math.isnan(e))
        or a == e
        for a, e in zip(actual, expected, strict=True)
    )


@pytest.mark.parametrize(
    ("text", "result_type", "expected"),
    [
        ("x + y", "float64", [2.0, 2.0, -3.0, NAN]),
        ("i + j", "int64", [9, -5, 0, -1]),
        ("i * j - 1", "int64", [13, -15, -1, -7]),
        ("x * i", "float64", [10.5, 14.0, 0.0, NAN]),
        ("i / j", "float64", [3.5, -3.5, NAN, 2 / -3]),
        ("x / 0", "float64", [INF, -INF, NAN, NAN]),
        ("i // j", "float64", [3.0, -4.0, NAN, -1.0]),
        ("i // 0", "float64", [INF, -INF, NAN, INF]),
        ("i % j", "float64", [1.0, 1.0, NAN, -1.0]),
        ("x % 1", "float64", [0.5, 0.0, 0.0, NAN]),
        ("2 ** -1", "float64", [0.5, 0.5, 0.5, 0.5]),
        ("j ** 2", "float64", [4.0, 4.0, 0.0, 9.0]),
        ("x ** 0.5", "float64", [1.5**0.5, NAN, 0.0, NAN]),
        ("-i", "int64", [-7, 7, 0, -2]),
        ("+x", "float64", [1.5, -2.0, 0.0, NAN]),
        ("-b", "int64", [-1, 0, -1, 0]),
        ("b + b", "int64", [2, 0, 2, 0]),
        ("b * 1.5", "float64", [1.5, 0.0, 1.5, 0.0]),
        ("x > 0", "bool", [True, False, False, False]),
        ("x != x", "bool", [False, False, False, True]),
        ("i == 7", "bool", [True, False, False, False]),
        ("-3 <= y < 1", "bool", [True, False, True, False]),
        ("j < i <= 7 != j", "bool", [True, False, False, True]),
        ("b and y > 0", "bool", [True, False, False, False]),
        ("b or x < 0 or isnan(x)", "bool", [True, True, True, True]),
        ("not b", "bool", [False, True, False, True]),
        ("b == True", "bool", [True, False, True, False]),
        ("abs(y)", "float64", [0.5, 4.0, 3.0, 1.0]),
        ("abs(j - 3)", "int64", [1, 1, 3, 6]),
        ("abs(b)", "int64", [1, 0, 1, 0]),
        ("sqrt(y)", "float64", [0.5**0.5, 2.0, NAN, 1.0]),
        ("sqrt(j)", "float64", [2**0.5, 2**0.5, 0.0, NAN]),
        ("log(y)", "float64", [math.log(0.5), math.log(4.0), NAN, 0.0]),
        ("log(x)", "float64", [math.log(1.5), NAN, -INF, NAN]),
        ("exp(j)", "float64", [math.exp(2), math.exp(2), 1.0, math.exp(-3)]),
        ("exp(1000)", "float64", [INF, INF, INF, INF]),
        ("floor(x)", "float64", [1.0, -2.0, 0.0, NAN]),
        ("ceil(x)", "float64", [2.0, -2.0, 0.0, NAN]),
        ("sign(x)", "float64", [1.0, -1.0, 0.0, NAN]),
        ("sign(i)", "int64", [1, -1, 0, 1]),
        ("isnan(x)", "bool", [False, False, False, True]),
        ("isnan(i)", "bool", [False, False, False, False]),
        ("minimum(x, y)", "float64", [0.5, -2.0, -3.0, NAN]),
        ("maximum(i, j)", "int64", [7, 2, 0, 2]),
        ("maximum(i, 0.5)", "float64", [7.0, 0.5, 0.5, 2.0]),
        ("clip(i, -1, 3)", "int64", [3, -1, 0, 2]),
        ("clip(x, -1, 1)", "float64", [1.0, -1.0, 0.0, NAN]),
        ("where(b, i, j)", "int64", [7, 2, 0, -3]),
        ("where(x > 0, x, y)", "float64", [1.5, 4.0, -3.0, 1.0]),
        ("where(b, b, not b)", "bool", [True, True, True, True]),
        ("where(b, True, 2)", "int64", [1, 2, 1, 2]),
        ("3", "int64", [3, 3, 3, 3]),
        ("2.5", "float64", [2.5, 2.5, 2.5, 2.5]),
        ("False", "bool", [False, False, False, False]),
        ("sqrt(16) + 1", "float64", [5.0, 5.0, 5.0, 5.0]),
        ("  x  ", "float64", [1.5, -2.0, 0.0, NAN]),
        ("((x))", "float64", [1.5, -2.0, 0.0, NAN]),
    ],
)
def test_expression_values_and_types(text: str, result_type: str, expected: list[Any]) -> None:
    got_type, values = evaluate(text)
    assert got_type == result_type
    assert same(values, expected), values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("x / 0", [INF, -INF, NAN, NAN]),
        ("log(x)", [math.log(1.5), NAN, -INF, NAN]),
        ("exp(x * 1e6)", [INF, 0.0, 1.0, NAN]),
        ("i % 0 + sqrt(-1)", [NAN, NAN, NAN, NAN]),
    ],
)
def test_ieee_edge_cases_give_inf_or_nan_without_warnings(text: str, expected: list[Any]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, values = evaluate(text)
    assert same(values, expected), values


def test_empty_columns_give_empty_results() -> None:
    empty = {name: column[:0] for name, column in COLUMNS.items()}
    for text, dtype in [("x * 2 + i", np.float64), ("i - j", np.int64), ("b or x > 1", np.bool_)]:
        values = compile_expression(text, NAMES, context="test").evaluate(empty, 0)
        assert values.shape == (0,)
        assert values.dtype == dtype
    constant = compile_expression("1.5", NAMES, context="test").evaluate(empty, 0)
    assert constant.shape == (0,)


def test_names_records_what_the_expression_reads() -> None:
    expression = compile_expression("where(b, x, 2 * x) + abs(i)", NAMES, context="test")
    assert expression.names == frozenset({"b", "x", "i"})
    assert expression.text == "where(b, x, 2 * x) + abs(i)"


@pytest.mark.parametrize(
    "text",
    [
        "-x + abs(i) * where(b, y, x)",
        "x + 1",
        "-(-x)",
        "+x",
        "sqrt(abs(x))",
        "not (not b)",
        "b and b or b",
        "where(b, x, y) * 2",
        "clip(x, y, y) - x",
    ],
)
def test_inputs_are_never_modified(text: str) -> None:
    columns = {name: column.copy() for name, column in COLUMNS.items()}
    compile_expression(text, NAMES, context="test").evaluate(columns, 4)
    for name, column in columns.items():
        np.testing.assert_array_equal(column, COLUMNS[name])


def test_a_column_whose_dtype_differs_from_the_schema_is_not_overwritten() -> None:
    # The schema says int64 but the batch carries floats: casting must still copy.
    floats = np.array([4.0, 9.0])
    values = compile_expression("sqrt(i) + 1", {"i": "int64"}, context="t").evaluate(
        {"i": floats}, 2
    )
    assert values.tolist() == [3.0, 4.0]
    assert floats.tolist() == [4.0, 9.0]


def test_allowed_functions_are_the_documented_whitelist() -> None:
    assert ALLOWED_FUNCTIONS == (
        "abs", "ceil", "clip", "exp", "floor", "isnan", "log", "maximum", "minimum", "sign",
        "sqrt", "where",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("text", "construct"),
    [
        ("x.real", "attribute access ('.real') at column 1"),
        ("().__class__.__bases__", "attribute access ('.__bases__')"),
        ("x[0]", "subscripts at column 1"),
        ("lambda: 1", "lambdas"),
        ("[v for v in x]", "comprehensions"),
        ("sum(v for v in x)", "a call of 'sum'"),
        ("__import__('os').system('true')", "attribute access ('.system')"),
        ("__import__('os')", "a call of '__import__'"),
        ("open('/etc/passwd')", "a call of 'open'"),
        ("eval('1')", "a call of 'eval'"),
        ("getattr(x, 'real')", "a call of 'getattr'"),
        ("np.sqrt(x)", "attribute access ('.sqrt')"),
        ("(lambda: 1)()", "lambdas"),
        ("(x + 1)(2)", "a call of something other than a bare function name"),
        ("'text'", "the constant 'text' (str)"),
        ("b'raw'", "the constant b'raw' (bytes)"),
        ("None", "the constant None (NoneType)"),
        ("1j", "the constant 1j (complex)"),
        ("18446744073709551616", "the integer 18446744073709551616, which does not fit in int64"),
        ("x if b else y", "conditional expressions (use where(cond, a, b))"),
        ("(z := x)", "assignment expressions"),
        ("[x, y]", "list literals"),
        ("(x, y)", "tuple literals"),
        ("{x: y}", "dict literals"),
        ("f'{x}'", "f-strings"),
        ("sqrt(*x)", "starred arguments"),
        ("b & b", "the bitwise operator '&' (use 'and')"),
        ("b | b", "the bitwise operator '|' (use 'or')"),
        ("i ^ j", "the bitwise operator '^'"),
        ("i << 1", "the shift operator '<<'"),
        ("~b", "the operator '~' (use 'not')"),
        ("x @ y", "the matrix operator '@'"),
        ("x is y", "the operator 'is' (use '==')"),
        ("x in y", "the operator 'in'"),
        ("sqrt(x, 2)", "sqrt() with 2 argument(s) (sqrt takes 1)"),
        ("where(b, x)", "where() with 2 argument(s) (where takes 3)"),
        ("sqrt(x=1)", "keyword arguments in sqrt()"),
    ],
)
def test_refused_constructs_name_the_construct_and_what_is_allowed(
    text: str, construct: str
) -> None:
    with pytest.raises(ParamError) as raised:
        compile_expression(text, NAMES, context="map param 'expression'")
    message = str(raised.value)
    assert message.startswith(f"map param 'expression': {text!r} uses {construct}")
    assert "the names ['b', 'i', 'j', 'x', 'y']" in message
    assert "functions abs, ceil, clip, exp, floor, isnan, log, maximum, minimum" in message


@pytest.mark.parametrize(
    ("text", "unknown"), [("price * 2", "price"), ("sqrt(z)", "z"), ("x + X", "X")]
)
def test_unknown_names_are_both_schema_and_param_errors(text: str, unknown: str) -> None:
    with pytest.raises(UnknownFieldError) as raised:
        compile_expression(text, NAMES, context="filter param 'expression'")
    assert isinstance(raised.value, SchemaMismatchError)
    assert isinstance(raised.value, ParamError)
    assert str(raised.value) == (
        f"filter param 'expression': {text!r} uses {unknown!r}, which is not a name available "
        "here; available names: ['b', 'i', 'j', 'x', 'y']"
    )


def test_a_bare_function_name_hints_at_calling_it() -> None:
    with pytest.raises(UnknownFieldError, match=r"sqrt\(\.\.\.\) is a function: call it"):
        compile_expression("sqrt + 1", NAMES, context="test")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x and b", "in 'x and b', 'and' combines booleans but 'x' is float64"),
        ("b or i + 1", "in 'b or i + 1', 'or' combines booleans but 'i + 1' is int64"),
        ("not x", "in 'not x', 'not' needs a boolean but 'x' is float64"),
        ("where(i, x, y)", "in 'where(i, x, y)', where() needs a boolean condition but 'i' is"),
    ],
)
def test_boolean_operators_need_booleans(text: str, message: str) -> None:
    with pytest.raises(ParamError) as raised:
        compile_expression(text, NAMES, context="test")
    assert str(raised.value).startswith(f"test: {message}")
    assert "compare it explicitly, e.g. 'x != 0' or 'x > 0'" in str(raised.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "test: '' is not a valid expression (invalid syntax)"),
        ("x +", "test: 'x +' is not a valid expression (invalid syntax)"),
        ("x = 1", "test: 'x = 1' is not a valid expression (invalid syntax"),
        ("import os", "test: 'import os' is not a valid expression (invalid syntax"),
        ("x\x00", "test: 'x\\x00' is not a valid expression"),
        ("(" * 300 + "x" + ")" * 300, "test: '((((("),
        ("-" * 4000 + "x", "test: '-----"),
        ("x" * (MAX_EXPRESSION_LENGTH + 1), "test: the expression is 4097 characters long"),
        ("+".join(["x"] * (MAX_EXPRESSION_DEPTH + 2)), "test: 'x+x+x+x"),
    ],
)
def test_unparseable_oversized_and_overdeep_expressions_are_refused(
    text: str, message: str
) -> None:
    with pytest.raises(ParamError) as raised:
        compile_expression(text, NAMES, context="test")
    assert str(raised.value).startswith(message)
    assert len(str(raised.value)) < 600


def test_depth_limit_message_and_the_deepest_accepted_expression() -> None:
    deepest = "+".join(["x"] * (MAX_EXPRESSION_DEPTH + 1))
    values = compile_expression(deepest, NAMES, context="test").evaluate(COLUMNS, 4)
    assert values[0] == 1.5 * (MAX_EXPRESSION_DEPTH + 1)
    with pytest.raises(ParamError, match=f"nests operators more than {MAX_EXPRESSION_DEPTH} deep"):
        compile_expression(deepest + "+x", NAMES, context="test")


def test_non_string_expression_is_refused() -> None:
    with pytest.raises(ParamError, match="test: expected an expression string, got int"):
        compile_expression(3, NAMES, context="test")  # type: ignore[arg-type]


# -- property tests: the vectorized evaluator against a plain-Python per-row reference ------


class Undefined(Exception):
    """The reference has no defined value here (Python raises, or IEEE and Python disagree)."""


@dataclass(frozen=True)
class Tree:
    """A generated expression: its text, its type, and a per-row Python evaluator."""

    text: str
    type_name: str
    reference: Callable[[dict[str, Any]], Any]


def _promote(*types: str) -> str:
    return "float64" if "float64" in types else "int64"


def _finite(*values: Any) -> None:
    if not all(math.isfinite(v) for v in values):
        raise Undefined


def _truediv(a: Any, b: Any) -> float:
    if b == 0:
        raise Undefined
    return float(a) / float(b)


def _floordiv(a: Any, b: Any) -> float:
    _finite(a, b)
    if b == 0:
        raise Undefined
    return float(a) // float(b)


def _mod(a: Any, b: Any) -> float:
    _finite(a, b)
    if b == 0:
        raise Undefined
    return float(a) % float(b)


def _pow(a: Any, b: Any) -> float:
    _finite(a, b)
    try:
        result: float | complex = float(a) ** float(b)
    except (ZeroDivisionError, OverflowError):
        raise Undefined from None
    # Python gives a complex number for a negative base and a fractional exponent; IEEE NaN.
    return NAN if isinstance(result, complex) else result


def _nan_or(function: Callable[..., Any]) -> Callable[..., Any]:
    def apply(*args: Any) -> Any:
        if any(isinstance(a, float) and math.isnan(a) for a in args):
            return NAN
        return function(*args)

    return apply


BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _truediv,
    "//": _floordiv,
    "%": _mod,
    "**": _pow,
}
UNARY_FUNCTIONS: dict[str, tuple[Callable[[Any], Any], bool]] = {
    # name -> (reference, result always float64?)
    "abs": (abs, False),
    "sqrt": (_nan_or(lambda v: math.sqrt(v) if v >= 0 else NAN), True),
    "floor": (_nan_or(lambda v: float(math.floor(v)) if math.isfinite(v) else v), True),
    "ceil": (_nan_or(lambda v: float(math.ceil(v)) if math.isfinite(v) else v), True),
    "sign": (_nan_or(lambda v: (v > 0) - (v < 0)), False),
}
BINARY_FUNCTIONS: dict[str, Callable[[Any, Any], Any]] = {
    "minimum": _nan_or(min),
    "maximum": _nan_or(max),
}


def _leaf_trees() -> st.SearchStrategy[Tree]:
    def name(n: str) -> Tree:
        return Tree(n, NAMES[n], lambda row: row[n])

    def constant(value: Any) -> Tree:
        return Tree(
            f"({value!r})", "int64" if isinstance(value, int) else "float64", lambda r: value
        )

    return st.one_of(
        st.sampled_from(["x", "y", "i", "j"]).map(name),
        st.integers(-5, 5).map(constant),
        st.floats(-10, 10, allow_nan=False).map(constant),
    )


def _extend(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
    def binary(op: str, a: Tree, b: Tree) -> Tree:
        always_float = op in ("/", "//", "%", "**")
        type_name = "float64" if always_float else _promote(a.type_name, b.type_name)
        function = BINARY[op]
        return Tree(
            f"({a.text} {op} {b.text})",
            type_name,
            lambda row: function(a.reference(row), b.reference(row)),
        )

    def negate(a: Tree) -> Tree:
        return Tree(f"(-{a.text})", a.type_name, lambda row: -a.reference(row))

    def unary_call(name: str, a: Tree) -> Tree:
        function, always_float = UNARY_FUNCTIONS[name]
        type_name = "float64" if always_float else a.type_name
        return Tree(f"{name}({a.text})", type_name, lambda row: function(a.reference(row)))

    def binary_call(name: str, a: Tree, b: Tree) -> Tree:
        function = BINARY_FUNCTIONS[name]
        return Tree(
            f"{name}({a.text}, {b.text})",
            _promote(a.type_name, b.type_name),
            lambda row: function(a.reference(row), b.reference(row)),
        )

    def clip(a: Tree, low: Tree, high: Tree) -> Tree:
        def reference(row: dict[str, Any]) -> Any:
            return BINARY_FUNCTIONS["minimum"](
                BINARY_FUNCTIONS["maximum"](a.reference(row), low.reference(row)),
                high.reference(row),
            )

        return Tree(
            f"clip({a.text}, {low.text}, {high.text})",
            _promote(a.type_name, low.type_name, high.type_name),
            reference,
        )

    def where(a: Tree, b: Tree, c: Tree, d: Tree) -> Tree:
        return Tree(
            f"where({a.text} < {b.text}, {c.text}, {d.text})",
            _promote(c.type_name, d.type_name),
            lambda row: (
                c.reference(row) if a.reference(row) < b.reference(row) else d.reference(row)
            ),
        )

    # A composite keeps the strategy's repr small: nested builds() would repr the whole tree.
    @st.composite
    def extended(draw: st.DrawFn) -> Tree:
        kind = draw(st.sampled_from(["binary", "negate", "unary", "call2", "clip", "where"]))
        if kind == "binary":
            return binary(draw(st.sampled_from(sorted(BINARY))), draw(children), draw(children))
        if kind == "negate":
            return negate(draw(children))
        if kind == "unary":
            return unary_call(draw(st.sampled_from(sorted(UNARY_FUNCTIONS))), draw(children))
        if kind == "call2":
            name = draw(st.sampled_from(sorted(BINARY_FUNCTIONS)))
            return binary_call(name, draw(children), draw(children))
        if kind == "clip":
            return clip(draw(children), draw(children), draw(children))
        return where(draw(children), draw(children), draw(children), draw(children))

    return extended()


TREES = st.recursive(_leaf_trees(), _extend, max_leaves=8)


@st.composite
def _columns(draw: st.DrawFn) -> dict[str, np.ndarray[Any, Any]]:
    length = draw(st.integers(0, 12))
    floats = st.one_of(st.floats(-1e3, 1e3), st.just(NAN), st.just(0.0))
    return {
        "x": np.array(draw(st.lists(floats, min_size=length, max_size=length)), dtype=float),
        "y": np.array(draw(st.lists(floats, min_size=length, max_size=length)), dtype=float),
        "i": np.array(draw(st.lists(st.integers(-50, 50), min_size=length, max_size=length)),
                      dtype=np.int64),
        "j": np.array(draw(st.lists(st.integers(-50, 50), min_size=length, max_size=length)),
                      dtype=np.int64),
        "b": np.array(draw(st.lists(st.booleans(), min_size=length, max_size=length)),
                      dtype=bool),
    }  # fmt: skip


def _rows(columns: dict[str, np.ndarray[Any, Any]]) -> list[dict[str, Any]]:
    length = len(columns["x"])
    listed = {name: column.tolist() for name, column in columns.items()}
    return [{name: values[row] for name, values in listed.items()} for row in range(length)]


@settings(max_examples=300, deadline=None)
@given(tree=TREES, columns=_columns())
def test_arithmetic_matches_a_per_row_python_reference(
    tree: Tree, columns: dict[str, np.ndarray[Any, Any]]
) -> None:
    expression = compile_expression(tree.text, NAMES, context="property")
    assert expression.result_type == tree.type_name
    before = {name: column.copy() for name, column in columns.items()}
    values = expression.evaluate(columns, len(columns["x"]))
    for name, column in columns.items():
        assert np.array_equal(column, before[name], equal_nan=name in "xy"), "input modified"
    assert values.shape == (len(columns["x"]),)
    assert values.dtype == np.dtype(tree.type_name)
    for row, actual in zip(_rows(columns), values.tolist(), strict=True):
        try:
            expected = tree.reference(row)
        except Undefined:
            continue
        if math.isnan(expected):
            assert math.isnan(actual), (tree.text, row, actual)
        else:
            assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-9), (
                tree.text, row, actual, expected,
            )  # fmt: skip


COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def _predicate_leaves() -> st.SearchStrategy[Tree]:
    operand = st.one_of(
        st.sampled_from(["x", "y", "i", "j"]).map(lambda n: Tree(n, NAMES[n], lambda r: r[n])),
        st.integers(-3, 3).map(lambda v: Tree(str(v), "int64", lambda r: v)),
    )

    def compare(op: str, a: Tree, b: Tree) -> Tree:
        function = COMPARISONS[op]
        return Tree(
            f"({a.text} {op} {b.text})",
            "bool",
            lambda row: function(a.reference(row), b.reference(row)),
        )

    return st.one_of(
        st.builds(compare, st.sampled_from(sorted(COMPARISONS)), operand, operand),
        st.just(Tree("b", "bool", lambda row: row["b"])),
        st.just(Tree("isnan(x)", "bool", lambda row: math.isnan(row["x"]))),
        st.sampled_from([True, False]).map(lambda v: Tree(str(v), "bool", lambda r: v)),
    )


def _combine_predicates(children: st.SearchStrategy[Tree]) -> st.SearchStrategy[Tree]:
    def both(a: Tree, b: Tree) -> Tree:
        return Tree(f"({a.text} and {b.text})", "bool", lambda r: a.reference(r) and b.reference(r))

    def either(a: Tree, b: Tree) -> Tree:
        return Tree(f"({a.text} or {b.text})", "bool", lambda r: a.reference(r) or b.reference(r))

    def negation(a: Tree) -> Tree:
        return Tree(f"(not {a.text})", "bool", lambda r: not a.reference(r))

    @st.composite
    def combined(draw: st.DrawFn) -> Tree:
        kind = draw(st.sampled_from(["and", "or", "not"]))
        if kind == "and":
            return both(draw(children), draw(children))
        if kind == "or":
            return either(draw(children), draw(children))
        return negation(draw(children))

    return combined()


@settings(max_examples=200, deadline=None)
@given(
    tree=st.recursive(_predicate_leaves(), _combine_predicates, max_leaves=6),
    columns=_columns(),
)
def test_predicates_match_a_per_row_python_reference(
    tree: Tree, columns: dict[str, np.ndarray[Any, Any]]
) -> None:
    expression = compile_expression(tree.text, NAMES, context="property")
    assert expression.result_type == "bool"
    values = expression.evaluate(columns, len(columns["x"]))
    expected = [bool(tree.reference(row)) for row in _rows(columns)]
    assert values.tolist() == expected, tree.text


# -- canonical spelling -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("x*2", "x * 2"),
        ("  (x) * (2) ", "x * 2"),
        ("((x + y))", "x + y"),
        ("(x + y) * 2", "(x + y) * 2"),
        ("x + (y * 2)", "x + y * 2"),
        ("(x - y) - 1", "x - y - 1"),
        ("x - (y - 1)", "x - (y - 1)"),
        ("-(x ** 2)", "-x ** 2"),
        ("(-x) ** 2", "(-x) ** 2"),
        ("x ** (y ** 2)", "x ** y ** 2"),
        ("(x ** y) ** 2", "(x ** y) ** 2"),
        ("(x < y) == b", "(x < y) == b"),
        ("x < y < 3", "x < y < 3"),
        ("not (x > 1)", "not x > 1"),
        ("not (b and x > 1)", "not (b and x > 1)"),
        ("(b or x > 1) and b", "(b or x > 1) and b"),
        ("where( b , x , y )", "where(b, x, y)"),
        ("1_000 + 2.50 + 0x10", "1000 + 2.5 + 16"),
        ("1e999", "1e309"),
    ],
)
def test_canonical_spelling_keeps_everything_that_computes(given: str, canonical: str) -> None:
    assert canonical_expression(given) == canonical
    assert canonical_expression(canonical) == canonical
    (original_type, original), (rewritten_type, rewritten) = evaluate(given), evaluate(canonical)
    assert original_type == rewritten_type
    assert same(rewritten, original)


def test_text_that_does_not_parse_is_kept_for_compile_to_refuse() -> None:
    assert canonical_expression("  x + ") == "x +"
    assert canonical_expression("x" * (MAX_EXPRESSION_LENGTH + 1)) == "x" * (
        MAX_EXPRESSION_LENGTH + 1
    )
    parameter = ExpressionParam("expression", "str")
    assert parameter.coerce("node", "(x)*2") == "x * 2"
    with pytest.raises(ParamError, match="param 'expression' got 3"):
        parameter.coerce("node", 3)
