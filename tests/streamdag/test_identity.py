"""Node identity: canonical encoding, Merkle node ids, and the guarantees that make sharing safe."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

import streamdag as sd
from streamdag.endpoints import PassThrough
from streamdag.errors import CodeHashError, ParamError, UnknownOperatorError
from streamdag.identity import ID_SCHEME, canonical_encode, compute_node_id
from streamdag.operator import MissingPolicy, NodeConfig, OperatorDef, OperatorLogic
from streamdag.operator_registry import lookup, register
from streamdag.params import Param
from streamdag.schema import Schema

# A test-only declaration with a param of every numeric kind: the identity rules must hold for
# any operator. The cross-process script imports this module to get the same one.
WINDOW_MEAN = "test_identity_window_mean"


class WindowMeanForTests(OperatorDef):
    """A per-key window mean declaration with one param of every numeric kind."""

    type_name: ClassVar[str] = WINDOW_MEAN
    # Declares the node options it is tested with: they are refused where not declared.
    supports_interval: ClassVar[bool] = True
    missing_policies: ClassVar[tuple[MissingPolicy, ...]] = ("skip", "interpolate")
    params: ClassVar[tuple[Param, ...]] = (
        Param("field", "str", default="value"),
        Param("window", "int", default=1, minimum=1),
        Param("alpha", "float", default=0.5),
        Param("seed", "int", default=0),
        Param("horizon", "duration", default=0),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """One float64 value."""
        return Schema.of(value="float64")

    @classmethod
    def history(cls, params: Mapping[str, Any]) -> int:
        """The window."""
        return int(params["window"])

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Identity tests never run the logic."""
        return PassThrough()


try:
    lookup(WINDOW_MEAN)
except UnknownOperatorError:
    register(WindowMeanForTests)


def ticks(topic: str = "market.ticks", key: str = "symbol", **schema: str) -> sd.Node:
    return sd.source(
        "ticks", topic=topic, key=key, schema=schema or {"bid": "float64", "ask": "float64"}
    )


def window_mean(stream: sd.Node, **params_and_options: Any) -> sd.Node:
    return stream.apply(WINDOW_MEAN, **params_and_options)


def make_scaler(factor: Any) -> Any:
    def scale(prices):
        return prices[:, -1] * factor

    return scale


class Opaque:
    """No encodable content."""


# -- canonical encoding -----------------------------------------------------------------------


def test_encoding_ignores_dict_order_and_tags_types() -> None:
    assert canonical_encode({"b": [1, 2.5], "a": {"y": None, "x": "s"}}) == canonical_encode(
        {"a": {"x": "s", "y": None}, "b": [1, 2.5]}
    )
    encodings = [canonical_encode(v) for v in (1, 1.0, True, "1", b"1", None, [1], {"1": 1})]
    assert len(set(encodings)) == len(encodings)


def test_encoding_of_zero_sign_nan_and_unknown_types() -> None:
    assert canonical_encode(-0.0) == canonical_encode(0.0)
    with pytest.raises(ValueError, match="NaN has no canonical encoding"):
        canonical_encode({"alpha": math.nan})
    with pytest.raises(TypeError, match="cannot canonically encode Opaque"):
        canonical_encode([Opaque()])


def test_schema_encodes_its_ordered_fields() -> None:
    assert canonical_encode(Schema.of(a="float64", b="int64")) == canonical_encode(
        [["a", "float64"], ["b", "int64"]]
    )


# -- the Merkle id ----------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "operator": "op",
    "version": 1,
    "code_hash": "c" * 64,
    "params": {"window": 20, "field": "price"},
    "output_schema": Schema.of(value="float64"),
    "input_ids": ["a" * 64, "b" * 64],
}


def test_node_id_is_sha256_over_scheme_and_canonical_payload() -> None:
    payload = canonical_encode({
        "operator": "op", "version": 1, "code": "c" * 64,
        "params": {"field": "price", "window": 20},
        "schema": Schema.of(value="float64"), "inputs": ["a" * 64, "b" * 64],
    })
    assert compute_node_id(**BASE) == hashlib.sha256(ID_SCHEME + payload).hexdigest()


