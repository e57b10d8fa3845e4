"""Frozen copies of user functions, so that what runs is exactly what was hashed.

A Python function reads its globals, closure cells, defaults and attributes when it is called,
not when it is defined, so hashing those values at decoration time proves nothing about a later
call: a lambda made in a loop reads the loop's last value, a module-level array can be changed in
place, a global or a module attribute (``config.K``) can be rebound. ``freeze_function`` builds
a copy of the function whose globals dict, closure cells, defaults and attributes hold private,
read-only copies of the values the original sees at that moment, recursively through the user
functions it calls; the code hash is computed over that copy and the copy is what runs.

What a copy holds:

- plain immutable values (None, bool, int, float, str, bytes, numpy scalars) as they are;
- tuples and frozensets rebuilt from frozen items; lists, dicts and sets as ``FrozenList``,
  ``FrozenDict`` and ``FrozenSet``, which read like the originals and refuse every change;
- numpy arrays as copies over an immutable buffer (their writeable flag cannot be set again);
- the user's functions, ``functools.partial`` objects and numba dispatchers as frozen copies;
- a user module read as ``config.K`` as a ``ModuleSnapshot`` holding frozen copies of exactly
  the attributes the code reads; a user module used any other way cannot be frozen and is
  refused when hashed;
- installed libraries' modules and callables as they are: they are identified by name and
  version (see ``streamdag.code_libraries``), not by content.

Anything else is kept as it is, for the code hash to refuse.
"""

from __future__ import annotations

import dis
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import CellType, CodeType, FunctionType, ModuleType
from typing import Any, Literal, NoReturn

import numpy as np

from streamdag.code_libraries import is_library_module, library_token
from streamdag.errors import CodeHashError

__all__ = [
    "CodeUse",
    "FrozenDict",
    "FrozenFunction",
    "FrozenList",
    "FrozenPartial",
    "FrozenSet",
    "ModuleSnapshot",
    "code_use",
    "describe_chain",
    "describe_function",
    "freeze_function",
    "numba_python_function",
    "snapshot_attributes",
]

_READ_ONLY = (
    "this {kind} is a read-only copy, made by sd.udf, of a value that a shareable user function "
    "depends on: what runs must be exactly what was hashed. Work on a copy ({copy}), or build "
    "the node with udf(..., shareable=False) to run the function unshared, as it is"
)
_IMMUTABLE = (type(None), bool, int, float, complex, str, bytes)


