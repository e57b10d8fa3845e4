"""Graph specs: graphs as data (TOML, JSON, msgpack on the wire), loaded and dumped exactly.

A spec names operator types from the installed registry, their params, each node's inputs and
options; it never carries code, pickles or import paths, so user-function nodes cannot be put
in one. The shape (nodes may be listed in any order; ``outputs`` defaults to the nodes nothing
consumes)::

    name = "momentum"
    outputs = ["to_signals"]

    [[nodes]]
    name = "ticks"
    type = "kafka_source"

    [nodes.params]
    topic = "market.ticks"
    schema = { price = "float64", size = "float64" }
    key = "symbol"

    [[nodes]]
    name = "sma20"
    type = "rolling_mean"
    inputs = ["ticks"]
    tags = ["trend"]      # node options: interval, period, missing, tags, parallelism
    params = { field = "price", window = 20 }

Dumps are canonical: nodes in topological order, params in declaration order and only where
they differ from their defaults, options only where set, durations as int nanoseconds; so
``dumps(loads(text))`` of a dump is that dump, byte for byte, and node ids survive every trip.

>>> import streamdag as sd
>>> ticks = sd.source("ticks", topic="market.ticks", key="symbol", schema={"price": "float64"})
>>> graph = sd.Graph("copy", outputs=[ticks.to_topic("ticks.copy", name="out")])
>>> print(dumps(graph, "toml"))
name = "copy"
outputs = [
    "out",
]
<BLANKLINE>
[[nodes]]
name = "ticks"
type = "kafka_source"
<BLANKLINE>
[nodes.params]
topic = "market.ticks"
key = "symbol"
<BLANKLINE>
[nodes.params.schema]
price = "float64"
<BLANKLINE>
[[nodes]]
name = "out"
type = "kafka_sink"
inputs = [
    "ticks",
]
<BLANKLINE>
[nodes.params]
topic = "ticks.copy"
<BLANKLINE>
>>> loads(dumps(graph, "json"), "json").node_ids == graph.node_ids
True
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import msgpack
import tomli_w

from streamdag.codehash import describe_function
from streamdag.errors import (
    DanglingInputError,
    DuplicateNameError,
    GraphError,
    SpecError,
    StreamdagError,
    UnknownOperatorError,
    did_you_mean,
)
from streamdag.graph import Graph, Node, make_node
from streamdag.identity import canonical_encode
from streamdag.operator import MissingPolicy, OperatorDef
from streamdag.operator_registry import lookup
from streamdag.params import MAX_EVENTS, parse_duration
from streamdag.schema import Schema
from streamdag.structure import validate_structure

__all__ = [
    "GRAPH_KEYS",
    "NODE_KEYS",
    "SpecFormat",
    "dump_graph",
    "dumps",
    "from_wire",
    "graph_from_dict",
    "graph_to_dict",
    "load_graph",
    "loads",
    "to_wire",
]

SpecFormat = Literal["toml", "json"]

#: The keys a graph spec may have at its top level.
GRAPH_KEYS: tuple[str, ...] = ("name", "outputs", "delivery", "parallelism", "nodes")
#: The keys a spec node may have, in the order dumps write them.
NODE_KEYS: tuple[str, ...] = (
    "name", "type", "inputs", "interval", "period", "missing", "tags", "parallelism", "params"
)

_USER_FUNCTION = "user_function"
_SUFFIXES: Mapping[str, SpecFormat] = {".toml": "toml", ".json": "json"}


@dataclass(frozen=True)
class _SpecNode:
    """One node of a spec after its shape was checked, before anything is built."""

    name: str
    type: str
    inputs: tuple[str, ...]
    params: Mapping[str, Any]
    interval: int | None
    period: int | None
    missing: MissingPolicy
    tags: tuple[str, ...]
    parallelism: int | None = None


# -- files, text and the wire -----------------------------------------------------------------
def load_graph(path: str | Path) -> Graph:
    """The graph in spec file ``path``, read as TOML or JSON by its suffix."""
    path = Path(path)
    return loads(path.read_text(encoding="utf-8"), _format_of(path))


def dump_graph(graph: Graph, path: str | Path) -> None:
    """Write ``graph`` to spec file ``path``, as TOML or JSON by its suffix."""
    path = Path(path)
    path.write_text(dumps(graph, _format_of(path)), encoding="utf-8")


def loads(text: str, format: SpecFormat) -> Graph:
    """The graph in spec ``text`` of ``format`` (``"toml"`` or ``"json"``)."""
    if format == "toml":
        try:
            data: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(
                f"cannot parse the graph spec as TOML: {exc}; fix the syntax there"
            ) from None
    elif format == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(
                f"cannot parse the graph spec as JSON: {exc}; fix the syntax there"
            ) from None
    else:
        raise _unknown_format(format)
    return graph_from_dict(data)


def dumps(graph: Graph, format: SpecFormat) -> str:
    """The canonical spec text of ``graph`` in ``format`` (``"toml"`` or ``"json"``)."""
    data = graph_to_dict(graph)
    if format == "toml":
        return tomli_w.dumps(data)
    if format == "json":
        return json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    raise _unknown_format(format)


def to_wire(graph: Graph) -> bytes:
    """The graph's spec as msgpack bytes (the dict form), for the gateway and the controller."""
    packed: bytes = msgpack.packb(graph_to_dict(graph), use_bin_type=True)
    return packed


