"""Graph specs: exact round trips (dict, TOML, JSON, wire), every refusal, the example graphs."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import streamdag as sd
from runtime.demo import EXAMPLE_GRAPHS_DIR
from streamdag.endpoints import PassThrough
from streamdag.errors import (
    CycleError,
    DanglingInputError,
    DuplicateNameError,
    GraphError,
    ParamError,
    SchemaMismatchError,
    SpecError,
    UnknownOperatorError,
)
from streamdag.graph import Graph, make_node
from streamdag.operator import MissingPolicy, NodeConfig, OperatorDef, OperatorLogic, require_fields
from streamdag.operator_registry import available, register
from streamdag.params import Param
from streamdag.schema import Schema
from streamdag.spec import (
    dump_graph,
    dumps,
    from_wire,
    graph_from_dict,
    graph_to_dict,
    load_graph,
    loads,
    to_wire,
    validate_structure,
)

GRAPHS = EXAMPLE_GRAPHS_DIR


@register
class SpecTestWindowDef(OperatorDef):
    """Test operator with one param of every kind, so dumps and loads meet each of them."""

    type_name: ClassVar[str] = "spec_test_window"
    # Declares the node options it is tested with: they are refused where not declared.
    supports_interval: ClassVar[bool] = True
    missing_policies: ClassVar[tuple[MissingPolicy, ...]] = ("skip", "interpolate")
    params: ClassVar[tuple[Param, ...]] = (
        Param("field", "str", default="value"),
        Param("window", "int", minimum=1),
        Param("span", "duration", default=0),
        Param("weights", "str_list", default=()),
        Param("exprs", "str_map", default=()),
        Param("scale", "float", default=1.0),
        Param("exact", "bool", default=False),
        # Deliberately not canonical (an int default of a float param): dumps must not drift it.
        Param("offset", "float", default=0),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """One float64 value, computed from ``field``."""
        require_fields(cls.type_name, inputs[0], [params["field"]])
        return Schema.of(value="float64")

    @classmethod
    def history(cls, params: Mapping[str, Any]) -> int:
        """The window."""
        return int(params["window"])

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Batches pass through; only the declaration matters here."""
        return PassThrough()


