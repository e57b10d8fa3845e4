"""A small, safe expression language compiled to vectorized numpy evaluators.

Graph specs arrive as data (the gateway never accepts code), so an expression is parsed with
``ast`` and only a closed set of constructs is accepted: numbers and booleans, the names it is
given (input fields, iterate vars), arithmetic, comparisons, elementwise ``and``/``or``/``not``
and a whitelist of numpy functions. Everything else is refused when the graph is built. A valid
expression compiles once into a tree of closures over whole numpy columns, so evaluating it costs
one numpy call per operator in the expression per batch, never a Python step per record.

Typing follows Python where numpy allows it: booleans count as 0/1 in arithmetic, ``+ - *`` of
integers stay int64, while ``/``, ``//``, ``%`` and ``**`` always give float64 so that a zero
divisor or a negative exponent yields inf/NaN (IEEE) instead of an exception or a silent 0.

>>> expr = compile_expression("sqrt(x) + 1", {"x": "float64"}, context="example")
>>> expr.result_type
'float64'
>>> expr.evaluate({"x": np.array([4.0, 9.0])}, 2)
array([3., 4.])
>>> compile_expression("x.real", {"x": "float64"}, context="example")
Traceback (most recent call last):
...
streamdag.errors.ParamError: example: 'x.real' uses attribute access ('.real') at column 1; ...
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.errors import UnknownFieldError
from streamdag.errors import ParamError
from streamdag.params import Param
from streamdag.schema import FIELD_TYPES

__all__ = [
    "ALLOWED_FUNCTIONS",
    "MAX_EXPRESSION_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "CompiledExpression",
    "ExpressionParam",
    "canonical_expression",
    "compile_expression",
]

#: Longest expression text accepted; specs come from the network, so parsing stays bounded.
MAX_EXPRESSION_LENGTH = 4096
#: Deepest nesting of operators accepted; keeps compiling and evaluating far from recursion limits.
MAX_EXPRESSION_DEPTH = 100

Array = npt.NDArray[Any]
Columns = Mapping[str, Array]
_Evaluator = Callable[[Columns], Array]

_FLOAT = "float64"
_INT = "int64"
_BOOL = "bool"


@dataclass(frozen=True)
class _Function:
    """One whitelisted numpy function: how many arguments and how its result is typed."""

    apply: Callable[..., Array]
    arity: int
    #: "float": result float64; "same": the promoted numeric type of the arguments;
    #: "bool": a boolean; "where": boolean condition, then two values of one type.
    typing: str


def _clip(x: Array, low: Array, high: Array) -> Array:
    # minimum(maximum()) rather than np.clip: it propagates NaN bounds the same way for arrays
    # and scalars, and never raises when low > high.
    return np.minimum(np.maximum(x, low), high)


_FUNCTIONS: Mapping[str, _Function] = {
    "abs": _Function(np.abs, 1, "same"),
    "sqrt": _Function(np.sqrt, 1, "float"),
    "log": _Function(np.log, 1, "float"),
    "exp": _Function(np.exp, 1, "float"),
    "floor": _Function(np.floor, 1, "float"),
    "ceil": _Function(np.ceil, 1, "float"),
    "sign": _Function(np.sign, 1, "same"),
    "isnan": _Function(np.isnan, 1, "bool"),
    "minimum": _Function(np.minimum, 2, "same"),
    "maximum": _Function(np.maximum, 2, "same"),
    "clip": _Function(_clip, 3, "same"),
    "where": _Function(np.where, 3, "where"),
}

#: The functions an expression may call, by bare name.
ALLOWED_FUNCTIONS: tuple[str, ...] = tuple(sorted(_FUNCTIONS))

_ARITHMETIC: Mapping[type[ast.operator], tuple[str, Callable[[Array, Array], Array], bool]] = {
    # operator class -> (symbol, numpy function, always float64?)
    ast.Add: ("+", np.add, False),
    ast.Sub: ("-", np.subtract, False),
    ast.Mult: ("*", np.multiply, False),
    ast.Div: ("/", np.true_divide, True),
    ast.FloorDiv: ("//", np.floor_divide, True),
    ast.Mod: ("%", np.remainder, True),
    ast.Pow: ("**", np.power, True),
}

_COMPARISONS: Mapping[type[ast.cmpop], Callable[[Array, Array], Array]] = {
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
}

_DESCRIPTIONS: Mapping[type[ast.AST], str] = {
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.IfExp: "conditional expressions (use where(cond, a, b))",
    ast.NamedExpr: "assignment expressions",
    ast.List: "list literals",
    ast.Tuple: "tuple literals",
    ast.Set: "set literals",
    ast.Dict: "dict literals",
    ast.JoinedStr: "f-strings",
    ast.Starred: "starred arguments",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}

_OPERATOR_DESCRIPTIONS: Mapping[type[ast.AST], str] = {
    ast.BitAnd: "the bitwise operator '&' (use 'and')",
    ast.BitOr: "the bitwise operator '|' (use 'or')",
    ast.BitXor: "the bitwise operator '^'",
    ast.LShift: "the shift operator '<<'",
    ast.RShift: "the shift operator '>>'",
    ast.MatMult: "the matrix operator '@'",
    ast.Invert: "the operator '~' (use 'not')",
    ast.Is: "the operator 'is' (use '==')",
    ast.IsNot: "the operator 'is not' (use '!=')",
    ast.In: "the operator 'in'",
    ast.NotIn: "the operator 'not in'",
}

_ALLOWED_SUMMARY = (
    "expressions may use numbers, True/False, the names {names}, the operators + - * / // % ** "
    "and unary -, comparisons (== != < <= > >=, chained too), and/or/not on booleans, and the "
    f"functions {', '.join(ALLOWED_FUNCTIONS)}"
)


@dataclass(frozen=True)
class CompiledExpression:
    """A validated expression, compiled once into a vectorized evaluator over numpy columns."""

    text: str
    #: "float64", "int64" or "bool": the dtype of every value it produces.
    result_type: str
    #: The field or var names it reads.
    names: frozenset[str]
    _root: _Evaluator = field(repr=False, compare=False)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The numpy dtype of the result."""
        return FIELD_TYPES[self.result_type]

    def evaluate(self, columns: Columns, length: int) -> Array:
        """The expression over every row: an array of ``length`` values of ``dtype``.

        ``columns`` must hold every name in ``names`` as an array of ``length`` values.
        """
        # Division by zero, log(0) and overflow are defined per IEEE (inf/NaN); warning once per
        # batch about them would only flood the logs of a long-running node.
        with np.errstate(all="ignore"):
            result = np.asarray(self._root(columns), dtype=self.dtype)
        if result.shape != (length,):
            # An expression that reads no column is one value; every row gets it.
            return np.full(length, result, dtype=self.dtype)
        return result