def from_wire(data: bytes) -> Graph:
    """The graph in msgpack bytes made by ``to_wire``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SpecError(f"a wire graph spec must be bytes, got {type(data).__name__}")
    try:
        decoded = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise SpecError(
            f"cannot decode {len(data)} bytes as a msgpack graph spec ({exc}); send the bytes "
            "that streamdag.spec.to_wire produced"
        ) from None
    return graph_from_dict(decoded)


# -- dict form: loading -----------------------------------------------------------------------
def graph_from_dict(data: Mapping[str, Any]) -> Graph:
    """Check a spec's raw data, then build its graph; errors name the spec node at fault.

    Steps, all before any node is built: 1. the shape (known keys, value types, data only);
    2. unique names; 3. no dangling input and no cycle; 4. outputs; 5. known operator types.
    Then 6. nodes are built in topological order (params and schemas validated there) and
    7. made into a graph.
    """
    # Step 1: shape.
    if not isinstance(data, Mapping):
        raise SpecError(
            f"a graph spec must be a table with keys {list(GRAPH_KEYS)}, "
            f"got {type(data).__name__}"
        )
    _refuse_unknown_keys("graph spec", data, GRAPH_KEYS)
    graph_name = data.get("name")
    if not isinstance(graph_name, str) or not graph_name:
        raise SpecError(
            f"graph spec: 'name' got {graph_name!r}; expected the graph's name, "
            "a non-empty string"
        )
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list | tuple) or not raw_nodes:
        raise SpecError(
            f"graph spec {graph_name!r}: 'nodes' got {raw_nodes!r}; expected a non-empty "
            "list of node tables ([[nodes]] in TOML)"
        )
    nodes = [_read_node(position, raw) for position, raw in enumerate(raw_nodes)]
    # Step 2: unique names.
    first_position: dict[str, int] = {}
    for position, node in enumerate(nodes):
        if node.name in first_position:
            raise DuplicateNameError(
                f"graph spec {graph_name!r}: nodes[{first_position[node.name]}] and "
                f"nodes[{position}] are both named {node.name!r}; give each node a unique name"
            )
        first_position[node.name] = position
    # Step 3: dangling inputs and cycles.
    by_name = {node.name: node for node in nodes}
    order = validate_structure({node.name: node.inputs for node in nodes})
    # Step 4: outputs.
    outputs = _read_outputs(graph_name, data, nodes)
    # Step 5: operator types.
    for node in nodes:
        _require_known_operator(node)
    # Step 6: build.
    built: dict[str, Node] = {}
    for name in order:
        built[name] = _build(by_name[name], built)
    _refuse_merged_nodes(graph_name, [built[node.name] for node in nodes])
    # Step 7: the graph (it checks sink topics and the delivery).
    delivery = data.get("delivery")
    if delivery is not None and not isinstance(delivery, str):
        raise SpecError(f"graph spec {graph_name!r}: 'delivery' got {delivery!r}; expected "
                        "\"exactly_once\" or \"at_least_once\"")
    return Graph(graph_name, outputs=[built[name] for name in outputs], delivery=delivery,
                 parallelism=data.get("parallelism"))


def _read_node(position: int, raw: Any) -> _SpecNode:
    if not isinstance(raw, Mapping):
        raise SpecError(
            f"graph spec: nodes[{position}] got {raw!r} ({type(raw).__name__}); expected a "
            f"table with keys {list(NODE_KEYS)}"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(
            f"graph spec: nodes[{position}] has 'name' {name!r}; expected the node's name, "
            "a non-empty string"
        )
    label = f"node {name!r}"
    _refuse_unknown_keys(label, raw, NODE_KEYS, hint=" (operator params go in its params table)")
    type_name = raw.get("type")
    if not isinstance(type_name, str) or not type_name:
        raise SpecError(
            f"{label}: 'type' got {type_name!r}; expected an installed operator's type name, "
            "a non-empty string"
        )
    if type_name == _USER_FUNCTION:
        raise SpecError(
            f"{label}: operator 'user_function' runs Python code, and graph specs are data "
            "only (no code, pickles or import paths). Build this node with @streamdag.udf in a "
            "trusted driver, or install the function as an operator and name its type here"
        )
    inputs = _typed(label, raw, "inputs", [], "a list of node names", _is_str_list)
    params = _typed(label, raw, "params", {}, "a table of the operator's params",
                    lambda v: isinstance(v, Mapping) and all(isinstance(k, str) for k in v))
    if params.get("function_output"):
        raise SpecError(
            f"{label}: param 'function_output' names the column of a user function over window "
            "values, which runs Python code, and graph specs are data only. Build this node "
            "with the SDK in a trusted driver (agg=[..., function])"
        )
    interval = _typed(label, raw, "interval", None,
                      "a positive duration (int nanoseconds, or a string like '1s')",
                      _is_positive_duration)
    period = _typed(label, raw, "period", None, f"an int between 1 and {MAX_EVENTS}",
                    lambda v: isinstance(v, int) and not isinstance(v, bool)
                    and 1 <= v <= MAX_EVENTS)
    missing = _typed(label, raw, "missing", "skip", f"one of {list(get_args(MissingPolicy))}",
                     lambda v: v in get_args(MissingPolicy))
    tags = _typed(label, raw, "tags", [], "a list of strings", _is_str_list)
    return _SpecNode(
        name=name,
        type=type_name,
        inputs=tuple(inputs),
        params=dict(params),
        interval=None if interval is None else parse_duration(interval),
        period=period,
        missing=missing,
        tags=tuple(tags),
        parallelism=raw.get("parallelism"),  # checked where the node is built
    )


def _typed(
    label: str, raw: Mapping[str, Any], key: str, default: Any, expected: str,
    valid: Callable[[Any], bool],
) -> Any:
    if key not in raw:
        return default
    value = raw[key]
    if not valid(value):
        raise SpecError(f"{label}: {key!r} got {value!r} ({type(value).__name__}); "
                        f"expected {expected}")
    return value


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)


def _is_positive_duration(value: Any) -> bool:
    if not isinstance(value, int | str):
        return False
    try:
        return parse_duration(value) > 0
    except ValueError:
        return False


def _refuse_unknown_keys(
    label: str, raw: Mapping[str, Any], allowed: Sequence[str], hint: str = ""
) -> None:
    unknown = [key for key in raw if key not in allowed]
    if unknown:
        listed = ", ".join(repr(key) for key in unknown)
        noun = "key" if len(unknown) == 1 else "keys"
        raise SpecError(
            f"{label}: unknown {noun} {listed}; allowed keys are {', '.join(allowed)}{hint}"
        )


def _read_outputs(graph_name: str, data: Mapping[str, Any], nodes: list[_SpecNode]) -> list[str]:
    inputs_of = {node.name: node.inputs for node in nodes}
    if "outputs" not in data:
        consumed = {upstream for node in nodes for upstream in node.inputs}
        return [node.name for node in nodes if node.name not in consumed]
    outputs = data["outputs"]
    if not _is_str_list(outputs) or not outputs:
        raise SpecError(
            f"graph spec {graph_name!r}: 'outputs' got {outputs!r}; expected a non-empty list "
            "of node names (or leave it out: the outputs are then the nodes nothing consumes)"
        )
    for name in outputs:
        if name not in inputs_of:
            raise DanglingInputError(
                f"graph spec {graph_name!r}: output {name!r} is not a node of the graph"
                f"{did_you_mean(name, inputs_of)}; the nodes are {list(inputs_of)}"
            )
    feeding = set(outputs)
    stack = list(outputs)
    while stack:
        for upstream in inputs_of[stack.pop()]:
            if upstream not in feeding:
                feeding.add(upstream)
                stack.append(upstream)
    stray = [node.name for node in nodes if node.name not in feeding]
    if stray:
        raise SpecError(
            f"graph spec {graph_name!r}: node(s) {stray} feed none of the outputs {outputs}; "
            "add them to outputs, or remove them"
        )
    return list(outputs)


def _require_known_operator(node: _SpecNode) -> None:
    try:
        lookup(node.type)
    except UnknownOperatorError as exc:
        raise UnknownOperatorError(f"node {node.name!r}: {exc}") from None


def _build(node: _SpecNode, built: Mapping[str, Node]) -> Node:
    try:
        return make_node(
            node.type,
            [built[name] for name in node.inputs],
            node.params,
            name=node.name,
            interval=node.interval,
            period=node.period,
            missing=node.missing,
            tags=node.tags,
            parallelism=node.parallelism,
        )
    except StreamdagError as exc:
        prefix = f"node {node.name!r}"
        if str(exc).startswith(prefix):
            raise
        raise type(exc)(f"{prefix}: {exc}") from None


def _refuse_merged_nodes(graph_name: str, nodes: Sequence[Node]) -> None:
    # Equal ids would silently run as one node under one of the names; say so instead.
    named: dict[str, str] = {}
    for node in nodes:
        other = named.setdefault(node.node_id, node.name)
        if other != node.name:
            raise GraphError(
                f"graph spec {graph_name!r}: nodes {other!r} and {node.name!r} are the same "
                "computation (same operator, params, options and inputs), so they would run "
                "as one node; keep one and point its consumers at it"
            )


# -- dict form: dumping -----------------------------------------------------------------------
def graph_to_dict(graph: Graph) -> dict[str, Any]:
    """The canonical spec of ``graph`` as plain data (str, int, float, bool, list, dict).

    Refuses (SpecError) a user-function node: a spec cannot carry its code.
    """
    names = {node.node_id: node.name for node in graph.nodes}
    data: dict[str, Any] = {
        "name": graph.name,
        "outputs": [names[node.node_id] for node in graph.outputs],
    }
    if graph.delivery is not None:  # only where set, so dumps stay canonical
        data["delivery"] = graph.delivery
    if graph.parallelism is not None:
        data["parallelism"] = graph.parallelism
    data["nodes"] = [_node_to_dict(node, names) for node in graph.nodes]
    return data


def _node_to_dict(node: Node, names: Mapping[str, str]) -> dict[str, Any]:
    if node.function is not None or node.operator == _USER_FUNCTION:
        raise SpecError(
            f"node {node.name!r} runs user function {_function_of(node)}; graph specs "
            "are data only and cannot carry its code. Install it as an operator (an "
            "OperatorDef registered with streamdag.operator_registry.register) and build the "
            "node by that type name, or submit this graph through the SDK instead of a spec"
        )
    definition = lookup(node.operator)
    if node.code_hash != definition.code_hash():
        raise SpecError(
            f"node {node.name!r} was built with code hash {node.code_hash[:12]}, but operator "
            f"{node.operator!r} installed here hashes to {definition.code_hash()[:12]}; a spec "
            "names operators by type, so it would load as a different computation. Rebuild "
            "the node without code_hash="
        )
    entry: dict[str, Any] = {"name": node.name, "type": node.operator}
    if node.inputs:
        entry["inputs"] = [names[upstream.node_id] for upstream in node.inputs]
    if node.interval is not None:
        entry["interval"] = node.interval
    if node.period != definition.history(node.params):
        entry["period"] = node.period
    if node.missing != "skip":
        entry["missing"] = node.missing
    if node.tags:
        entry["tags"] = list(node.tags)
    if node.parallelism is not None:
        entry["parallelism"] = node.parallelism
    entry["params"] = _params_to_dict(node, definition)
    return entry


def _params_to_dict(node: Node, definition: type[OperatorDef]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for param in definition.params:
        value = node.params[param.name]
        # A default is left out rather than written: loading then takes the very same default
        # object, so the node id cannot drift even where a default is not in canonical form.
        if not param.required and canonical_encode(value) == canonical_encode(param.default):
            continue
        if param.kind == "schema":
            params[param.name] = value.to_dict() if isinstance(value, Schema) else dict(value)
        elif param.kind == "str_map":
            params[param.name] = dict(value)
        elif param.kind in ("str_list", "str_set"):
            params[param.name] = list(value)
        else:
            params[param.name] = value
    return params


# -- helpers ----------------------------------------------------------------------------------
def _function_of(node: Node) -> str:
    if node.function is None:
        return "(its function is not attached)"
    return describe_function(node.function)


def _format_of(path: Path) -> SpecFormat:
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        raise SpecError(
            f"cannot tell the format of graph spec {str(path)!r} from its suffix "
            f"{path.suffix!r}; name it *.toml or *.json"
        ) from None


def _unknown_format(format: object) -> SpecError:
    return SpecError(f"unknown graph spec format {format!r}; expected 'toml' or 'json'")