@pytest.mark.parametrize(
    ("component", "value"),
    [
        ("operator", "other_op"),
        ("version", 2),
        ("code_hash", "d" * 64),
        ("params", {"window": 21, "field": "price"}),
        ("output_schema", Schema.of(value="int64")),
        ("input_ids", ["b" * 64, "a" * 64]),
        ("input_ids", ["a" * 64]),
    ],
)
def test_every_component_changes_the_node_id(component: str, value: Any) -> None:
    assert compute_node_id(**{**BASE, component: value}) != compute_node_id(**BASE)


def test_param_order_does_not_change_the_node_id() -> None:
    reordered = {**BASE, "params": {"field": "price", "window": 20}}
    assert compute_node_id(**reordered) == compute_node_id(**BASE)


# -- across processes and hash seeds ----------------------------------------------------------

GRAPH_SCRIPT = '''
import json
import os
import sys

import numpy as np

import streamdag as sd

sys.path.insert(0, os.environ["TESTS_FOLDER"])
from test_identity import WINDOW_MEAN

LABELS = frozenset({"bid", "ask", "mid", "last", "open", "close"})
WEIGHTS = {"fast": 0.25, "slow": 0.75}
TAPER = np.linspace(0.0, 1.0, 3)


def make_scaler(factor):
    def scale(prices):
        return (prices * TAPER).sum(axis=1) * factor * WEIGHTS["fast"] + len(LABELS)

    return scale


momentum = sd.udf(period=3)(make_scaler(2.0))
spread = sd.udf(period=2)(lambda bid, ask: ask[:, -1] - bid[:, -1])
params = {"field": "bid", "window": 20, "alpha": 0.1, "seed": 7, "horizon": "5s"}
schema = {"bid": "float64", "ask": "float64"}
if os.environ["ORDER"] == "reversed":
    params = dict(reversed(list(params.items())))
ticks = sd.source("ticks", topic="market.ticks", key="symbol", schema=schema)
graph = sd.Graph("cross_process", outputs=[
    momentum(ticks["bid"], name="momentum"),
    spread(ticks["bid"], ticks["ask"], name="spread"),
    ticks.apply(WINDOW_MEAN, name="mean", **params),
])
print(json.dumps({node.name: node.node_id for node in graph.nodes}))
'''


def test_node_ids_are_identical_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    script = tmp_path / "identity_graph.py"
    script.write_text(GRAPH_SCRIPT)
    runs = []
    for seed, order in (("0", "given"), ("1", "reversed"), ("random", "given")):
        env = {**os.environ, "PYTHONHASHSEED": seed, "ORDER": order,
               "TESTS_FOLDER": str(Path(__file__).parent)}
        done = subprocess.run(
            [sys.executable, str(script)], env=env, cwd=tmp_path,
            capture_output=True, text=True, timeout=120, check=False,
        )
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout))
    assert sorted(runs[0]) == ["mean", "momentum", "spread", "ticks"]
    assert len(set(runs[0].values())) == 4
    assert runs[0] == runs[1] == runs[2]


# -- sources are bound to what they read ------------------------------------------------------


def test_sma_over_another_topic_gets_another_id() -> None:
    sma = ticks(topic="market.ticks").rolling_mean("bid", window=20)
    assert ticks(topic="market.ticks").rolling_mean("bid", window=20).node_id == sma.node_id
    assert ticks(topic="market.ticks.eu").rolling_mean("bid", window=20).node_id != sma.node_id


def test_same_operator_over_other_bindings_gets_other_ids() -> None:
    base = window_mean(ticks(), field="bid", window=20)
    assert window_mean(ticks(), field="bid", window=20).node_id == base.node_id
    others = [
        window_mean(ticks(topic="market.ticks.eu"), field="bid", window=20),
        window_mean(ticks(key="venue"), field="bid", window=20),
        window_mean(ticks(bid="float64", ask="float64", size="float64"), field="bid", window=20),
        window_mean(ticks(bid="float64"), field="bid", window=20),
    ]
    assert len({base.node_id, *(n.node_id for n in others)}) == 5


def test_inputs_in_another_order_get_another_id() -> None:
    first, second = ticks(topic="a"), ticks(topic="b")
    difference = sd.udf(period=1)(lambda x, y: x[:, -1] - y[:, -1])
    assert difference(first["bid"], second["bid"]).node_id != difference(
        second["bid"], first["bid"]
    ).node_id