def compile_expression(text: str, names: Mapping[str, str], *, context: str) -> CompiledExpression:
    """Parse, validate and compile ``text`` over ``names`` (name -> "float64"/"int64"/"bool").

    ``context`` says where the expression comes from (e.g. ``"map param 'expression'"``) and
    starts every error message. Raises ParamError for syntax errors, refused constructs and type
    errors; UnknownFieldError (a ParamError and a SchemaMismatchError) for unknown names.
    """
    if not isinstance(text, str):
        raise ParamError(f"{context}: expected an expression string, got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ParamError(
            f"{context}: the expression is {len(text)} characters long; at most "
            f"{MAX_EXPRESSION_LENGTH} are accepted; split the computation over several nodes"
        )
    source = text.strip()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        where = f", column {exc.offset}" if exc.offset else ""
        raise ParamError(
            f"{context}: {_shown(source)} is not a valid expression ({exc.msg}{where}); "
            "write a Python-style expression such as 'price * size'"
        ) from None
    except (ValueError, MemoryError, RecursionError) as exc:
        raise ParamError(f"{context}: {_shown(source)} cannot be parsed ({exc})") from None
    compiler = _Compiler(source, names, context)
    root = compiler.compile(tree.body, depth=0)
    return CompiledExpression(source, root.type_name, frozenset(compiler.used), root.evaluate)


