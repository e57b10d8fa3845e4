"""Code hashes of user functions: normalized AST plus the values the function depends on.

A user function's hash feeds its node's id, and equal ids are shared between graphs, so the
hash must change whenever what the function computes can change, and must be the same in every
process. It is computed over the function's frozen copy (``streamdag.code_freezing``), the copy
that runs, and covers:

- the function's normalized syntax tree (comments, whitespace, docstrings, decorators and the
  function's own name removed; no line numbers, file paths or memory addresses);
- the values of its default arguments, closure cells and attributes;
- the value of every global or builtin its code (nested code included) loads, and of every
  attribute it reads from the user's own modules (``config.K``);
- the installed library of every module it imports in its body.

Values are encoded by content: plain constants and containers of them, numpy arrays and scalars,
user functions recursively, numba dispatchers through their Python function, and callables and
modules of installed libraries (numpy, the standard library, ...) by their importable name and
the library's version. Anything else — an arbitrary object, a class instance, a bound method of a
stateful object, a user module used other than through its attributes — and any code that could
change what it depends on or reach values the hash cannot see (assigning globals or attributes,
``eval``, ``globals()``, ``__globals__``, ``sys``, ``inspect``, ...) makes the function
impossible to identify with certainty, and raises ``CodeHashError``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import CellType, CodeType, FunctionType, ModuleType
from typing import Any

import numpy as np

from streamdag.code_freezing import (
    CodeUse,
    FrozenDict,
    FrozenFunction,
    FrozenList,
    FrozenPartial,
    FrozenSet,
    ModuleSnapshot,
    code_use,
    describe_chain,
    describe_function,
    freeze_function,
    numba_python_function,
    snapshot_attributes,
)
from streamdag.code_libraries import (
    REFLECTIVE_MODULES,
    library_token,
    library_version,
    library_version_of_import,
)
from streamdag.errors import CodeHashError
from streamdag.identity import canonical_encode

__all__ = ["describe_function", "frozen_code_hash", "function_code_hash"]

#: Prefix of every hashed payload; bump it when the encoding changes.
_HASH_SCHEME = "streamdag-code-hash/2"
#: Stands for a function's references to itself, so renaming a recursive function is harmless.
_SELF_NAME = "<self>"
_FIX = (
    "Make it a module-level constant of a plain type (None, bool, int, float, str, bytes, a "
    "tuple/list/dict/frozenset of those, a numpy array), pass it to the node as a param, or "
    "build the node with udf(..., shareable=False) to run it unshared"
)
_UNSHARED = "or build the node with udf(..., shareable=False) to run it unshared"
_PLAIN_TYPES = (type(None), bool, int, str, bytes)
_CONTAINER_TAGS: dict[type, str] = {
    tuple: "tuple", list: "list", FrozenList: "list", dict: "dict", FrozenDict: "dict",
    set: "set", FrozenSet: "set", frozenset: "frozenset",
}
#: Builtins through which code reaches or changes values that no hash can see.
_REFLECTIVE_BUILTINS = frozenset({
    "__import__", "breakpoint", "compile", "delattr", "eval", "exec", "globals", "locals",
    "setattr", "super", "vars",
})
#: Attributes through which code reaches the values behind functions, frames and types.
_INTROSPECTION_ATTRIBUTES = frozenset({
    "__base__", "__bases__", "__builtins__", "__class__", "__closure__", "__code__",
    "__defaults__", "__delattr__", "__delitem__", "__dict__", "__func__", "__globals__",
    "__init__", "__kwdefaults__", "__mro__", "__reduce__", "__reduce_ex__", "__self__",
    "__setattr__", "__setitem__", "__setstate__", "__subclasses__", "__wrapped__",
    "ag_frame", "cell_contents", "cr_frame", "f_back", "f_builtins", "f_globals", "f_locals",
    "gi_frame", "tb_frame",
})
#: Mutable builtin types whose methods, called on the type (``list.append(x, 1)``), would
#: change a frozen copy around its read-only guard.
_MUTABLE_TYPES: tuple[type, ...] = (list, dict, set)
_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def function_code_hash(function: Callable[..., Any]) -> str:
    """sha256 of a function's normalized code and every value it depends on.

    The hash is that of the function's frozen copy (``freeze_function``), which holds the values
    the function sees now. Raises CodeHashError, naming the function and the offending value,
    when the function depends on something whose content cannot be encoded.

    >>> def scaled(values, factor=2.0):
    ...     return values * factor  # comments do not matter
    >>> def renamed(values, factor=2.0):
    ...     '''Nor do docstrings, or the function's own name.'''
    ...     return values * factor
    >>> function_code_hash(scaled) == function_code_hash(renamed)
    True
    >>> def halved(values, factor=0.5):
    ...     return values * factor
    >>> function_code_hash(scaled) == function_code_hash(halved)
    False
    """
    return frozen_code_hash(freeze_function(function))


def frozen_code_hash(frozen: FrozenFunction) -> str:
    """sha256 of a frozen function as it stands: what it runs, hashed without copying it again.

    >>> frozen = freeze_function(lambda values: values * 2)
    >>> frozen_code_hash(frozen) == function_code_hash(frozen)
    True
    """
    token = _CodeHasher().token(frozen.function, "function itself")
    return hashlib.sha256(canonical_encode([_HASH_SCHEME, token])).hexdigest()


@dataclass
class _Frame:
    """A function whose hash is being computed; ``lowest_reference`` tracks cycles."""

    function: FunctionType
    depth: int
    lowest_reference: int


class _CodeHasher:
    """One hashing run: turns values into canonically encodable tokens.

    Tokens are plain values or lists whose first element is a tag string; user containers are
    always wrapped in a tagged list, so no two different values share a token.
    """

    def __init__(self) -> None:
        self._stack: list[_Frame] = []
        # Keyed by id() within one run only; the function is kept alive so the id stays unique.
        self._finished: dict[int, tuple[FunctionType, str]] = {}
        self._open_containers: set[int] = set()

    def token(self, value: Any, where: str) -> Any:
        """The token of ``value``, found as ``where`` in the function being hashed."""
        kind = type(value)
        if kind in _PLAIN_TYPES:
            return value
        if kind is float:
            # hex keeps NaN, infinities and the sign of zero, all of which code can observe.
            return ["float", value.hex()]
        tag = _CONTAINER_TAGS.get(kind)
        if tag is not None:
            return self._container_token(value, tag, where)
        if kind is np.ndarray:
            return self._array_token(value, where)
        if isinstance(value, np.generic):
            return ["numpy-scalar", repr(value.dtype.descr), value.tobytes()]
        if kind is ModuleSnapshot:
            # The module's name is display only: what code reads is the attributes.
            return ["module-snapshot", [
                [name, self.token(item, f"{where} attribute {name!r}")]
                for name, item in sorted(snapshot_attributes(value).items())
            ]]
        if isinstance(value, ModuleType):
            return self._module_token(value, where)
        if kind is FrozenFunction:
            return self.token(value.function, where)
        library = library_token(value)
        if library is not None:
            return self._library_token(library, value, where)
        if kind is FunctionType:
            return self._function_token(value)
        python_function = numba_python_function(value)
        if python_function is not None:
            options = getattr(value, "targetoptions", {})
            return [
                "numba",
                self._function_token(python_function),
                [[k, self.token(options[k], f"{where} (numba option {k!r})")]
                 for k in sorted(options) if k != "cache"],
            ]
        if kind in (functools.partial, FrozenPartial):
            return [
                "partial",
                self.token(value.func, f"{where} (partial function)"),
                self.token(value.args, f"{where} (partial arguments)"),
                [[k, self.token(v, f"{where} (partial keyword {k!r})")]
                 for k, v in sorted(value.keywords.items())],
            ]
        raise self._refusal(where, value)

    # -- values --------------------------------------------------------------------------
    def _container_token(self, value: Any, tag: str, where: str) -> Any:
        if id(value) in self._open_containers:
            raise self._refusal(where, value, "a container that contains itself")
        self._open_containers.add(id(value))
        try:
            if tag == "dict":
                # Insertion order is kept: code iterating a dict sees it, and it is the same in
                # every process (unlike set order, which depends on the hash seed).
                return ["dict", [
                    [self.token(k, f"{where} key"), self.token(v, f"{where}[{k!r}]")]
                    for k, v in value.items()
                ]]
            if tag in ("set", "frozenset"):
                items = [self.token(item, f"{where} element") for item in value]
                return [tag, sorted(items, key=canonical_encode)]
            return [tag, [
                self.token(item, f"{where}[{index}]") for index, item in enumerate(value)
            ]]
        finally:
            self._open_containers.discard(id(value))

    def _array_token(self, value: np.ndarray[Any, Any], where: str) -> Any:
        if value.dtype.hasobject:
            raise self._refusal(where, value, "a numpy array of Python objects")
        digest = hashlib.sha256(value.tobytes()).hexdigest()
        return ["ndarray", repr(value.dtype.descr), list(value.shape), digest]

    def _module_token(self, module: ModuleType, where: str) -> Any:
        version = library_version(module.__name__)
        if version is None:
            raise self._refusal(
                where, module,
                f"the module {module.__name__!r}, which is not an installed library, so its "
                "attributes can change after hashing, and it is not a global or closure "
                "variable whose attributes (module.NAME) could be frozen. Import it at module "
                "level and read its attributes where they are used, or pass the values as params",
                fix=False,
            )
        if module.__name__.partition(".")[0] in REFLECTIVE_MODULES:
            raise self._reflective(where, f"the module {module.__name__!r}")
        return ["module", module.__name__, version]

    def _library_token(self, library: list[Any], value: Any, where: str) -> Any:
        _, module_name, qualname, _ = library
        top = module_name.partition(".")[0]
        reflective = qualname in _REFLECTIVE_BUILTINS if top == "builtins" else (
            top in REFLECTIVE_MODULES
        )
        if reflective:
            raise self._reflective(where, f"{module_name}.{qualname}")
        return library

    # -- functions -----------------------------------------------------------------------
    def _function_token(self, function: FunctionType) -> Any:
        finished = self._finished.get(id(function))
        if finished is not None:
            return ["function", finished[1]]
        for frame in self._stack:
            if frame.function is function:
                top = self._stack[-1]
                top.lowest_reference = min(top.lowest_reference, frame.depth)
                return ["cycle", top.depth - frame.depth]
        frame = _Frame(function, len(self._stack), len(self._stack))
        self._stack.append(frame)
        try:
            digest = self._hash_function(function)
        finally:
            self._stack.pop()
        if self._stack:
            parent = self._stack[-1]
            parent.lowest_reference = min(parent.lowest_reference, frame.lowest_reference)
        # A hash that points at a function still open above it depends on where it was
        # reached from, so only self-contained hashes are reused.
        if frame.lowest_reference >= frame.depth:
            self._finished[id(function)] = (function, digest)
        return ["function", digest]

    def _hash_function(self, function: FunctionType) -> str:
        code = function.__code__
        use = code_use(code)
        self._check_code(function, use)
        required = set(use.global_loads)
        # LOAD_NAME also reads class-body locals, so an unresolved one is not an error.
        optional = set(use.name_loads) - required
        node = _locate_function_node(function, required)
        closure = dict(zip(code.co_freevars, function.__closure__ or (), strict=True))
        self_names = {n for n in required | optional if function.__globals__.get(n) is function}
        self_names |= {n for n, cell in closure.items() if _cell_holds(cell, function)}

        globals_tokens = []
        for name in sorted(required | optional):
            found, value = _resolve_global(function, name)
            if not found:
                if name in optional:
                    continue
                raise CodeHashError(
                    f"cannot hash {self._chain()}: it refers to the global {name!r}, which is "
                    "not defined when the function is hashed, so its value cannot be part of "
                    f"the hash. Define {name!r} above the function (graphs are built when "
                    "their module runs), or pass the value as a param"
                )
            self._check_type_methods(name, value, use)
            label = _SELF_NAME if name in self_names else name
            globals_tokens.append([label, self.token(value, f"global {name!r}")])
        closure_tokens = []
        for name, cell in closure.items():
            try:
                content = cell.cell_contents
            except ValueError:
                raise CodeHashError(
                    f"cannot hash {self._chain()}: its closure variable {name!r} has no value "
                    "yet when the function is hashed. Assign it before building the node"
                ) from None
            label = _SELF_NAME if name in self_names else name
            closure_tokens.append([label, self.token(content, f"closure variable {name!r}")])
        attribute_tokens = [
            [name, self.token(value, f"function attribute {name!r}")]
            for name, value in sorted(function.__dict__.items())
        ]
        payload = [
            "function",
            _normalized_dump(node, self_names),
            self._defaults_token(function),
            closure_tokens,
            globals_tokens,
            attribute_tokens,
            self._imports_token(use),
        ]
        return hashlib.sha256(canonical_encode(payload)).hexdigest()

    def _check_code(self, function: FunctionType, use: CodeUse) -> None:
        """Refuse code that changes what it depends on, or reaches values no hash can see."""
        written = sorted(use.global_stores)
        if written:
            raise CodeHashError(
                f"cannot hash {self._chain()}: it assigns the global {written[0]!r}, so its "
                "results depend on state kept outside its inputs. Keep state out of user "
                "functions, or build the node with udf(..., shareable=False) to run it unshared"
            )
        assigned = sorted(use.attribute_stores)
        if assigned:
            raise CodeHashError(
                f"cannot hash {self._chain()}: it assigns or deletes the attribute "
                f"{assigned[0]!r} (x.{assigned[0]} = ...), which can change the values it "
                "depends on after they were hashed. Build new values instead of changing "
                f"attributes, {_UNSHARED}"
            )
        introspected = sorted(use.attribute_loads & _INTROSPECTION_ATTRIBUTES)
        if introspected:
            raise self._reflective("code", f"the attribute {introspected[0]!r}")

    def _check_type_methods(self, name: str, value: Any, use: CodeUse) -> None:
        kind = next((t for t in _MUTABLE_TYPES if value is t), None)
        if kind is None:
            return
        for chain in sorted(use.global_chains.get(name, ())):
            if chain and chain[0] != "fromkeys":
                raise CodeHashError(
                    f"cannot hash {self._chain()}: it calls {name}.{chain[0]} on the type "
                    f"itself, which can change a {kind.__name__} it depends on in place. Change "
                    f"only local copies (copy = {kind.__name__}(x); copy.{chain[0]}(...)), "
                    f"{_UNSHARED}"
                )

    def _imports_token(self, use: CodeUse) -> Any:
        tokens = []
        for module_name, level in sorted(use.imports):
            version = None if level else library_version_of_import(module_name)
            if version is None:
                spelled = "." * level + module_name
                raise CodeHashError(
                    f"cannot hash {self._chain()}: it imports {spelled!r} in its body, which "
                    "is not an installed library, so what it reads from it is read when it "
                    "runs, not when it is hashed. Import it at the top of the module instead "
                    f"and read its attributes where they are used (module.NAME), {_UNSHARED}"
                )
            if module_name.partition(".")[0] in REFLECTIVE_MODULES:
                raise self._reflective("code", f"an import of {module_name!r}")
            tokens.append([module_name, version])
        return tokens

    def _defaults_token(self, function: FunctionType) -> Any:
        code = function.__code__
        defaults = function.__defaults__ or ()
        positional = code.co_varnames[: code.co_argcount]
        named = positional[len(positional) - len(defaults):]
        keyword_defaults = function.__kwdefaults__ or {}
        return [
            [self.token(v, f"default of argument {n!r}") for n, v in zip(named, defaults,
                                                                          strict=True)],
            [[n, self.token(keyword_defaults[n], f"default of argument {n!r}")]
             for n in sorted(keyword_defaults)],
        ]

    # -- errors --------------------------------------------------------------------------
    def _chain(self) -> str:
        return describe_chain([frame.function for frame in self._stack])

    def _reflective(self, where: str, what: str) -> CodeHashError:
        subject = "it uses" if where == "code" else f"its {where} is"
        return CodeHashError(
            f"cannot hash {self._chain()}: {subject} {what}, through which code can reach or "
            "change values that no hash can see (other modules' globals, frames, live "
            "objects). Use only its inputs and the values it names, or build the node with "
            "udf(..., shareable=False) to run it unshared"
        )

    def _refusal(
        self, where: str, value: Any, what: str | None = None, *, fix: bool = True
    ) -> CodeHashError:
        kind = type(value)
        if what is None:
            if isinstance(value, type):
                what = f"the class {_type_name(value)}, defined outside any installed library"
            elif inspect.ismethod(value) or inspect.isbuiltin(value):
                owner = getattr(value, "__self__", None)
                what = f"a method bound to a {_type_name(type(owner))} object, which holds state"
            else:
                what = f"a {_type_name(kind)} object, whose content cannot be encoded"
        if not self._stack:
            return CodeHashError(
                f"cannot hash a {_type_name(kind)} object as a user function. Pass a plain "
                "Python function (def or lambda), or build the node with "
                "udf(..., shareable=False) to run it unshared"
            )
        if not fix:
            return CodeHashError(
                f"cannot hash {self._chain()}: its {where} is {what}; {_UNSHARED}"
            )
        return CodeHashError(
            f"cannot hash {self._chain()}: its {where} is {what}, so the hash could not tell "
            f"when it changes. {_FIX}"
        )


def _type_name(kind: type) -> str:
    """``module.qualname`` of a type, without the module for builtins."""
    module = getattr(kind, "__module__", None)
    if module in (None, "builtins"):
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


def _cell_holds(cell: CellType, value: Any) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:
        return False


def _resolve_global(function: FunctionType, name: str) -> tuple[bool, Any]:
    if name in function.__globals__:
        return True, function.__globals__[name]
    # Functions carry the builtins they were created with (Python 3.10+).
    builtins: dict[str, Any] = getattr(function, "__builtins__", {})
    if name in builtins:
        return True, builtins[name]
    return False, None


# -- syntax trees --------------------------------------------------------------------------
def _locate_function_node(function: FunctionType, global_names: Iterable[str]) -> _FunctionNode:
    """The syntax tree of ``function``, found in its file and checked against its code."""
    code = function.__code__
    try:
        lines, _ = inspect.findsource(code)
    except (OSError, TypeError):
        raise CodeHashError(
            f"cannot hash {describe_function(function)}: its source code is not available (it "
            "was probably defined by exec or in an interactive session without source). Define it "
            "in a .py module, or build the node with udf(..., shareable=False) to run it "
            "unshared"
        ) from None
    try:
        definitions = _definitions_by_first_line("".join(lines))
    except SyntaxError:
        definitions = {}
    positions = [
        (line, end_line, column, end_column)
        for line, end_line, column, end_column in code.co_positions()
        if line is not None and end_line is not None and column is not None
        and end_column is not None and (column, end_column) != (0, 0)
    ]
    fitting = [
        node for node in definitions.get(code.co_firstlineno, ())
        if _may_define(node, code) and all(_spans(node, p) for p in positions)
    ]
    # Nested candidates (a lambda inside a lambda) all contain the code: the innermost is it.
    fitting.sort(key=lambda node: _start(node), reverse=True)
    if fitting and _arguments_match(fitting[0], code) and _names_appear(fitting[0], global_names):
        return fitting[0]
    raise CodeHashError(
        f"cannot hash {describe_function(function)}: the source found for it in "
        f"{code.co_filename!r} does not match its code (was the file edited after it was "
        "imported?). Restart the process that builds the graph, or build the node with "
        "udf(..., shareable=False)"
    )


@functools.lru_cache(maxsize=32)
def _definitions_by_first_line(source: str) -> dict[int, list[_FunctionNode]]:
    """Every def and lambda of a source file, by the first line of its code object."""
    definitions: dict[int, list[_FunctionNode]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, _FunctionNode):
            definitions.setdefault(_start(node)[0], []).append(node)
    return definitions


def _may_define(node: _FunctionNode, code: CodeType) -> bool:
    if isinstance(node, ast.Lambda):
        return code.co_name == "<lambda>" and node.lineno == code.co_firstlineno
    return node.name == code.co_name and _start(node)[0] == code.co_firstlineno


def _start(node: _FunctionNode) -> tuple[int, int]:
    """Where a definition starts, decorators included (as its code's first line does)."""
    starts = [(node.lineno, node.col_offset)]
    if not isinstance(node, ast.Lambda):
        starts += [(d.lineno, d.col_offset) for d in node.decorator_list]
    return min(starts)


def _spans(node: _FunctionNode, position: tuple[int, int, int, int]) -> bool:
    line, end_line, column, end_column = position
    end = (node.end_lineno or node.lineno, node.end_col_offset or 0)
    return _start(node) <= (line, column) and (end_line, end_column) <= end


def _arguments_match(node: _FunctionNode, code: CodeType) -> bool:
    arguments = node.args
    names = [a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)]
    names += [a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None]
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & inspect.CO_VARARGS) + bool(code.co_flags & inspect.CO_VARKEYWORDS)
    return names == list(code.co_varnames[:count])