# -- numeric canonicalization -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "same_as"),
    [
        ({"window": 20.0}, {"window": 20}),
        ({"alpha": 1}, {"alpha": 1.0}),
        ({"alpha": -0.0}, {"alpha": 0.0}),
        ({"horizon": "1s"}, {"horizon": 1_000_000_000}),
        ({"horizon": "1500ms"}, {"horizon": "1.5s"}),
        ({"seed": 3.0}, {"seed": 3}),
        ({"window": 1, "alpha": 0.5, "seed": 0}, {}),
    ],
)
def test_equal_numbers_give_equal_ids(given: dict[str, Any], same_as: dict[str, Any]) -> None:
    assert window_mean(ticks(), **given).node_id == window_mean(ticks(), **same_as).node_id


@pytest.mark.parametrize(
    "change",
    [{"field": "ask"}, {"window": 21}, {"alpha": 0.25}, {"seed": 8}, {"horizon": "2s"},
     {"interval": "1s"}, {"period": 40}, {"missing": "interpolate"}],
)
def test_every_param_and_option_that_changes_behaviour_changes_the_id(
    change: dict[str, Any],
) -> None:
    base = {"field": "bid", "window": 20, "alpha": 0.5, "seed": 7, "horizon": "1s"}
    assert window_mean(ticks(), **{**base, **change}).node_id != window_mean(
        ticks(), **base
    ).node_id


@pytest.mark.parametrize(
    ("params", "shown"),
    [
        ({"alpha": math.nan}, "param 'alpha' got nan (float); expected a float"),
        ({"alpha": math.inf}, "param 'alpha' got inf (float); expected a float"),
        ({"window": 20.5}, "param 'window' got 20.5 (float); expected a int >= 1"),
        ({"seed": True}, "param 'seed' got True (bool); expected a int"),
    ],
)
def test_values_without_a_canonical_form_are_refused(
    params: dict[str, Any], shown: str
) -> None:
    with pytest.raises(ParamError) as caught:
        window_mean(ticks(), name="smoothed", **params)
    assert str(caught.value) == f"node 'smoothed': {shown}"


def test_names_and_tags_are_not_identity() -> None:
    base = window_mean(ticks(), window=5)
    renamed = window_mean(ticks(), window=5, name="other", tags=["team-a"])
    assert renamed.node_id == base.node_id


# -- a built graph is frozen ------------------------------------------------------------------