def canonical_expression(text: str) -> str:
    """The canonical spelling of an expression: its parsed tree, written back.

    Spacing and redundant parentheses change nothing an expression computes, so they must not
    change a node's id either; the tree keeps everything that does (operators, their grouping,
    constants and their types). Text that does not parse is returned stripped, for
    ``compile_expression`` to refuse with its message.

    >>> canonical_expression("(price)*2"), canonical_expression("  price * 2 ")
    ('price * 2', 'price * 2')
    >>> canonical_expression("(a + b) * c"), canonical_expression("a + (b * c)")
    ('(a + b) * c', 'a + b * c')
    """
    source = text.strip()
    if len(source) > MAX_EXPRESSION_LENGTH:
        return source
    try:
        canonical = ast.unparse(ast.parse(source, mode="eval"))
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return source
    # Near the length limit the canonical spelling may be the longer one; keep what was given.
    return canonical if len(canonical) <= MAX_EXPRESSION_LENGTH else source


@dataclass(frozen=True)
class ExpressionParam(Param):
    """A ``str`` param holding an expression, stored in its canonical spelling.

    What is stored is what the node's id is computed from and what the node compiles and runs,
    so two spellings of one expression make one node.

    >>> ExpressionParam("expression", "str").coerce("doubled", "((price)*2)")
    'price * 2'
    """

    def coerce(self, node: str, value: Any) -> Any:
        """The canonical spelling of ``value``, or a ParamError naming node, param and value."""
        return canonical_expression(super().coerce(node, value))