def _names_appear(node: ast.AST, global_names: Iterable[str]) -> bool:
    identifiers = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
    return all(name in identifiers for name in global_names)


def _normalized_dump(node: _FunctionNode, self_names: set[str]) -> str:
    """The tree as text, without docstrings, decorators, own name, or names for itself.

    Positions (line and column attributes) are not fields, so they never enter the text.
    """
    # The decorators' effect is the object being hashed (a numba dispatcher is hashed with its
    # options); udf() options are node params.
    skipped = () if isinstance(node, ast.Lambda) else ("name", "decorator_list")
    return _dump(node, self_names, skipped)


def _dump(value: Any, self_names: set[str], skipped: tuple[str, ...] = ()) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_dump(item, self_names) for item in value) + "]"
    if not isinstance(value, ast.AST):
        return repr(value)
    parts = []
    for name, field_value in ast.iter_fields(value):
        if name in skipped:
            continue
        if name == "body" and isinstance(value, _DOCUMENTED):
            field_value = _without_docstring(field_value)
        elif name == "id" and isinstance(value, ast.Name) and field_value in self_names:
            field_value = _SELF_NAME
        parts.append(f"{name}={_dump(field_value, self_names)}")
    return f"{type(value).__name__}({', '.join(parts)})"


_DOCUMENTED = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _without_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    first = body[0] if body else None
    if (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    ):
        # A body of only a docstring behaves as `pass`.
        return body[1:] or [ast.Pass()]
    return body