def _refuse_change(kind: str, copy: str) -> Callable[..., NoReturn]:
    def change(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
        raise TypeError(_READ_ONLY.format(kind=kind, copy=copy))

    return change


class FrozenList(list[Any]):
    """A list that refuses every change: a frozen copy of a list a user function depends on.

    >>> weights = FrozenList([1.0, 2.0])
    >>> weights == [1.0, 2.0], weights[1:]
    (True, [2.0])
    >>> weights.append(3.0)
    Traceback (most recent call last):
    ...
    TypeError: this list is a read-only copy, made by sd.udf, of a value ...
    """

    __slots__ = ()
    _change = _refuse_change("list", "list(x)")
    append = extend = insert = remove = pop = clear = sort = reverse = _change
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _change

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the items it holds."""
        return (FrozenList, (list(self),))


class FrozenDict(dict[Any, Any]):
    """A dict that refuses every change: a frozen copy of a dict a user function depends on."""

    __slots__ = ()
    _change = _refuse_change("dict", "dict(x)")
    pop = popitem = clear = update = setdefault = _change
    __setitem__ = __delitem__ = __ior__ = _change

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the items it holds."""
        return (FrozenDict, (dict(self),))


class FrozenSet(set[Any]):
    """A set that refuses every change: a frozen copy of a set a user function depends on."""

    __slots__ = ()
    _change = _refuse_change("set", "set(x)")
    add = discard = remove = pop = clear = update = _change
    intersection_update = difference_update = symmetric_difference_update = _change
    __ior__ = __iand__ = __isub__ = __ixor__ = _change

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as the items it holds."""
        return (FrozenSet, (set(self),))


class FrozenPartial(functools.partial[Any]):
    """A ``functools.partial`` over frozen arguments whose keywords cannot be changed."""

    @property
    def keywords(self) -> FrozenDict:
        """The keyword arguments, as a read-only copy."""
        return FrozenDict(super().keywords)


class ModuleSnapshot(ModuleType):
    """Frozen copies of the attributes that user code reads from one of the user's modules.

    It stands for the module in a frozen function's globals or closure: ``config.K`` reads
    the value ``config.K`` had when the function was frozen. Its attributes cannot be set.
    """

    def __init__(self, name: str, attributes: Mapping[str, Any]) -> None:
        super().__init__(name)
        for attribute, value in attributes.items():
            ModuleType.__setattr__(self, attribute, value)
        ModuleType.__setattr__(self, "__snapshot_attributes__", tuple(attributes))

    __setattr__ = __delattr__ = _refuse_change("module snapshot", "a local variable")

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by value, never as an import of the live module of the same name."""
        return (ModuleSnapshot, (self.__name__, snapshot_attributes(self)))


def snapshot_attributes(snapshot: ModuleSnapshot) -> dict[str, Any]:
    """The attributes a snapshot holds, by name, in the order they were taken."""
    names: tuple[str, ...] = snapshot.__dict__["__snapshot_attributes__"]
    return {name: snapshot.__dict__[name] for name in names}


class FrozenFunction:
    """A frozen copy of a user function (see ``freeze_function``); calling it calls the copy."""

    __slots__ = ("_function",)

    def __init__(self, function: Callable[..., Any]) -> None:
        self._function = function

    @property
    def function(self) -> Callable[..., Any]:
        """The frozen copy that runs."""
        return self._function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the frozen copy."""
        return self._function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"FrozenFunction({describe_function(self._function)})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with the frozen copy (by value: it is not importable by name)."""
        return (FrozenFunction, (self._function,))


def describe_function(function: Callable[..., Any]) -> str:
    """``module.qualname (line N)`` of a function, or of a numba dispatcher's Python function.

    >>> def scaled(values):
    ...     return values * 2
    >>> describe_function(scaled)
    'streamdag.code_freezing.scaled (line 1)'
    """
    if isinstance(function, FrozenFunction):
        function = function.function
    if isinstance(function, functools.partial):
        return f"functools.partial of {describe_function(function.func)}"
    python_function = getattr(function, "py_func", function)
    module = getattr(python_function, "__module__", None) or "<no module>"
    name = getattr(python_function, "__qualname__", None) or repr(python_function)
    code = getattr(python_function, "__code__", None)
    line = f" (line {code.co_firstlineno})" if code is not None else ""
    return f"{module}.{name}{line}"


def describe_chain(functions: Sequence[Callable[..., Any]]) -> str:
    """The function being hashed and the functions it was reached through, for messages."""
    if not functions:
        return "the function"
    names = [describe_function(function) for function in functions]
    return names[0] + "".join(f" (through {name})" for name in names[1:])


def numba_python_function(value: Any) -> FunctionType | None:
    """The Python function behind a numba dispatcher, or None for anything else."""
    if not type(value).__module__.startswith("numba."):
        return None
    python_function = getattr(value, "py_func", None)
    return python_function if isinstance(python_function, FunctionType) else None


# -- what code does with names -------------------------------------------------------------
_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_FREE_LOADS = frozenset({"LOAD_DEREF", "LOAD_CLASSDEREF"})
Chains = Mapping[str, frozenset[tuple[str, ...]]]


@dataclass(frozen=True)
class CodeUse:
    """What a code object, and every code nested in it, does with names, attributes, imports.

    A chain is the attribute names read right after a name is loaded (``config.sub.K`` gives
    ``("sub", "K")``); the empty chain is a use of the value itself.
    """

    #: Names loaded as globals (LOAD_GLOBAL).
    global_loads: frozenset[str]
    #: Names loaded by class bodies (LOAD_NAME): class locals, else globals.
    name_loads: frozenset[str]
    #: Globals assigned or deleted.
    global_stores: frozenset[str]
    attribute_loads: frozenset[str]
    #: Attributes assigned or deleted (``x.a = ...``, ``del x.a``).
    attribute_stores: frozenset[str]
    #: ``(module, level)`` of every import statement in the code.
    imports: frozenset[tuple[str, int]]
    #: Chains read from each global (and LOAD_NAME) name.
    global_chains: Chains = field(repr=False)
    #: Chains read from each of the root code's free variables (its closure cells).
    free_chains: Chains = field(repr=False)


@functools.lru_cache(maxsize=1024)
def code_use(code: CodeType) -> CodeUse:
    """The names, attributes and imports that ``code`` and the code nested in it use."""
    found: dict[str, set[Any]] = {
        key: set() for key in ("global_loads", "name_loads", "global_stores", "attribute_loads",
                               "attribute_stores", "imports")
    }
    global_chains: dict[str, set[tuple[str, ...]]] = {}
    free_chains: dict[str, set[tuple[str, ...]]] = {}
    pending = [(code, frozenset(code.co_freevars))]
    while pending:
        current, captured = pending.pop()
        instructions = [i for i in dis.get_instructions(current) if i.opname != "EXTENDED_ARG"]
        for index, instruction in enumerate(instructions):
            opname, name = instruction.opname, str(instruction.argval)
            if opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                found["global_loads" if opname == "LOAD_GLOBAL" else "name_loads"].add(name)
                global_chains.setdefault(name, set()).add(_chain(instructions, index))
            elif opname in _FREE_LOADS and name in captured:
                free_chains.setdefault(name, set()).add(_chain(instructions, index))
            elif opname in ("STORE_GLOBAL", "DELETE_GLOBAL"):
                found["global_stores"].add(name)
            elif opname in _ATTRIBUTE_LOADS:
                found["attribute_loads"].add(name)
            elif opname in ("STORE_ATTR", "DELETE_ATTR"):
                found["attribute_stores"].add(name)
            elif opname == "IMPORT_NAME":
                level = instructions[index - 2].argval if index >= 2 else 0
                found["imports"].add((name, level if isinstance(level, int) else 0))
        for constant in current.co_consts:
            if isinstance(constant, CodeType):
                # A nested function's free variable is one of ours only if we pass ours on.
                pending.append((constant, captured & frozenset(constant.co_freevars)))
    return CodeUse(
        **{key: frozenset(values) for key, values in found.items()},
        global_chains={k: frozenset(v) for k, v in global_chains.items()},
        free_chains={k: frozenset(v) for k, v in free_chains.items()},
    )


def _chain(instructions: Sequence[dis.Instruction], index: int) -> tuple[str, ...]:
    names = []
    for instruction in instructions[index + 1:]:
        if instruction.opname not in _ATTRIBUTE_LOADS:
            break
        names.append(str(instruction.argval))
    return tuple(names)


# -- freezing ------------------------------------------------------------------------------
def freeze_function(function: Callable[..., Any]) -> FrozenFunction:
    """A frozen copy of ``function``: private, read-only copies of every value it depends on.

    Freezing a frozen function copies it again, to the same values.

    >>> factors = [2.0]
    >>> frozen = freeze_function(lambda x: x * factors[0])
    >>> factors[0] = 3.0
    >>> frozen(10.0)
    20.0
    """
    if isinstance(function, FrozenFunction):
        function = function.function
    return FrozenFunction(_Freezer().freeze(function))


class _Freezer:
    """One freezing run: frozen copies by the id of their original, so sharing is kept."""

    def __init__(self) -> None:
        self._copies: dict[int, Any] = {}
        # The originals stay alive for the run, so that no id is reused by another object.
        self._originals: list[Any] = []
        self._stack: list[FunctionType] = []

    def freeze(self, value: Any) -> Any:
        """The frozen copy of ``value`` (the value itself where nothing can change it)."""
        kind = type(value)
        if kind in _IMMUTABLE or isinstance(value, np.generic):
            return value
        if isinstance(value, ModuleType) and kind is not ModuleSnapshot:
            # A live module of the user's reaches here only outside a global or closure
            # variable (a default, a container), where it cannot be frozen: the hash refuses it.
            return value
        copy = self._copies.get(id(value))
        if copy is not None:
            return copy
        if kind is tuple:
            return tuple(self.freeze(item) for item in value)
        if kind is frozenset:
            return frozenset(self.freeze(item) for item in value)
        if kind in (list, FrozenList):
            frozen_list = self._remember(value, FrozenList())
            list.extend(frozen_list, [self.freeze(item) for item in value])
            return frozen_list
        if kind in (dict, FrozenDict):
            frozen_dict = self._remember(value, FrozenDict())
            for key, item in value.items():
                dict.__setitem__(frozen_dict, self.freeze(key), self.freeze(item))
            return frozen_dict
        if kind in (set, FrozenSet):
            frozen_set = self._remember(value, FrozenSet())
            set.update(frozen_set, [self.freeze(item) for item in value])
            return frozen_set
        if kind is np.ndarray:
            return self._remember(value, _sealed_array(value))
        if kind is ModuleSnapshot:
            return self._remember(value, ModuleSnapshot(value.__name__, {
                name: self.freeze(item) for name, item in snapshot_attributes(value).items()
            }))
        if kind is FrozenFunction:
            return self._remember(value, FrozenFunction(self.freeze(value.function)))
        if library_token(value) is not None:
            return value
        if kind is FunctionType:
            return self._freeze_function(value)
        python_function = numba_python_function(value)
        if python_function is not None:
            return self._freeze_dispatcher(value, python_function)
        if kind in (functools.partial, FrozenPartial):
            return self._remember(value, FrozenPartial(
                self.freeze(value.func),
                *self.freeze(value.args),
                **{key: self.freeze(item) for key, item in value.keywords.items()},
            ))
        return value

    def _remember(self, original: Any, copy: Any) -> Any:
        self._copies[id(original)] = copy
        self._originals.append(original)
        return copy

    def _freeze_function(self, function: FunctionType) -> FunctionType:
        code = function.__code__
        frozen_globals: dict[str, Any] = {
            "__builtins__": self._builtins_of(function),
            "__name__": function.__globals__.get("__name__"),
        }
        cells = tuple(CellType() for _ in code.co_freevars)
        copy = FunctionType(code, frozen_globals, function.__name__, None, cells or None)
        # Remembered before its values are frozen, so that recursion finds the copy.
        self._remember(function, copy)
        copy.__qualname__ = function.__qualname__
        copy.__module__ = function.__module__
        copy.__doc__ = function.__doc__
        self._stack.append(function)
        try:
            use = code_use(code)
            builtins: Mapping[str, Any] = getattr(function, "__builtins__", {})
            for name in sorted(use.global_loads | use.name_loads):
                if name in function.__globals__:
                    value = function.__globals__[name]
                elif name in builtins:
                    value = builtins[name]
                else:
                    continue  # the hash refuses a missing global by name
                frozen_globals[name] = self._freeze_variable(
                    value, use.global_chains.get(name, frozenset()), f"global {name!r}", name
                )
            for name, original, cell in zip(
                code.co_freevars, function.__closure__ or (), cells, strict=True
            ):
                try:
                    content = original.cell_contents
                except ValueError:
                    continue  # left empty: the hash says it has no value yet
                cell.cell_contents = self._freeze_variable(
                    content, use.free_chains.get(name, frozenset()),
                    f"closure variable {name!r}", name,
                )
            copy.__defaults__ = self.freeze(function.__defaults__)
            keyword_defaults = function.__kwdefaults__
            if keyword_defaults is not None:
                copy.__kwdefaults__ = FrozenDict(
                    {key: self.freeze(item) for key, item in keyword_defaults.items()}
                )
            copy.__dict__.update(
                {key: self.freeze(item) for key, item in function.__dict__.items()}
            )
        finally:
            self._stack.pop()
        return copy

    def _builtins_of(self, function: FunctionType) -> dict[str, Any]:
        # A private copy, so that rebinding a builtin later changes nothing that runs.
        builtins: dict[str, Any] = getattr(function, "__builtins__", {})
        copy: dict[str, Any] | None = self._copies.get(id(builtins))
        if copy is None:  # one copy per run, shared by every function of the run
            copy = self._remember(builtins, dict(builtins))
        return copy

    def _freeze_variable(
        self, value: Any, chains: Iterable[tuple[str, ...]], where: str, name: str
    ) -> Any:
        """A global or closure variable: a user module becomes the snapshot its code reads."""
        if not _is_user_module(value):
            return self.freeze(value)
        return self._snapshot(value, set(chains), where, name)

    def _snapshot(
        self, module: ModuleType, chains: set[tuple[str, ...]], where: str, spelled: str
    ) -> ModuleSnapshot:
        if () in chains or not chains:
            raise CodeHashError(
                f"cannot hash {describe_chain(self._stack)}: its {where} is the module "
                f"{module.__name__!r}, and it uses {spelled!r} other than by reading an "
                f"attribute ({spelled}.NAME), so the values it reads through it cannot be "
                f"frozen. Read the attributes where they are used ({spelled}.NAME), import the "
                f"values themselves (from {module.__name__} import NAME), or build the node with "
                "udf(..., shareable=False) to run it unshared"
            )
        by_attribute: dict[str, set[tuple[str, ...]]] = {}
        for chain in chains:
            by_attribute.setdefault(chain[0], set()).add(chain[1:])
        attributes: dict[str, Any] = {}
        for attribute in sorted(by_attribute):
            try:
                value = getattr(module, attribute)
            except AttributeError:
                raise CodeHashError(
                    f"cannot hash {describe_chain(self._stack)}: it reads "
                    f"{spelled}.{attribute}, but the module {module.__name__!r} has no "
                    f"attribute {attribute!r} when the function is hashed, so its value cannot "
                    f"be part of the hash. Define {attribute!r} in {module.__name__!r} before "
                    "the function is given to sd.udf"
                ) from None
            attributes[attribute] = self._freeze_variable(
                value, by_attribute[attribute], f"{where} attribute {attribute!r}",
                f"{spelled}.{attribute}",
            )
        return ModuleSnapshot(module.__name__, attributes)

    def _freeze_dispatcher(self, dispatcher: Any, python_function: FunctionType) -> Any:
        if type(dispatcher).__name__ != "CPUDispatcher":
            raise CodeHashError(
                f"cannot hash {describe_chain(self._stack) if self._stack else 'the function'}"
                f": {describe_function(python_function)} is a numba "
                f"{type(dispatcher).__name__}, which sd.udf cannot copy with frozen values. Use "
                "@numba.njit, or build the node with udf(..., shareable=False) to run it unshared"
            )
        frozen_python = self.freeze(python_function)
        copy = self._copies.get(id(dispatcher))
        if copy is not None:  # made while freezing its Python function (recursion)
            return copy
        import numba  # a dispatcher exists, so numba is imported already

        # numba's on-disk cache keeps the globals of the compile that filled it, not the
        # frozen ones, so the copy compiles in this process; the hash leaves `cache` out.
        options = {
            key: dict(value) if isinstance(value, dict) else value
            for key, value in dispatcher.targetoptions.items() if key != "cache"
        }
        jit: Callable[..., Any] = numba.jit
        return self._remember(dispatcher, jit(**options)(frozen_python))


def _is_user_module(value: Any) -> bool:
    return (
        isinstance(value, ModuleType)
        and not isinstance(value, ModuleSnapshot)
        and not is_library_module(value.__name__)
    )


def _sealed_array(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """A copy of ``array`` over an immutable buffer, so no code can make it writeable again."""
    if array.dtype.hasobject:
        return array  # not encodable: the hash refuses it
    order: Literal["C", "F"] = (
        "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
    )
    if array.dtype.itemsize == 0:
        copy = array.copy(order=order)
        copy.flags.writeable = False
        return copy
    buffer = array.tobytes(order=order)
    sealed: np.ndarray[Any, Any] = np.frombuffer(buffer, dtype=array.dtype).reshape(
        array.shape, order=order
    )
    return sealed
