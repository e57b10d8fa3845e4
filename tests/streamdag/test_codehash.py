"""function_code_hash: what changes a user function's hash, what does not, and what is refused."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamdag.codehash import function_code_hash
from streamdag.errors import CodeHashError

# -- functions hashed by the tests (no asserts inside: pytest rewrites those) ---------------


def spread(values):
    return values[:, -1] - values[:, 0]


def spread_with_comments(values):
    """A docstring, comments and blank lines change nothing."""

    # the newest minus the oldest value
    return values[:, -1]  -  values[:, 0]


def spread_reversed(values):
    return values[:, 0] - values[:, -1]


def scaled(values, factor=2.0):
    return values * factor


def make_scaler(factor: float) -> Callable[[Any], Any]:
    def scale(values):
        return values * factor

    return scale


def factorial(n):
    return 1 if n <= 1 else n * factorial(n - 1)


def factorial_renamed(n):
    return 1 if n <= 1 else n * factorial_renamed(n - 1)


def is_even(n):
    return True if n == 0 else is_odd(n - 1)


def is_odd(n):
    return False if n == 0 else is_even(n - 1)


PAIR = (lambda x: x + 1, lambda x: x * 2)
PLUS_ONE = lambda x: x + 1  # noqa: E731
TIMES_TWO = lambda x: x * 2  # noqa: E731
TWINS = (lambda x: x - 3, lambda x: x - 3)
NESTED = lambda x: (lambda y: y * 7)(x)  # noqa: E731
SEVEN_TIMES = lambda y: y * 7  # noqa: E731
SPREAD_LAMBDA = lambda w: w[:, -1] - w[:, 0]  # noqa: E731
MULTILINE = functools.partial(
    lambda w: (
        w[:, -1]
        - w[:, 0]
    ),
)


class Opaque:
    """A class whose instances have no encodable content."""


OPAQUE = Opaque()
STATEFUL_DRAW = random.Random(0).random


def uses_opaque(values):
    return values if OPAQUE else None


def uses_bound_method(values):
    return values + STATEFUL_DRAW()


def uses_class(values):
    return Opaque


def uses_undefined(values):
    return values + DEFINED_LATER  # noqa: F821


def keeps_state(values):
    global COUNTER
    COUNTER = values
    return values


def uses_library_callables(values):
    return np.mean(values) + len(values) + abs(-1) + np.sqrt(4.0)


# -- helpers ----------------------------------------------------------------------------------


def refusal(function: Callable[..., Any]) -> str:
    with pytest.raises(CodeHashError) as caught:
        function_code_hash(function)
    return str(caught.value)


FIX = "pass it to the node as a param, or build the node with udf(..., shareable=False)"


# -- the syntax tree --------------------------------------------------------------------------


def test_hash_is_a_sha256_hex_digest() -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", function_code_hash(spread))


def test_comments_whitespace_docstrings_and_name_do_not_matter() -> None:
    assert function_code_hash(spread) == function_code_hash(spread_with_comments)


def test_any_change_to_the_body_changes_the_hash() -> None:
    assert function_code_hash(spread) != function_code_hash(spread_reversed)


def test_same_source_in_other_files_and_lines_hashes_equal(write_module: Any) -> None:
    source = "def ratio(values):\n    return values[:, -1] / values[:, 0]\n"
    first = write_module("codehash_ratio_a", source)
    second = write_module("codehash_ratio_b", "\n\n# moved down\n\n" + source)
    assert function_code_hash(first.ratio) == function_code_hash(second.ratio)


def test_default_argument_values_matter() -> None:
    before = function_code_hash(scaled)
    original = scaled.__defaults__
    try:
        scaled.__defaults__ = (3.0,)
        assert function_code_hash(scaled) != before
    finally:
        scaled.__defaults__ = original
    assert function_code_hash(scaled) == before


def test_keyword_only_default_values_matter(write_module: Any) -> None:
    module = write_module("codehash_kwonly", "def f(x, *, k=1):\n    return x * k\n")
    before = function_code_hash(module.f)
    module.f.__kwdefaults__ = {"k": 2}
    assert function_code_hash(module.f) != before


# -- closures and globals ---------------------------------------------------------------------


def test_closure_values_matter() -> None:
    assert function_code_hash(make_scaler(2.0)) == function_code_hash(make_scaler(2.0))
    assert function_code_hash(make_scaler(2.0)) != function_code_hash(make_scaler(3.0))


def test_module_constant_change_changes_hash(
    write_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(
        "codehash_constants",
        "WINDOW = 20\nWEIGHTS = {'a': 1.0, 'b': 2.0}\n"
        "def weighted(x):\n    return x[:, -WINDOW:] * WEIGHTS['a']\n",
    )
    before = function_code_hash(module.weighted)
    monkeypatch.setattr(module, "WINDOW", 30)
    changed_window = function_code_hash(module.weighted)
    monkeypatch.setattr(module, "WINDOW", 20)
    assert function_code_hash(module.weighted) == before
    monkeypatch.setattr(module, "WEIGHTS", {"a": 1.5, "b": 2.0})
    assert len({before, changed_window, function_code_hash(module.weighted)}) == 3


def test_numpy_array_content_dtype_and_shape_matter(
    write_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module(
        "codehash_arrays",
        "import numpy as np\nKERNEL = np.ones(4)\n"
        "def smooth(x):\n    return np.convolve(x, KERNEL)\n",
    )
    variants = [np.ones(4), np.ones(4), np.arange(4.0), np.ones(4, dtype=np.float32),
                np.ones((2, 2)), np.float64(1.0), np.int64(1)]
    hashes = []
    for kernel in variants:
        monkeypatch.setattr(module, "KERNEL", kernel)
        hashes.append(function_code_hash(module.smooth))
    assert hashes[0] == hashes[1]
    assert len(set(hashes)) == len(variants) - 1


def test_user_module_reference_hashes_its_source(write_module: Any) -> None:
    write_module("codehash_tools_v1", "def twice(x):\n    return 2 * x\n")
    write_module("codehash_tools_v2", "def twice(x):\n    return 3 * x\n")
    caller = "import {module} as tools\ndef use(x):\n    return tools.twice(x)\n"
    first = write_module("codehash_caller_1", caller.format(module="codehash_tools_v1"))
    second = write_module("codehash_caller_2", caller.format(module="codehash_tools_v2"))
    assert function_code_hash(first.use) != function_code_hash(second.use)


def test_recursion_is_guarded_and_own_name_does_not_matter() -> None:
    assert function_code_hash(factorial) == function_code_hash(factorial_renamed)
    assert function_code_hash(is_even) != function_code_hash(is_odd)
    assert function_code_hash(is_even) == function_code_hash(is_even)


def test_modules_builtins_and_library_callables_are_named() -> None:
    assert function_code_hash(uses_library_callables) == function_code_hash(
        uses_library_callables
    )


@pytest.mark.parametrize(
    ("template", "function", "same", "others"),
    [
        pytest.param(
            "def helper(x):\n    return x {0} 2\n\ndef outer(x):\n    return helper(x) + 1\n",
            "outer", ("+",), [("-",)], id="helper functions are hashed recursively"),
        pytest.param(
            "from numpy import {0} as reduce\ndef summary(x):\n    return reduce(x)\n",
            "summary", ("mean",), [("median",)], id="library callables are told apart by name"),
        pytest.param(
            "import numba\nOFFSET = {0}\n"
            "@numba.njit(cache=False{1})\ndef shift(x):\n    return x + OFFSET\n",
            "shift", (1, ""), [(2, ""), (1, ", fastmath=True")],
            id="numba dispatchers are hashed through their Python function and options"),
    ],
)
def test_what_a_function_uses_is_part_of_its_hash(
    write_module: Any, template: str, function: str, same: tuple[Any, ...],
    others: list[tuple[Any, ...]],
) -> None:
    def hash_of(index: int, values: tuple[Any, ...]) -> str:
        module = write_module(f"codehash_uses_{function}_{index}", template.format(*values))
        return function_code_hash(getattr(module, function))

    base = hash_of(0, same)
    assert hash_of(1, same) == base
    assert all(hash_of(2 + n, values) != base for n, values in enumerate(others))


def test_partial_arguments_matter() -> None:
    assert function_code_hash(functools.partial(scaled, factor=2.0)) == function_code_hash(
        functools.partial(scaled, factor=2.0)
    )
    assert function_code_hash(functools.partial(scaled, factor=2.0)) != function_code_hash(
        functools.partial(scaled, factor=4.0)
    )


# -- lambdas ----------------------------------------------------------------------------------


def test_two_lambdas_on_one_line_are_told_apart() -> None:
    first, second = PAIR
    assert function_code_hash(first) != function_code_hash(second)
    assert function_code_hash(first) == function_code_hash(PLUS_ONE)
    assert function_code_hash(second) == function_code_hash(TIMES_TWO)


def test_identical_lambdas_share_a_hash() -> None:
    assert function_code_hash(TWINS[0]) == function_code_hash(TWINS[1])


def test_nested_lambda_is_the_innermost_match() -> None:
    inner = next(c for c in NESTED.__code__.co_consts if hasattr(c, "co_code"))
    inner_function = type(NESTED)(inner, NESTED.__globals__)
    assert function_code_hash(inner_function) == function_code_hash(SEVEN_TIMES)
    assert function_code_hash(NESTED) != function_code_hash(SEVEN_TIMES)


def test_multiline_lambda_inside_a_call_is_found() -> None:
    assert function_code_hash(MULTILINE.func) == function_code_hash(SPREAD_LAMBDA)


# -- refusals ---------------------------------------------------------------------------------


def test_arbitrary_object_global_is_refused() -> None:
    line = uses_opaque.__code__.co_firstlineno
    assert refusal(uses_opaque) == (
        f"cannot hash test_codehash.uses_opaque (line {line}): its global 'OPAQUE' is a "
        "test_codehash.Opaque object, whose content cannot be encoded, so the hash could not "
        "tell when it changes. Make it a module-level constant of a plain type (None, bool, "
        "int, float, str, bytes, a tuple/list/dict/frozenset of those, a numpy array), "
        f"{FIX} to run it unshared"
    )


def test_unhashable_closure_is_refused_with_its_name_and_type() -> None:
    function = make_scaler(Opaque())
    message = refusal(function)
    assert message.startswith(
        f"cannot hash test_codehash.make_scaler.<locals>.scale "
        f"(line {function.__code__.co_firstlineno}): its closure variable 'factor' is a "
        "test_codehash.Opaque object"
    )
    assert FIX in message


def test_bound_method_of_stateful_object_is_refused() -> None:
    assert "its global 'STATEFUL_DRAW' is a method bound to a random.Random object" in refusal(
        uses_bound_method
    )


def test_user_class_is_refused() -> None:
    assert "its global 'Opaque' is the class test_codehash.Opaque" in refusal(uses_class)


def test_refusal_names_the_chain_of_functions(write_module: Any) -> None:
    module = write_module(
        "codehash_chain",
        "class Box:\n    pass\nBOX = Box()\n\ndef inner(x):\n    return BOX\n\n"
        "def outer(x):\n    return inner(x)\n",
    )
    assert refusal(module.outer).startswith(
        "cannot hash codehash_chain.outer (line 8) (through codehash_chain.inner (line 5)): "
        "its global 'BOX' is a codehash_chain.Box object"
    )


def test_container_values_are_checked_inside(
    write_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = write_module("codehash_nested", "TABLE = {}\ndef look(x):\n    return TABLE[x]\n")
    monkeypatch.setattr(module, "TABLE", {"ok": (1, 2.5, "s", b"b", None), "bad": [Opaque()]})
    assert "its global 'TABLE'['bad'][0] is a test_codehash.Opaque object" in refusal(module.look)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    monkeypatch.setattr(module, "TABLE", cyclic)
    assert "is a container that contains itself" in refusal(module.look)
    monkeypatch.setattr(module, "TABLE", np.array([Opaque()], dtype=object))
    assert "is a numpy array of Python objects" in refusal(module.look)


def test_undefined_global_is_refused() -> None:
    assert "refers to the global 'DEFINED_LATER', which is not defined" in refusal(uses_undefined)


def test_function_assigning_a_global_is_refused() -> None:
    assert "it assigns the global 'COUNTER'" in refusal(keeps_state)


def test_function_without_source_is_refused() -> None:
    namespace: dict[str, Any] = {"__name__": "interactive"}
    exec("def typed_in(x):\n    return x + 1\n", namespace)
    assert refusal(namespace["typed_in"]) == (
        "cannot hash interactive.typed_in (line 1): its source code is not available (it was "
        "probably defined by exec or in an interactive session without source). Define it in "
        "a .py module, or build the node with udf(..., shareable=False) to run it unshared"
    )


def test_source_edited_after_import_is_refused(write_module: Any, tmp_path: Path) -> None:
    module = write_module("codehash_edited", "def f(x):\n    return x + 1\n")
    (tmp_path / "codehash_edited.py").write_text("def g(y, z):\n    return y * z\n")
    assert "does not match its code" in refusal(module.f)


def test_callable_object_is_refused() -> None:
    assert refusal(Opaque()) == (
        "cannot hash a test_codehash.Opaque object as a user function. Pass a plain Python "
        "function (def or lambda), or build the node with udf(..., shareable=False) to run it "
        "unshared"
    )


# -- what cannot be frozen with certainty -----------------------------------------------------

UNSHARED = "or build the node with udf(..., shareable=False) to run it unshared"
REACHES = (
    "through which code can reach or change values that no hash can see (other modules' "
    "globals, frames, live objects). Use only its inputs and the values it names, " + UNSHARED
)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param(
            "import codehash_settings as config\ndef helper(m):\n    return m.K\n"
            "def f(x):\n    return helper(config)\n",
            "cannot hash {module}.f (line 4): its global 'config' is the module "
            "'codehash_settings', and it uses 'config' other than by reading an attribute "
            "(config.NAME), so the values it reads through it cannot be frozen. Read the "
            "attributes where they are used (config.NAME), import the values themselves (from "
            "codehash_settings import NAME), " + UNSHARED,
            id="a user module passed around"),
        pytest.param(
            "import codehash_settings as config\ndef f(x):\n    return config.LATER\n",
            "cannot hash {module}.f (line 2): it reads config.LATER, but the module "
            "'codehash_settings' has no attribute 'LATER' when the function is hashed, so its "
            "value cannot be part of the hash. Define 'LATER' in 'codehash_settings' before the "
            "function is given to sd.udf",
            id="a module attribute not yet defined"),
        pytest.param(
            "import codehash_settings as config\ndef f(x, settings=config):\n"
            "    return settings.K\n",
            "cannot hash {module}.f (line 2): its default of argument 'settings' is the module "
            "'codehash_settings', which is not an installed library, so its attributes can "
            "change after hashing, and it is not a global or closure variable whose attributes "
            "(module.NAME) could be frozen. Import it at module level and read its attributes "
            "where they are used, or pass the values as params; " + UNSHARED,
            id="a user module as a default"),
        pytest.param(
            "def f(x):\n    import codehash_settings\n    return x * codehash_settings.K\n",
            "cannot hash {module}.f (line 1): it imports 'codehash_settings' in its body, which "
            "is not an installed library, so what it reads from it is read when it runs, not "
            "when it is hashed. Import it at the top of the module instead and read its "
            "attributes where they are used (module.NAME), " + UNSHARED,
            id="a user module imported in the body"),
        pytest.param(
            "def f(x):\n    out = x.copy()\n    out.shape = (-1,)\n    return out\n",
            "cannot hash {module}.f (line 1): it assigns or deletes the attribute 'shape' "
            "(x.shape = ...), which can change the values it depends on after they were "
            "hashed. Build new values instead of changing attributes, " + UNSHARED,
            id="an attribute assigned"),
        pytest.param(
            "WEIGHTS = [1.0]\ndef f(x):\n    list.append(WEIGHTS, 2.0)\n    return x\n",
            "cannot hash {module}.f (line 2): it calls list.append on the type itself, which "
            "can change a list it depends on in place. Change only local copies (copy = "
            "list(x); copy.append(...)), " + UNSHARED,
            id="a list method called on the type"),
        pytest.param(
            "def f(x):\n    return eval('x * 2')\n",
            "cannot hash {module}.f (line 1): its global 'eval' is builtins.eval, " + REACHES,
            id="eval"),
        pytest.param(
            "def f(x):\n    return globals()['K'] * x\n",
            "cannot hash {module}.f (line 1): its global 'globals' is builtins.globals, "
            + REACHES,
            id="globals()"),
        pytest.param(
            "def g(x):\n    return x\ndef f(x):\n    return g.__globals__\n",
            "cannot hash {module}.f (line 3): it uses the attribute '__globals__', " + REACHES,
            id="a function's globals"),
        pytest.param(
            "import sys\ndef f(x):\n    return sys.modules['codehash_settings'].K * x\n",
            "cannot hash {module}.f (line 2): its global 'sys' is the module 'sys', " + REACHES,
            id="sys.modules"),
        pytest.param(
            "def f(x):\n    import importlib\n    return x\n",
            "cannot hash {module}.f (line 1): it uses an import of 'importlib', " + REACHES,
            id="importlib imported in the body"),
    ],
)
def test_what_cannot_be_frozen_with_certainty_is_refused(
    write_module: Any, source: str, message: str, request: pytest.FixtureRequest
) -> None:
    write_module("codehash_settings", "K = 2.0\n")
    name = "codehash_refused_" + re.sub(r"\W", "_", request.node.callspec.id)
    module = write_module(name, source)
    assert refusal(module.f) == message.format(module=name)


def test_a_library_imported_in_the_body_is_accepted(write_module: Any) -> None:
    body = "def f(x):\n    import {0}\n    return {0}.sqrt(x)\n"
    first = write_module("codehash_imports_math", body.format("math"))
    again = write_module("codehash_imports_math_again", body.format("math"))
    other = write_module("codehash_imports_numpy", body.format("numpy"))
    assert function_code_hash(first.f) == function_code_hash(again.f)
    assert function_code_hash(first.f) != function_code_hash(other.f)
