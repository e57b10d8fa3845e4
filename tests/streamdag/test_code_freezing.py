"""freeze_function: what a frozen copy runs is what was hashed, whatever changes afterwards."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from ray import cloudpickle

from streamdag.code_freezing import (
    FrozenDict,
    FrozenFunction,
    FrozenList,
    FrozenSet,
    ModuleSnapshot,
    freeze_function,
    snapshot_attributes,
)
from streamdag.codehash import frozen_code_hash, function_code_hash

# -- functions frozen by the tests (no asserts inside: pytest rewrites those) -----------------

FACTOR = 2.0
KERNEL = np.array([1.0, 2.0, 3.0])
TABLE: dict[str, list[float]] = {"scale": [2.0]}
LABELS = {"bid", "ask"}


def scale_by(k: float) -> Callable[[Any], Any]:
    return lambda x: x * k


def uses_factor(x):
    return x * FACTOR


def uses_kernel(x):
    return x * KERNEL


def uses_table(x):
    return x * TABLE["scale"][0]


def calls_a_helper(x):
    return uses_factor(x) + 1.0


def with_default(x, weights=[2.0]):  # noqa: B006  # the mutable default is the point
    return x * weights[0]


def with_keyword_default(x, *, weights=[2.0]):  # noqa: B006
    return x * weights[0]


def over_a_list(values: list[float]) -> Callable[[Any], Any]:
    def scale(x):
        return x * values[0]

    return scale


def returns_its_values():
    return TABLE, KERNEL, LABELS


FORTRAN = np.asfortranarray(np.arange(6.0).reshape(2, 3))


def returns_fortran():
    return FORTRAN


READ_ONLY = (
    "this {kind} is a read-only copy, made by sd.udf, of a value that a shareable user "
    "function depends on: what runs must be exactly what was hashed. Work on a copy ({copy}), "
    "or build the node with udf(..., shareable=False) to run the function unshared, as it is"
)


# -- late binding -----------------------------------------------------------------------------


def test_lambdas_made_in_a_loop_run_and_hash_their_own_values() -> None:
    frozen = [freeze_function(lambda x: x * k) for k in (2.0, 3.0)]  # noqa: B023  # late binding
    assert [f(10.0) for f in frozen] == [20.0, 30.0]
    assert [frozen_code_hash(f) for f in frozen] == [
        function_code_hash(scale_by(2.0)), function_code_hash(scale_by(3.0))
    ]


def _rebind_factor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(globals(), "FACTOR", 5.0)


def _change_kernel_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    KERNEL[0] = 10.0


def _change_nested_list(monkeypatch: pytest.MonkeyPatch) -> None:
    TABLE["scale"][0] = 7.0


def _change_default(monkeypatch: pytest.MonkeyPatch) -> None:
    with_default.__defaults__[0][0] = 9.0  # type: ignore[index]


def _change_keyword_default(monkeypatch: pytest.MonkeyPatch) -> None:
    with_keyword_default.__kwdefaults__["weights"][0] = 9.0  # type: ignore[index]


CLOSED_OVER = [2.0]
PARTIAL_WEIGHTS = [2.0]


def _change_closed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    CLOSED_OVER[0] = 9.0


def _change_partial_keyword(monkeypatch: pytest.MonkeyPatch) -> None:
    PARTIAL_WEIGHTS[0] = 9.0


@pytest.mark.parametrize(
    ("function", "change", "before", "after"),
    [
        pytest.param(uses_factor, _rebind_factor, 2.0, 5.0, id="global rebound"),
        pytest.param(calls_a_helper, _rebind_factor, 3.0, 6.0, id="helper's global rebound"),
        pytest.param(uses_kernel, _change_kernel_in_place, [1.0, 2.0, 3.0], [10.0, 2.0, 3.0],
                     id="numpy array changed in place"),
        pytest.param(uses_table, _change_nested_list, 2.0, 7.0, id="list in a dict changed"),
        pytest.param(with_default, _change_default, 2.0, 9.0, id="default changed"),
        pytest.param(with_keyword_default, _change_keyword_default, 2.0, 9.0,
                     id="keyword-only default changed"),
        pytest.param(over_a_list(CLOSED_OVER), _change_closed_over, 2.0, 9.0,
                     id="closed-over list changed"),
        pytest.param(functools.partial(with_default, weights=PARTIAL_WEIGHTS),
                     _change_partial_keyword, 2.0, 9.0, id="partial keyword changed"),
    ],
)
def test_a_change_after_freezing_changes_neither_what_runs_nor_its_hash(
    function: Callable[..., Any], change: Callable[[pytest.MonkeyPatch], None], before: Any,
    after: Any, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
) -> None:
    for value in (KERNEL, TABLE["scale"], CLOSED_OVER, PARTIAL_WEIGHTS):
        request.addfinalizer(functools.partial(value.__setitem__, 0, value[0]))
    monkeypatch.setattr(with_default, "__defaults__", ([2.0],))
    monkeypatch.setattr(with_keyword_default, "__kwdefaults__", {"weights": [2.0]})
    frozen = freeze_function(function)
    hashed = frozen_code_hash(frozen)
    change(monkeypatch)
    assert np.asarray(frozen(1.0)).tolist() == before
    assert np.asarray(function(1.0)).tolist() == after
    assert frozen_code_hash(frozen) == hashed
    assert function_code_hash(function) != hashed
    assert frozen_code_hash(freeze_function(function)) == function_code_hash(function)


def test_module_attributes_are_frozen_as_a_snapshot_of_what_is_read(
    write_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_module("freeze_inner", "SCALE = 10.0\n")
    config = write_module(
        "freeze_config",
        "import freeze_inner as inner\nK = 2.0\nOFFSETS = [1.0]\nUNREAD = 0\n"
        "def bump(x):\n    return x + OFFSETS[0]\n",
    )
    user = write_module(
        "freeze_user",
        "import freeze_config as config\n"
        "def f(x):\n    return config.bump(x * config.K) * config.inner.SCALE\n",
    )
    frozen = freeze_function(user.f)
    hashed = frozen_code_hash(frozen)
    monkeypatch.setattr(config, "K", 3.0)
    config.OFFSETS[0] = 5.0
    assert frozen(1.0) == 30.0
    assert user.f(1.0) == 80.0
    assert frozen_code_hash(frozen) == hashed
    assert function_code_hash(user.f) != hashed
    snapshot = frozen.function.__globals__["config"]  # type: ignore[attr-defined]
    assert isinstance(snapshot, ModuleSnapshot)
    assert sorted(snapshot_attributes(snapshot)) == ["K", "bump", "inner"]
    assert snapshot_attributes(snapshot.inner) == {"SCALE": 10.0}


def test_a_module_attribute_rebound_before_hashing_is_what_is_hashed(
    write_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_module("freeze_settings", "K = 2.0\n")
    user = write_module(
        "freeze_reader",
        "import freeze_settings as settings\ndef f(x):\n    return x * settings.K\n",
    )
    hashes = [function_code_hash(user.f)]
    monkeypatch.setattr(config, "K", 3.0)  # the file still says 2.0
    hashes.append(function_code_hash(user.f))
    monkeypatch.setattr(config, "K", 2.0)
    hashes.append(function_code_hash(user.f))
    assert hashes[0] != hashes[1]
    assert hashes[0] == hashes[2]


def test_a_frozen_copy_holds_only_what_its_code_reads() -> None:
    frozen = freeze_function(uses_factor)
    assert sorted(frozen.function.__globals__) == ["FACTOR", "__builtins__", "__name__"]  # type: ignore[attr-defined]
    assert frozen.function.__globals__["FACTOR"] == 2.0  # type: ignore[attr-defined]
    assert frozen.function.__qualname__ == "uses_factor"  # type: ignore[attr-defined]
    assert freeze_function(frozen).function is not frozen.function


# -- frozen values are read-only --------------------------------------------------------------


def _frozen_values() -> tuple[Any, Any, Any]:
    table, kernel, labels = freeze_function(returns_its_values)()
    return table, kernel, labels


def test_frozen_values_read_like_the_originals() -> None:
    table, kernel, labels = _frozen_values()
    assert (type(table), type(table["scale"]), type(labels)) == (FrozenDict, FrozenList, FrozenSet)
    assert table == {"scale": [2.0]}
    assert json.dumps(table) == '{"scale": [2.0]}'
    assert table["scale"] + [3.0] == [2.0, 3.0]
    assert labels | {"mid"} == {"bid", "ask", "mid"}
    assert kernel.tolist() == [1.0, 2.0, 3.0]
    assert kernel.dtype == np.float64
    assert not kernel.flags.writeable


@pytest.mark.parametrize(
    ("change", "kind", "copy"),
    [
        (lambda t, k, s: t["scale"].append(1.0), "list", "list(x)"),
        (lambda t, k, s: t["scale"].__setitem__(0, 1.0), "list", "list(x)"),
        (lambda t, k, s: t["scale"].sort(), "list", "list(x)"),
        (lambda t, k, s: t["scale"].__iadd__([1.0]), "list", "list(x)"),
        (lambda t, k, s: t.__setitem__("other", []), "dict", "dict(x)"),
        (lambda t, k, s: t.update(other=[]), "dict", "dict(x)"),
        (lambda t, k, s: t.pop("scale"), "dict", "dict(x)"),
        (lambda t, k, s: s.add("mid"), "set", "set(x)"),
        (lambda t, k, s: s.__ior__({"mid"}), "set", "set(x)"),
    ],
)
def test_frozen_containers_refuse_every_change(
    change: Callable[[Any, Any, Any], Any], kind: str, copy: str
) -> None:
    table, kernel, labels = _frozen_values()
    with pytest.raises(TypeError) as caught:
        change(table, kernel, labels)
    assert str(caught.value) == READ_ONLY.format(kind=kind, copy=copy)
    assert (table, labels) == ({"scale": [2.0]}, {"bid", "ask"})


def test_frozen_arrays_cannot_be_made_writeable_again() -> None:
    _, kernel, _ = _frozen_values()
    with pytest.raises(ValueError, match=r"^assignment destination is read-only$"):
        kernel[0] = 5.0
    with pytest.raises(ValueError, match=r"^cannot set WRITEABLE flag to True of this array$"):
        kernel.setflags(write=True)
    sealed = freeze_function(returns_fortran)()
    assert sealed.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert sealed.flags.f_contiguous
    assert not sealed.flags.writeable


def test_module_snapshots_and_partial_keywords_refuse_changes(write_module: Any) -> None:
    write_module("freeze_snapshot_config", "K = 2.0\n")
    user = write_module(
        "freeze_snapshot_user",
        "import functools\nimport freeze_snapshot_config as config\n"
        "def scaled(x, k=1.0):\n    return x * k\n"
        "PARTIAL = functools.partial(scaled, k=2.0)\n"
        "def f():\n    return config.K, PARTIAL\n",
    )
    frozen = freeze_function(user.f)
    snapshot = frozen.function.__globals__["config"]  # type: ignore[attr-defined]
    _, partial = frozen()
    with pytest.raises(TypeError) as caught:
        snapshot.K = 3.0
    assert str(caught.value) == READ_ONLY.format(kind="module snapshot", copy="a local variable")
    with pytest.raises(TypeError) as caught:
        partial.keywords["k"] = 3.0
    assert str(caught.value) == READ_ONLY.format(kind="dict", copy="dict(x)")
    assert (snapshot.K, partial(1.0)) == (2.0, 2.0)


# -- pickling (how a function reaches a Ray actor) --------------------------------------------


def test_a_pickled_copy_keeps_the_frozen_values_not_the_live_module(
    write_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_module("freeze_pickled_config", "K = 2.0\nWEIGHTS = [1.0, 2.0]\n")
    user = write_module(
        "freeze_pickled_user",
        "import freeze_pickled_config as config\n"
        "def f(x):\n    return x * config.K * config.WEIGHTS[1]\n",
    )
    payload = cloudpickle.dumps(freeze_function(user.f))
    monkeypatch.setattr(config, "K", 3.0)
    loaded = cloudpickle.loads(payload)
    assert isinstance(loaded, FrozenFunction)
    assert loaded(1.0) == 4.0
    weights = loaded.function.__globals__["config"].WEIGHTS
    assert (type(weights), weights) == (FrozenList, [1.0, 2.0])
