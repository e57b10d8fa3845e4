"""Code hashes of user functions: normalized AST plus the values the function depends on.

A user function's hash feeds its node's id, and equal ids are shared between graphs, so the
hash must change whenever what the function computes can change, and must be the same in every
process. It therefore covers:

- the function's normalized syntax tree (comments, whitespace, docstrings, decorators and the
  function's own name removed; no line numbers, file paths or memory addresses);
- the values of its default arguments and closure cells;
- the value of every module-level global or builtin its code (nested code included) loads.

Values are encoded by content: plain constants and containers of them, numpy arrays and scalars,
modules by name, user functions recursively, numba dispatchers through their Python function,
and callables of installed libraries (numpy, the standard library, ...) by their importable name
and the library's version. Anything else — an arbitrary object, a class instance, a bound method
of a stateful object, a global the function assigns, a function without source — makes the
function impossible to identify with certainty, and raises ``CodeHashError``.
"""

from __future__ import annotations

import ast
import dis
import functools
import hashlib
import importlib.metadata
import inspect
import os
import platform
import site
import sys
import sysconfig
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import CellType, CodeType, FunctionType, ModuleType
from typing import Any

import numpy as np

from streamdag.errors import CodeHashError
from streamdag.identity import canonical_encode

__all__ = ["describe_function", "function_code_hash"]

#: Prefix of every hashed payload; bump it when the encoding changes.
_HASH_SCHEME = "streamdag-code-hash/1"
#: Stands for a function's references to itself, so renaming a recursive function is harmless.
_SELF_NAME = "<self>"
_FIX = (
    "Make it a module-level constant of a plain type (None, bool, int, float, str, bytes, a "
    "tuple/list/dict/frozenset of those, a numpy array), pass it to the node as a param, or "
    "build the node with udf(..., shareable=False) to run it unshared"
)
_PLAIN_TYPES = (type(None), bool, int, str, bytes)
_GLOBAL_ACCESS = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "DELETE_GLOBAL"})
_FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda


def function_code_hash(function: Callable[..., Any]) -> str:
    """sha256 of a function's normalized code and every value it depends on.

    Raises CodeHashError, naming the function and the offending value, when the function
    depends on something whose content cannot be encoded.

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
    token = _CodeHasher().token(function, "function itself")
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
        if kind in (tuple, list, dict, set, frozenset):
            return self._container_token(value, where)
        if kind is np.ndarray:
            return self._array_token(value, where)
        if isinstance(value, np.generic):
            return ["numpy-scalar", repr(value.dtype.descr), value.tobytes()]
        if isinstance(value, ModuleType):
            return _module_token(value)
        library = _library_token(value)
        if library is not None:
            return library
        if kind is FunctionType:
            return self._function_token(value)
        python_function = _numba_python_function(value)
        if python_function is not None:
            options = getattr(value, "targetoptions", {})
            return [
                "numba",
                self._function_token(python_function),
                [[k, self.token(options[k], f"{where} (numba option {k!r})")]
                 for k in sorted(options) if k != "cache"],
            ]
        if kind is functools.partial:
            return [
                "partial",
                self.token(value.func, f"{where} (partial function)"),
                self.token(value.args, f"{where} (partial arguments)"),
                [[k, self.token(v, f"{where} (partial keyword {k!r})")]
                 for k, v in sorted(value.keywords.items())],
            ]
        raise self._refusal(where, value)

    # -- values --------------------------------------------------------------------------
    def _container_token(self, value: Any, where: str) -> Any:
        if id(value) in self._open_containers:
            raise self._refusal(where, value, "a container that contains itself")
        self._open_containers.add(id(value))
        try:
            if isinstance(value, dict):
                # Insertion order is kept: code iterating a dict sees it, and it is the same in
                # every process (unlike set order, which depends on the hash seed).
                return ["dict", [
                    [self.token(k, f"{where} key"), self.token(v, f"{where}[{k!r}]")]
                    for k, v in value.items()
                ]]
            if isinstance(value, set | frozenset):
                items = [self.token(item, f"{where} element") for item in value]
                return [type(value).__name__, sorted(items, key=canonical_encode)]
            return [type(value).__name__, [
                self.token(item, f"{where}[{index}]") for index, item in enumerate(value)
            ]]
        finally:
            self._open_containers.discard(id(value))

    def _array_token(self, value: np.ndarray[Any, Any], where: str) -> Any:
        if value.dtype.hasobject:
            raise self._refusal(where, value, "a numpy array of Python objects")
        digest = hashlib.sha256(value.tobytes()).hexdigest()
        return ["ndarray", repr(value.dtype.descr), list(value.shape), digest]

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
        references = _global_references(code)
        written = sorted(
            references.get("STORE_GLOBAL", set()) | references.get("DELETE_GLOBAL", set())
        )
        if written:
            raise CodeHashError(
                f"cannot hash {self._chain()}: it assigns the global {written[0]!r}, so its "
                "results depend on state kept outside its inputs. Keep state out of user "
                "functions, or build the node with udf(..., shareable=False) to run it unshared"
            )
        required = references.get("LOAD_GLOBAL", set())
        # LOAD_NAME also reads class-body locals, so an unresolved one is not an error.
        optional = references.get("LOAD_NAME", set()) - required
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
        payload = [
            "function",
            _normalized_dump(node, self_names),
            self._defaults_token(function),
            closure_tokens,
            globals_tokens,
        ]
        return hashlib.sha256(canonical_encode(payload)).hexdigest()

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
        if not self._stack:
            return "the function"
        names = [describe_function(frame.function) for frame in self._stack]
        return names[0] + "".join(f" (through {name})" for name in names[1:])

    def _refusal(self, where: str, value: Any, what: str | None = None) -> CodeHashError:
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


def describe_function(function: Callable[..., Any]) -> str:
    """``module.qualname (line N)`` of a function, or of a numba dispatcher's Python function.

    >>> def scaled(values):
    ...     return values * 2
    >>> describe_function(scaled)
    'streamdag.codehash.scaled (line 1)'
    """
    python_function = getattr(function, "py_func", function)
    module = getattr(python_function, "__module__", None) or "<no module>"
    name = getattr(python_function, "__qualname__", None) or repr(python_function)
    code = getattr(python_function, "__code__", None)
    line = f" (line {code.co_firstlineno})" if code is not None else ""
    return f"{module}.{name}{line}"


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


def _global_references(code: CodeType) -> dict[str, set[str]]:
    """Names that each global-access instruction uses in ``code`` and every code nested in it."""
    references: dict[str, set[str]] = {}
    for instruction in dis.get_instructions(code):
        if instruction.opname in _GLOBAL_ACCESS:
            references.setdefault(instruction.opname, set()).add(str(instruction.argval))
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            for opname, names in _global_references(constant).items():
                references.setdefault(opname, set()).update(names)
    return references


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


# -- libraries and modules -----------------------------------------------------------------
def _module_token(module: ModuleType) -> Any:
    version = _library_version(module.__name__)
    if version is not None:
        return ["module", module.__name__, version]
    # Attribute access through a user module (helpers.scale) is resolved by name only; its
    # source text is hashed too so that editing the module changes the hash.
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        return ["module", module.__name__]
    return ["module", module.__name__, hashlib.sha256(source.encode("utf-8")).hexdigest()]


def _library_token(value: Any) -> Any:
    """``[library, module, name, version]`` for a value importable by name from a library."""
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    version = _library_version(module_name)
    if version is None or not _importable_as(value, module_name, qualname):
        return None
    return ["library", module_name, qualname, version]


def _importable_as(value: Any, module_name: str, qualname: str) -> bool:
    target: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is value


@functools.cache
def _library_version(module_name: str) -> str | None:
    """The version of the installed library or Python that ships ``module_name``; else None.

    Code outside the interpreter's and site-packages' folders (the user's own modules, editable
    installs) is not a library: it is hashed by content.
    """
    module = sys.modules.get(module_name)
    if module is None:
        return None
    python = f"{sys.implementation.name}-{platform.python_version()}"
    top = module_name.partition(".")[0]
    file = getattr(module, "__file__", None)
    if file is None:
        return python if top in sys.builtin_module_names else None
    path = os.path.realpath(file)
    if not any(path.startswith(root) for root in _installed_roots()):
        return None
    distributions = sorted(set(_distributions_by_package().get(top, ())))
    if distributions:
        return ",".join(_distribution_fingerprint(d) for d in distributions)
    return python if top in sys.stdlib_module_names else None


@functools.lru_cache(maxsize=1)
def _distributions_by_package() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.cache
def _distribution_fingerprint(name: str) -> str:
    """``name==version`` plus a digest of the installed files' hashes.

    The digest tells apart two installs of one version with different code (a package rebuilt
    and reinstalled without a version bump). RECORD lines without a hash (bytecode caches) and
    outside the package folder (scripts) are left out, and the rest sorted, so that the same
    wheel gives the same fingerprint whatever installed it.
    """
    distribution = importlib.metadata.distribution(name)
    record = distribution.read_text("RECORD") or ""
    entries = sorted(
        line for line in record.splitlines()
        if not line.startswith("..") and line.count(",") >= 2 and line.split(",")[1]
    )
    digest = hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()[:16]
    return f"{name}=={distribution.version}#{digest}"


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    return tuple(sorted(os.path.join(os.path.realpath(r), "") for r in roots))


def _numba_python_function(value: Any) -> FunctionType | None:
    """The Python function behind a numba dispatcher, or None for anything else."""
    if not type(value).__module__.startswith("numba."):
        return None
    python_function = getattr(value, "py_func", None)
    return python_function if isinstance(python_function, FunctionType) else None