class _Compiler:
    """Walks a parsed expression once, checking and typing it while building closures."""

    def __init__(self, text: str, names: Mapping[str, str], context: str) -> None:
        self.text = text
        self.names = names
        self.context = context
        self.used: set[str] = set()

    # -- errors ----------------------------------------------------------------------------
    def refuse(self, node: ast.AST, construct: str) -> ParamError:
        column = getattr(node, "col_offset", None)
        where = f" at column {column + 1}" if column is not None else ""
        allowed = _ALLOWED_SUMMARY.format(names=sorted(self.names))
        return ParamError(f"{self.context}: {_shown(self.text)} uses {construct}{where}; {allowed}")

    def wrong_type(self, node: ast.AST, what: str, got: str, hint: str) -> ParamError:
        source = ast.get_source_segment(self.text, node) or ast.dump(node)
        return ParamError(
            f"{self.context}: in {_shown(self.text)}, {what} but {source!r} is {got}; {hint}"
        )

    # -- dispatch --------------------------------------------------------------------------
    def compile(self, node: ast.AST, depth: int) -> _Compiled:
        if depth > MAX_EXPRESSION_DEPTH:
            raise ParamError(
                f"{self.context}: {_shown(self.text)} nests operators more than "
                f"{MAX_EXPRESSION_DEPTH} deep; split it over several nodes"
            )
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.BinOp):
            return self.arithmetic(node, depth)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, depth)
        if isinstance(node, ast.Compare):
            return self.comparison(node, depth)
        if isinstance(node, ast.BoolOp):
            return self.boolean(node, depth)
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.Attribute):
            raise self.refuse(node, f"attribute access ('.{node.attr}')")
        raise self.refuse(node, _DESCRIPTIONS.get(type(node), type(node).__name__))

    # -- leaves ----------------------------------------------------------------------------
    def constant(self, node: ast.Constant) -> _Compiled:
        value = node.value
        if isinstance(value, bool):
            scalar: Array = np.asarray(value, dtype=np.bool_)
            type_name = _BOOL
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                raise self.refuse(node, f"the integer {value}, which does not fit in int64")
            scalar, type_name = np.asarray(value, dtype=np.int64), _INT
        elif isinstance(value, float):
            scalar, type_name = np.asarray(value, dtype=np.float64), _FLOAT
        else:
            raise self.refuse(node, f"the constant {value!r} ({type(value).__name__})")
        return _Compiled(type_name, lambda columns: scalar, columnar=False, owned=False)

    def name(self, node: ast.Name) -> _Compiled:
        identifier = node.id
        if identifier not in self.names:
            hint = f"; {identifier}(...) is a function: call it" if identifier in _FUNCTIONS else ""
            raise UnknownFieldError(
                f"{self.context}: {_shown(self.text)} uses {identifier!r}, which is not a name "
                f"available here; available names: {sorted(self.names)}{hint}"
            )
        self.used.add(identifier)
        return _Compiled(
            self.names[identifier], lambda columns: columns[identifier], columnar=True, owned=False
        )

    # -- operators -------------------------------------------------------------------------
    def arithmetic(self, node: ast.BinOp, depth: int) -> _Compiled:
        spec = _ARITHMETIC.get(type(node.op))
        if spec is None:
            raise self.refuse(node, _OPERATOR_DESCRIPTIONS.get(type(node.op), "this operator"))
        _, function, always_float = spec
        left = self.compile(node.left, depth + 1)
        right = self.compile(node.right, depth + 1)
        if always_float:
            return _apply(function, _FLOAT, [_as_float(left), _as_float(right)])
        result_type = _promote(left.type_name, right.type_name)
        return _apply(function, result_type, [_as_number(left), _as_number(right)])

    def unary(self, node: ast.UnaryOp, depth: int) -> _Compiled:
        operand = self.compile(node.operand, depth + 1)
        if isinstance(node.op, ast.Not):
            self.require_bool(node.operand, operand.type_name, "'not' needs a boolean")
            return _apply(np.logical_not, _BOOL, [operand])
        if isinstance(node.op, ast.UAdd):
            return _as_number(operand)
        if isinstance(node.op, ast.USub):
            number = _as_number(operand)
            return _apply(np.negative, number.type_name, [number])
        raise self.refuse(node, _OPERATOR_DESCRIPTIONS.get(type(node.op), "this operator"))

    def comparison(self, node: ast.Compare, depth: int) -> _Compiled:
        functions = []
        for op in node.ops:
            function = _COMPARISONS.get(type(op))
            if function is None:
                raise self.refuse(node, _OPERATOR_DESCRIPTIONS.get(type(op), "this comparison"))
            functions.append(function)
        operands = [self.compile(n, depth + 1) for n in [node.left, *node.comparators]]
        if len(functions) == 1:
            return _apply(functions[0], _BOOL, operands)
        evaluators = [operand.evaluate for operand in operands]

        def compare_chain(columns: Columns) -> Array:
            # Like Python's chained comparison, each operand is evaluated once.
            values = [evaluate(columns) for evaluate in evaluators]
            results = [f(a, b) for f, a, b in zip(functions, values, values[1:], strict=False)]
            return functools.reduce(np.logical_and, results)

        columnar = any(operand.columnar for operand in operands)
        return _Compiled(_BOOL, compare_chain, columnar=columnar, owned=columnar)

    def boolean(self, node: ast.BoolOp, depth: int) -> _Compiled:
        word = "and" if isinstance(node.op, ast.And) else "or"
        combine = np.logical_and if word == "and" else np.logical_or
        operands = []
        for value in node.values:
            operand = self.compile(value, depth + 1)
            self.require_bool(value, operand.type_name, f"'{word}' combines booleans")
            operands.append(operand)
        return functools.reduce(lambda a, b: _apply(combine, _BOOL, [a, b]), operands)

    def call(self, node: ast.Call, depth: int) -> _Compiled:
        if not isinstance(node.func, ast.Name):
            # Refuse the callee itself first (an attribute, a lambda): the sharper message.
            self.compile(node.func, depth + 1)
            raise self.refuse(node, "a call of something other than a bare function name")
        if node.func.id not in _FUNCTIONS:
            raise self.refuse(node, f"a call of {node.func.id!r}")
        name = node.func.id
        spec = _FUNCTIONS[name]
        if node.keywords:
            raise self.refuse(node, f"keyword arguments in {name}()")
        if len(node.args) != spec.arity:
            raise self.refuse(
                node, f"{name}() with {len(node.args)} argument(s) ({name} takes {spec.arity})"
            )
        arguments = [self.compile(arg, depth + 1) for arg in node.args]
        if spec.typing == "where":
            return self.where_call(node, arguments)
        if spec.typing == "same":
            result_type = functools.reduce(_promote, [a.type_name for a in arguments], _INT)
            return _apply(spec.apply, result_type, [_as_number(a) for a in arguments])
        result_type = _FLOAT if spec.typing == "float" else _BOOL
        return _apply(spec.apply, result_type, [_as_float(a) for a in arguments])

    def where_call(self, node: ast.Call, arguments: list[_Compiled]) -> _Compiled:
        condition, a, b = arguments
        self.require_bool(node.args[0], condition.type_name, "where() needs a boolean condition")
        if a.type_name == _BOOL and b.type_name == _BOOL:
            return _apply(np.where, _BOOL, [condition, a, b])
        result_type = _promote(a.type_name, b.type_name)
        return _apply(np.where, result_type, [condition, _as_number(a), _as_number(b)])

    def require_bool(self, node: ast.AST, type_name: str, what: str) -> None:
        if type_name != _BOOL:
            raise self.wrong_type(
                node, what, type_name, "compare it explicitly, e.g. 'x != 0' or 'x > 0'"
            )