@register
class SpecTestPairDef(OperatorDef):
    """Test operator with two inputs."""

    type_name: ClassVar[str] = "spec_test_pair"
    arity: ClassVar[int | None] = 2
    params: ClassVar[tuple[Param, ...]] = (
        Param("fast_field", "str", default="value"),
        Param("slow_field", "str", default="value"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """One float64 value."""
        require_fields(cls.type_name, inputs[0], [params["fast_field"]])
        require_fields(cls.type_name, inputs[1], [params["slow_field"]])
        return Schema.of(value="float64")

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Batches pass through; only the declaration matters here."""
        return PassThrough()


def _momentum(prices: np.ndarray) -> np.ndarray:
    change: np.ndarray = prices[:, -1] - prices[:, 0]
    return change


def _sdk_graph() -> Graph:
    ticks = sd.source(
        "ticks", topic="market.ticks", key="symbol",
        schema={"price": "float64", "size": "float64"},
    )
    smooth = make_node(
        "spec_test_window",
        [ticks],
        {"field": "price", "window": 3, "span": "250ms", "weights": ["a", "b"],
         "exprs": {"y": "x + 1", "x": "price"}, "scale": 2, "exact": True},
        name="smooth", interval="1s", period=5, missing="interpolate", tags=["alpha", "beta"],
    )
    plain = make_node("spec_test_window", [ticks], {"field": "size", "window": 2, "offset": 0},
                      name="plain")
    pair = make_node("spec_test_pair", [smooth, plain], {}, name="pair")
    out = make_node("kafka_sink", [pair], {"topic": "pairs"}, name="out")
    return Graph("pairs", outputs=[out, smooth])


EXPECTED_DICT: dict[str, Any] = {
    "name": "pairs",
    "outputs": ["out", "smooth"],
    "nodes": [
        {"name": "ticks", "type": "kafka_source",
         "params": {"topic": "market.ticks", "schema": {"price": "float64", "size": "float64"},
                    "key": "symbol"}},
        {"name": "smooth", "type": "spec_test_window", "inputs": ["ticks"],
         "interval": 1_000_000_000, "period": 5, "missing": "interpolate",
         "tags": ["alpha", "beta"],
         "params": {"field": "price", "window": 3, "span": 250_000_000, "weights": ["a", "b"],
                    "exprs": {"x": "price", "y": "x + 1"}, "scale": 2.0, "exact": True}},
        {"name": "plain", "type": "spec_test_window", "inputs": ["ticks"],
         "params": {"field": "size", "window": 2, "offset": 0.0}},
        {"name": "pair", "type": "spec_test_pair", "inputs": ["smooth", "plain"], "params": {}},
        {"name": "out", "type": "kafka_sink", "inputs": ["pair"], "params": {"topic": "pairs"}},
    ],
}

EXPECTED_TOML = """\
name = "pairs"
outputs = [
    "out",
    "smooth",
]

[[nodes]]
name = "ticks"
type = "kafka_source"

[nodes.params]
topic = "market.ticks"
key = "symbol"

[nodes.params.schema]
price = "float64"
size = "float64"

[[nodes]]
name = "smooth"
type = "spec_test_window"
inputs = [
    "ticks",
]
interval = 1000000000
period = 5
missing = "interpolate"
tags = [
    "alpha",
    "beta",
]

[nodes.params]
field = "price"
window = 3
span = 250000000
weights = [
    "a",
    "b",
]
scale = 2.0
exact = true

[nodes.params.exprs]
x = "price"
y = "x + 1"

[[nodes]]
name = "plain"
type = "spec_test_window"
inputs = [
    "ticks",
]

[nodes.params]
field = "size"
window = 2
offset = 0.0

[[nodes]]
name = "pair"
type = "spec_test_pair"
inputs = [
    "smooth",
    "plain",
]

[nodes.params]

[[nodes]]
name = "out"
type = "kafka_sink"
inputs = [
    "pair",
]

[nodes.params]
topic = "pairs"
"""


def _same_graph(loaded: Graph, original: Graph) -> None:
    assert loaded.name == original.name
    assert loaded.node_ids == original.node_ids
    assert [n.node_id for n in loaded.outputs] == [n.node_id for n in original.outputs]
    for new, old in zip(loaded.nodes, original.nodes, strict=True):
        assert (new.name, new.operator, new.interval, new.period, new.missing, new.tags) == (
            old.name, old.operator, old.interval, old.period, old.missing, old.tags
        )
        assert dict(new.params) == dict(old.params)
        assert [i.node_id for i in new.inputs] == [i.node_id for i in old.inputs]


def _spec() -> dict[str, Any]:
    return {
        "name": "g",
        "nodes": [
            {"name": "ticks", "type": "kafka_source",
             "params": {"topic": "t", "schema": {"price": "float64"}, "key": "symbol"}},
            {"name": "smooth", "type": "spec_test_window", "inputs": ["ticks"],
             "params": {"field": "price", "window": 3}},
            {"name": "out", "type": "kafka_sink", "inputs": ["smooth"], "params": {"topic": "o"}},
        ],
    }


def _error(kind: type[Exception], data: Any) -> str:
    with pytest.raises(kind) as info:
        graph_from_dict(data)
    assert type(info.value) is kind
    return str(info.value)


# -- round trips ----------------------------------------------------------------------------
def test_graph_to_dict_is_canonical_and_round_trips() -> None:
    graph = _sdk_graph()
    assert graph_to_dict(graph) == EXPECTED_DICT
    assert json.dumps(graph_to_dict(graph)) == json.dumps(EXPECTED_DICT)  # key order too
    _same_graph(graph_from_dict(graph_to_dict(graph)), graph)


def test_toml_dump_is_exact_and_a_fixed_point() -> None:
    graph = _sdk_graph()
    text = dumps(graph, "toml")
    assert text == EXPECTED_TOML
    loaded = loads(text, "toml")
    _same_graph(loaded, graph)
    assert dumps(loaded, "toml") == text


def test_json_dump_is_a_fixed_point() -> None:
    graph = _sdk_graph()
    text = dumps(graph, "json")
    assert json.loads(text) == EXPECTED_DICT
    assert text.startswith('{\n  "name": "pairs",\n  "outputs": [\n    "out",\n')
    loaded = loads(text, "json")
    _same_graph(loaded, graph)
    assert dumps(loaded, "json") == text


def test_wire_round_trip_is_exact() -> None:
    graph = _sdk_graph()
    wire = to_wire(graph)
    loaded = from_wire(wire)
    _same_graph(loaded, graph)
    assert to_wire(loaded) == wire


def test_nodes_may_be_listed_in_any_order() -> None:
    shuffled = copy.deepcopy(EXPECTED_DICT)
    random.Random(7).shuffle(shuffled["nodes"])
    assert [n["name"] for n in shuffled["nodes"]] != [n["name"] for n in EXPECTED_DICT["nodes"]]
    _same_graph(graph_from_dict(shuffled), _sdk_graph())


def test_outputs_default_to_the_nodes_nothing_consumes() -> None:
    graph = graph_from_dict(_spec())
    assert [n.name for n in graph.outputs] == ["out"]
    assert [n.name for n in graph.nodes] == ["ticks", "smooth", "out"]
    assert graph_to_dict(graph)["outputs"] == ["out"]


def test_durations_read_as_strings_dump_as_nanoseconds() -> None:
    data = _spec()
    data["nodes"][1]["interval"] = "250ms"
    data["nodes"][1]["params"]["span"] = "1.5s"
    entry = graph_to_dict(graph_from_dict(data))["nodes"][1]
    assert entry["interval"] == 250_000_000
    assert entry["params"]["span"] == 1_500_000_000


def test_files_by_suffix(tmp_path: Path) -> None:
    graph = _sdk_graph()
    for suffix in (".toml", ".json"):
        path = tmp_path / f"pairs{suffix}"
        dump_graph(graph, path)
        _same_graph(load_graph(path), graph)
        _same_graph(load_graph(str(path)), graph)
    assert (tmp_path / "pairs.toml").read_text() == EXPECTED_TOML


def test_validate_structure_orders_by_listing_order() -> None:
    assert validate_structure({"o": ["b"], "b": ["a", "t"], "a": ["t"], "t": []}) == [
        "t", "a", "b", "o"
    ]


# -- refusals -------------------------------------------------------------------------------
def test_unknown_top_level_key() -> None:
    data = {**_spec(), "graph": "x"}
    assert _error(SpecError, data) == (
        "graph spec: unknown key 'graph'; allowed keys are name, outputs, delivery, "
        "parallelism, nodes"
    )


def test_unknown_node_key() -> None:
    data = _spec()
    data["nodes"][1]["window"] = 3
    data["nodes"][1]["colour"] = "red"
    assert _error(SpecError, data) == (
        "node 'smooth': unknown keys 'window', 'colour'; allowed keys are name, type, inputs, "
        "interval, period, missing, tags, parallelism, params (operator params go in its "
        "params table)"
    )


def test_duplicate_node_name() -> None:
    data = _spec()
    data["nodes"].append({"name": "smooth", "type": "spec_test_window", "inputs": ["ticks"],
                          "params": {"field": "price", "window": 4}})
    assert _error(DuplicateNameError, data) == (
        "graph spec 'g': nodes[1] and nodes[3] are both named 'smooth'; "
        "give each node a unique name"
    )


def test_dangling_input() -> None:
    data = _spec()
    data["nodes"][1]["inputs"] = ["tick"]
    assert _error(DanglingInputError, data) == (
        "node 'smooth' reads input 'tick', which is not defined in the graph (3 nodes "
        "defined); did you mean 'ticks'?"
    )


def test_cycle_names_its_path() -> None:
    data = _spec()
    data["nodes"] += [
        {"name": "a", "type": "spec_test_window", "inputs": ["c"], "params": {"window": 1}},
        {"name": "b", "type": "spec_test_window", "inputs": ["a"], "params": {"window": 1}},
        {"name": "c", "type": "spec_test_window", "inputs": ["b"], "params": {"window": 1}},
    ]
    with pytest.raises(CycleError) as info:
        graph_from_dict(data)
    assert info.value.cycle == ["a", "b", "c"]
    assert str(info.value).startswith("cycle found: a -> b -> c -> a. Streams must flow one way")


def test_self_loop_is_a_cycle() -> None:
    data = _spec()
    data["nodes"][1]["inputs"] = ["smooth"]
    with pytest.raises(CycleError) as info:
        graph_from_dict(data)
    assert info.value.cycle == ["smooth"]
    assert str(info.value).startswith("cycle found: smooth -> smooth.")


def test_structure_is_checked_before_any_node_is_built() -> None:
    data = _spec()
    data["nodes"][1]["params"]["window"] = -1  # would be a ParamError when built
    data["nodes"][2]["inputs"] = ["out"]
    with pytest.raises(CycleError):
        graph_from_dict(data)


def test_bad_param_value_names_node_param_value_and_expectation() -> None:
    data = _spec()
    data["nodes"][1]["params"]["window"] = -1
    assert _error(ParamError, data) == (
        "node 'smooth': param 'window' got -1 (int); expected a int >= 1"
    )


def test_unknown_param() -> None:
    data = _spec()
    data["nodes"][1]["params"]["windw"] = 3
    message = _error(ParamError, data)
    assert message.startswith("node 'smooth': operator 'spec_test_window' has no param 'windw'")


def test_unknown_operator() -> None:
    data = _spec()
    data["nodes"][1]["type"] = "spec_test_windw"
    assert _error(UnknownOperatorError, data) == (
        "node 'smooth': unknown operator type 'spec_test_windw' (did you mean "
        f"'spec_test_window'?); installed operators are {', '.join(available())}"
    )


def test_schema_mismatch() -> None:
    data = _spec()
    data["nodes"][1]["params"]["field"] = "volume"
    assert _error(SchemaMismatchError, data) == (
        "node 'smooth': spec_test_window needs field 'volume' but its input carries "
        "['price']; pass one of those as the field"
    )


def test_bad_source_schema_names_the_node() -> None:
    data = _spec()
    data["nodes"][0]["params"]["schema"] = {"price": "decimal"}
    message = _error(ParamError, data)
    assert message.startswith("node 'ticks': param 'schema' got {'price': 'decimal'} (dict)")


def test_wrong_arity_names_the_node() -> None:
    data = _spec()
    data["nodes"][1]["type"] = "spec_test_pair"
    data["nodes"][1]["params"] = {}
    assert _error(GraphError, data) == (
        "node 'smooth': operator 'spec_test_pair' takes 2 input(s), got 1"
    )


def test_user_function_cannot_be_loaded() -> None:
    data = _spec()
    data["nodes"][1] = {"name": "mom", "type": "user_function", "inputs": ["ticks"],
                        "params": {"fields": ["price"], "function_name": "os.system"}}
    data["nodes"][2]["inputs"] = ["mom"]
    assert _error(SpecError, data) == (
        "node 'mom': operator 'user_function' runs Python code, and graph specs are data only "
        "(no code, pickles or import paths). Build this node with @streamdag.udf in a trusted "
        "driver, or install the function as an operator and name its type here"
    )


def test_user_function_cannot_be_dumped() -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    node = make_node("spec_test_window", [ticks], {"field": "price", "window": 3},
                     name="mom", function=_momentum, code_hash="f" * 64)
    graph = Graph("g", outputs=[node])
    line = _momentum.__code__.co_firstlineno
    expected = (
        f"node 'mom' runs user function {__name__}._momentum (line {line}); graph specs are "
        "data only and cannot carry its code. Install it as an operator (an OperatorDef "
        "registered with streamdag.operator_registry.register) and build the node by that type "
        "name, or submit this graph through the SDK instead of a spec"
    )
    for dump in (graph_to_dict, lambda g: dumps(g, "toml"), to_wire):
        with pytest.raises(SpecError) as info:
            dump(graph)
        assert str(info.value) == expected


def test_custom_code_hash_cannot_be_dumped() -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    node = make_node("spec_test_window", [ticks], {"field": "price", "window": 3},
                     name="odd", code_hash="0" * 64)
    with pytest.raises(SpecError) as info:
        graph_to_dict(Graph("g", outputs=[node]))
    assert str(info.value).startswith("node 'odd' was built with code hash 000000000000, ")


def test_output_that_is_not_a_node() -> None:
    data = {**_spec(), "outputs": ["outt"]}
    assert _error(DanglingInputError, data) == (
        "graph spec 'g': output 'outt' is not a node of the graph (did you mean 'out'?); "
        "the nodes are ['ticks', 'smooth', 'out']"
    )


def test_node_feeding_no_output() -> None:
    data = {**_spec(), "outputs": ["smooth"]}
    assert _error(SpecError, data) == (
        "graph spec 'g': node(s) ['out'] feed none of the outputs ['smooth']; "
        "add them to outputs, or remove them"
    )


def test_two_names_for_one_computation() -> None:
    data = _spec()
    data["nodes"].append({"name": "smooth_again", "type": "spec_test_window",
                          "inputs": ["ticks"], "params": {"field": "price", "window": 3}})
    assert _error(GraphError, data) == (
        "graph spec 'g': nodes 'smooth' and 'smooth_again' are the same computation (same "
        "operator, params, options and inputs), so they would run as one node; keep one and "
        "point its consumers at it"
    )


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("inputs", "ticks", "'inputs' got 'ticks' (str); expected a list of node names"),
        ("interval", "soon", "'interval' got 'soon' (str); expected a positive duration "
                             "(int nanoseconds, or a string like '1s')"),
        ("interval", 0, "'interval' got 0 (int); expected a positive duration "
                        "(int nanoseconds, or a string like '1s')"),
        ("period", 0, "'period' got 0 (int); expected an int between 1 and 1000000"),
        ("period", 10**12, "'period' got 1000000000000 (int); expected an int between 1 and "
                           "1000000"),
        ("missing", "guess", "'missing' got 'guess' (str); expected one of "
                             "['skip', 'fail', 'interpolate']"),
        ("tags", [1], "'tags' got [1] (list); expected a list of strings"),
        ("params", [], "'params' got [] (list); expected a table of the operator's params"),
        ("type", "", "'type' got ''; expected an installed operator's type name, "
                     "a non-empty string"),
    ],
)
def test_node_option_types(key: str, value: Any, expected: str) -> None:
    data = _spec()
    data["nodes"][1][key] = value
    assert _error(SpecError, data) == f"node 'smooth': {expected}"


def test_graph_shape_errors() -> None:
    assert _error(SpecError, ["not", "a", "table"]) == (
        "a graph spec must be a table with keys ['name', 'outputs', 'delivery', 'parallelism', "
        "'nodes'], got list"
    )
    assert _error(SpecError, {"nodes": _spec()["nodes"]}) == (
        "graph spec: 'name' got None; expected the graph's name, a non-empty string"
    )
    assert _error(SpecError, {"name": "g", "nodes": []}) == (
        "graph spec 'g': 'nodes' got []; expected a non-empty list of node tables "
        "([[nodes]] in TOML)"
    )
    assert _error(SpecError, {"name": "g", "nodes": [{"type": "kafka_source"}]}) == (
        "graph spec: nodes[0] has 'name' None; expected the node's name, a non-empty string"
    )


def test_unparsable_text_and_bytes() -> None:
    with pytest.raises(SpecError) as info:
        loads('name = "g"\nnodes = [', "toml")
    assert str(info.value).startswith("cannot parse the graph spec as TOML: ")
    with pytest.raises(SpecError) as info:
        loads('{"name": ', "json")
    assert str(info.value).startswith("cannot parse the graph spec as JSON: Expecting value: ")
    with pytest.raises(SpecError) as info:
        from_wire(b"\xc1\x00")
    assert str(info.value).startswith("cannot decode 2 bytes as a msgpack graph spec (")


def test_unknown_format_and_suffix(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        loads("{}", "yaml")  # type: ignore[arg-type]
    assert str(info.value) == "unknown graph spec format 'yaml'; expected 'toml' or 'json'"
    path = tmp_path / "g.yaml"
    path.write_text("name: g\n")
    with pytest.raises(SpecError) as info:
        load_graph(path)
    assert str(info.value) == (
        f"cannot tell the format of graph spec {str(path)!r} from its suffix '.yaml'; "
        "name it *.toml or *.json"
    )


# -- the example graphs (they need the built-in operators) ----------------------------------
def _node_ids(graph: Graph) -> dict[str, str]:
    return {node.name: node.node_id for node in graph.nodes}


def test_example_graphs_load() -> None:
    momentum = load_graph(GRAPHS / "momentum.toml")
    assert list(_node_ids(momentum)) == ["ticks", "sma20", "sma50", "crossover", "to_signals"]
    assert momentum.node("to_signals").params["topic"] == "signals.momentum"
    reversion = load_graph(GRAPHS / "mean_reversion.toml")
    assert list(_node_ids(reversion)) == [
        "ticks", "zscore20", "sma20", "price_cross", "signal", "to_signals"
    ]
    assert reversion.node("to_signals").params["topic"] == "signals.mean_reversion"
    bars = load_graph(GRAPHS / "bars_vwap.toml")
    assert list(_node_ids(bars)) == ["ticks", "bars_1s", "to_bars", "vwap50", "to_vwap"]
    assert bars.node("bars_1s").params["bar"] == 1_000_000_000
    assert bars.node("bars_1s").params["lateness"] == 200_000_000


def test_example_graphs_share_the_source_and_sma20() -> None:
    momentum = _node_ids(load_graph(GRAPHS / "momentum.toml"))
    reversion = _node_ids(load_graph(GRAPHS / "mean_reversion.toml"))
    bars = _node_ids(load_graph(GRAPHS / "bars_vwap.toml"))
    assert momentum["ticks"] == reversion["ticks"] == bars["ticks"]
    assert momentum["sma20"] == reversion["sma20"]
    shared = set(momentum.values()) & set(reversion.values())
    assert shared == {momentum["ticks"], momentum["sma20"]}


def test_json_twin_of_momentum_is_its_canonical_dump() -> None:
    from_toml = load_graph(GRAPHS / "momentum.toml")
    from_json = load_graph(GRAPHS / "momentum.json")
    _same_graph(from_json, from_toml)
    assert dumps(from_toml, "json") == (GRAPHS / "momentum.json").read_text()


@pytest.mark.parametrize("file", ["momentum.toml", "mean_reversion.toml", "bars_vwap.toml"])
def test_example_graphs_round_trip(file: str) -> None:
    graph = load_graph(GRAPHS / file)
    text = dumps(graph, "toml")
    _same_graph(loads(text, "toml"), graph)
    assert dumps(loads(text, "toml"), "toml") == text
    _same_graph(from_wire(to_wire(graph)), graph)



# -- refused when built: limits, topics and messages that say enough ------------------------
def test_unknown_param_suggests_the_closest_name() -> None:
    data = _spec()
    data["nodes"][1]["params"]["windw"] = 3
    assert _error(ParamError, data) == (
        "node 'smooth': operator 'spec_test_window' has no param 'windw' (did you mean "
        "'window'?); its params are ['exact', 'exprs', 'field', 'offset', 'scale', 'span', "
        "'weights', 'window']"
    )


def test_unknown_operator_from_the_sdk_names_the_node_and_the_closest_operator() -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    installed = ", ".join(available())
    with pytest.raises(UnknownOperatorError) as named:
        ticks.apply("rolling_maen", field="price", window=3, name="sma")
    assert str(named.value) == (
        "node 'sma': unknown operator type 'rolling_maen' (did you mean 'rolling_mean'?); "
        f"installed operators are {installed}"
    )
    with pytest.raises(UnknownOperatorError) as unnamed:
        make_node("teleport", [ticks], {})
    assert str(unnamed.value) == (
        "a node reading ['ticks']: unknown operator type 'teleport'; installed operators are "
        f"{installed}"
    )


@pytest.mark.parametrize("time_window", [-5, "-5s", -1.0])
def test_a_negative_time_window_says_what_was_given_and_that_it_must_be_positive(
    time_window: Any,
) -> None:
    data = _spec()
    data["nodes"][1] = {"name": "m", "type": "rolling_mean", "inputs": ["ticks"],
                        "params": {"field": "price", "time_window": time_window}}
    data["nodes"][2]["inputs"] = ["m"]
    assert _error(ParamError, data) == (
        f"node 'm': param 'time_window' got {time_window!r} ({type(time_window).__name__}), "
        "a negative duration: it must be positive; expected a duration (int nanoseconds, or a "
        "string like '500ms', '5s', '1m') between 0 and 31d"
    )


def test_a_bad_schema_type_names_the_field() -> None:
    data = _spec()
    data["nodes"][0]["params"]["schema"] = {"price": "float64", "size": "int"}
    assert _error(ParamError, data) == (
        "node 'ticks': param 'schema' got {'price': 'float64', 'size': 'int'} (dict), field "
        "'size' has type 'int' (did you mean 'int64'?), not one of bool, float64, int64; "
        "expected a mapping of field names to types (float64, int64, bool)"
    )
    with pytest.raises(SchemaMismatchError) as direct:
        Schema.of(price="float64", live=7)  # type: ignore[arg-type]
    assert str(direct.value) == "field 'live' has type 7, not one of bool, float64, int64"


def test_a_shared_sink_loads_and_dumps_its_option() -> None:
    data = _spec()
    data["nodes"][2]["params"]["shared"] = True
    graph = graph_from_dict(data)
    assert graph.node("out").params["shared"] is True
    assert graph_to_dict(graph)["nodes"][2]["params"] == {"topic": "o", "shared": True}
    plain = graph_from_dict(_spec())
    assert "shared" not in graph_to_dict(plain)["nodes"][2]["params"]
    assert plain.node("out").node_id != graph.node("out").node_id


def test_a_graphs_delivery_round_trips_and_a_wrong_one_is_refused() -> None:
    ticks = sd.source("ticks", topic="market.ticks", key="symbol", schema={"price": "float64"})
    graph = sd.Graph("eo", outputs=[ticks.to_topic("copy", name="out")],
                     delivery="at_least_once")
    text = dumps(graph, "toml")
    again = loads(text, "toml")

    assert 'delivery = "at_least_once"' in text
    assert again.delivery == "at_least_once" and again.node_ids == graph.node_ids
    assert "delivery" not in dumps(sd.Graph("eo", outputs=[ticks]), "toml")
    with pytest.raises(GraphError) as refused:
        loads(text.replace("at_least_once", "twice"), "toml")
    assert str(refused.value) == ("graph 'eo': delivery 'twice' is unknown; expected one of "
                                  "['exactly_once', 'at_least_once']")