def test_nodes_cannot_be_mutated() -> None:
    node = window_mean(ticks(), window=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.node_id = "0" * 64  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.params = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        node.params["window"] = 6  # type: ignore[index]
    assert isinstance(node.inputs, tuple)
    assert dict(node.params)["window"] == 5


def test_with_options_returns_a_new_node_and_leaves_no_stale_id() -> None:
    source = ticks()
    old = window_mean(source, window=5)
    old_downstream = window_mean(old, window=3)
    new = old.with_options(period=10)
    assert new is not old
    assert (old.period, new.period) == (5, 10)
    assert new.node_id != old.node_id
    assert old.node_id == window_mean(source, window=5).node_id
    new_downstream = window_mean(new, window=3)
    assert new_downstream.node_id != old_downstream.node_id
    assert old_downstream.inputs == (old,)
    assert old.with_options(period=5).node_id == old.node_id


# -- user function nodes ----------------------------------------------------------------------


def test_udf_nodes_share_an_id_only_for_equal_code_and_values() -> None:
    price = ticks()["bid"]
    first = sd.udf(period=3)(make_scaler(2.0))(price)
    again = sd.udf(period=3)(make_scaler(2.0))(price)
    other_closure = sd.udf(period=3)(make_scaler(3.0))(price)
    other_period = sd.udf(period=4)(make_scaler(2.0))(price)
    assert first.node_id == again.node_id
    assert first.shareable
    assert len({first.node_id, other_closure.node_id, other_period.node_id}) == 3


def test_unhashable_udf_is_refused_or_runs_unshared() -> None:
    with pytest.raises(CodeHashError) as caught:
        sd.udf(period=3)(make_scaler(Opaque()))
    assert "its closure variable 'factor' is a test_identity.Opaque object" in str(caught.value)
    unshared = sd.udf(period=3, shareable=False)(make_scaler(Opaque()))
    price = ticks()["bid"]
    first, second = unshared(price), unshared(price)
    assert not first.shareable
    assert first.node_id == second.node_id
    other = sd.udf(period=3, shareable=False)(make_scaler(Opaque()))(price)
    assert other.node_id != first.node_id
    assert not window_mean(first, window=2).shareable


def test_with_options_keeps_a_udf_nodes_code_identity() -> None:
    price = ticks()["bid"]
    first = sd.udf(period=2, shareable=False)(make_scaler(Opaque()))(price)
    second = sd.udf(period=2, shareable=False)(make_scaler(Opaque()))(price)
    first_changed, second_changed = first.with_options(period=3), second.with_options(period=3)
    assert first_changed.code_hash == first.code_hash
    assert not first_changed.shareable
    assert first_changed.node_id != second_changed.node_id


def make_lambda_scaler(k: float) -> Any:
    return lambda prices: prices[:, -1] * k


def test_udfs_made_in_a_loop_get_the_ids_of_what_they_compute() -> None:
    price = ticks()["bid"]
    # The lambdas bind k late (B023): each must still get the id of what it computes.
    looped = [
        sd.udf(period=1)(lambda prices: prices[:, -1] * k)(price)  # noqa: B023
        for k in (2.0, 3.0)
    ]
    genuine = [sd.udf(period=1)(make_lambda_scaler(k))(price) for k in (2.0, 3.0)]
    assert [node.node_id for node in looped] == [node.node_id for node in genuine]
    assert looped[0].node_id != looped[1].node_id


def test_a_udfs_python_name_is_display_only() -> None:
    def momentum(prices):
        return prices[:, -1] - prices[:, 0]

    def drift(prices):
        return prices[:, -1] - prices[:, 0]

    price = ticks()["bid"]
    first, second = sd.udf(period=3)(momentum)(price), sd.udf(period=3)(drift)(price)
    assert (first.name, second.name) == ("momentum", "drift")
    assert first.node_id == second.node_id
    assert dict(first.params) == {"fields": ("bid",), "output": "value", "outputs": ()}


def test_unshareable_udfs_never_share_an_id() -> None:
    price = ticks()["bid"]
    scaler = make_scaler(2.0)
    shared = sd.udf(period=3)(scaler)(price)
    unshared = sd.udf(period=3, shareable=False)(scaler)
    other_unshared = sd.udf(period=3, shareable=False)(scaler)(price)
    assert unshared(price).node_id == unshared(price).node_id
    assert len({shared.node_id, unshared(price).node_id, other_unshared.node_id}) == 3
    assert unshared.function is scaler


def test_a_module_attribute_a_udf_reads_is_part_of_its_id(
    write_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_module("identity_settings", "FACTOR = 2.0\n")
    user = write_module(
        "identity_reader",
        "import identity_settings as settings\n"
        "def scaled(prices):\n    return prices[:, -1] * settings.FACTOR\n",
    )
    price = ticks()["bid"]
    before = sd.udf(period=1)(user.scaled)(price)
    monkeypatch.setattr(config, "FACTOR", 3.0)
    after = sd.udf(period=1)(user.scaled)(price)
    monkeypatch.setattr(config, "FACTOR", 2.0)
    assert after.node_id != before.node_id
    assert sd.udf(period=1)(user.scaled)(price).node_id == before.node_id


def test_a_frozen_copy_changed_behind_its_back_is_refused_when_a_node_is_built() -> None:
    scaler = sd.udf(period=3)(make_scaler(2.0))
    price = ticks()["bid"]
    scaler(price)
    frozen = scaler.function.function  # type: ignore[attr-defined]
    frozen.__closure__[0].cell_contents = 3.0
    with pytest.raises(CodeHashError) as caught:
        scaler(price)
    line = make_scaler(2.0).__code__.co_firstlineno
    assert str(caught.value) == (
        f"user function test_identity.make_scaler.<locals>.scale (line {line}): its frozen "
        "copy no longer hashes as it did when sd.udf froze it, so nodes built from it would "
        "run something other than what their id names (a value inside the copy was changed "
        "through its __globals__, __closure__ or a base-class method). Apply sd.udf to the "
        "function again, or build it with shareable=False"
    )