@dataclass(frozen=True)
class _Compiled:
    """One compiled sub-expression: its type, its evaluator, and what its value may be."""

    type_name: str
    evaluate: _Evaluator
    #: The value reads a column, so it is a full-length array rather than one number.
    columnar: bool
    #: The value is a fresh array that nothing else references, so a parent may overwrite it
    #: (numpy's own temporary elision, decided once at compile time): one allocation per
    #: chain of operators instead of one per operator.
    owned: bool


def _apply(
    function: Callable[..., Array], result_type: str, operands: list[_Compiled]
) -> _Compiled:
    """``function`` over the operands' values, writing into an owned operand when it can."""
    evaluators = [operand.evaluate for operand in operands]
    columnar = any(operand.columnar for operand in operands)
    reusable = [
        position
        for position, operand in enumerate(operands)
        if operand.owned and operand.type_name == result_type
    ]
    if isinstance(function, np.ufunc) and reusable:
        target = reusable[0]

        def evaluate_in_place(columns: Columns) -> Array:
            values = [evaluate(columns) for evaluate in evaluators]
            return function(*values, out=values[target])  # type: ignore[no-any-return]

        return _Compiled(result_type, evaluate_in_place, columnar=columnar, owned=columnar)
    if len(evaluators) == 1:
        (only,) = evaluators
        return _Compiled(
            result_type, lambda columns: function(only(columns)), columnar=columnar, owned=columnar
        )
    if len(evaluators) == 2:
        first, second = evaluators
        return _Compiled(
            result_type,
            lambda columns: function(first(columns), second(columns)),
            columnar=columnar,
            owned=columnar,
        )
    return _Compiled(
        result_type,
        lambda columns: function(*[evaluate(columns) for evaluate in evaluators]),
        columnar=columnar,
        owned=columnar,
    )


def _shown(text: str) -> str:
    """``text`` quoted for an error message, shortened when long."""
    limit = 120
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _promote(left: str, right: str) -> str:
    """The numeric type of arithmetic on ``left`` and ``right`` (booleans count as integers)."""
    return _FLOAT if _FLOAT in (left, right) else _INT


def _as_number(operand: _Compiled) -> _Compiled:
    """Booleans as int64: numpy adds them as logical or (True + True is True), Python as 0/1."""
    return _cast(operand, _INT) if operand.type_name == _BOOL else operand


def _as_float(operand: _Compiled) -> _Compiled:
    """The operand as float64, for operators and functions that always compute in floats."""
    return operand if operand.type_name == _FLOAT else _cast(operand, _FLOAT)


def _cast(operand: _Compiled, type_name: str) -> _Compiled:
    evaluate, dtype = operand.evaluate, FIELD_TYPES[type_name]
    # astype always copies, so the result is owned even if a column already had this dtype.
    return _Compiled(
        type_name,
        lambda columns: evaluate(columns).astype(dtype),
        columnar=operand.columnar,
        owned=operand.columnar,
    )
