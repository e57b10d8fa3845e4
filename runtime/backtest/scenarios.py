"""Scenarios: param overrides of named nodes, applied by rebuilding the graph; and sweeps.

A scenario changes the params of some nodes; every node downstream of a changed one gets a new
node_id (the Merkle hash covers its inputs' ids), everything else keeps its id. So the variants
of a sweep share their unchanged nodes, and a cache keyed by node_id never serves one variant's
result for another's computation.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from runtime.backtest.errors import ScenarioError
from streamdag.graph import Graph, Node, make_node
from streamdag.operator_registry import lookup

__all__ = ["INPUTS", "Scenario", "apply_scenario", "parse_sweeps"]

#: The override that rewires a node: ``NODE.inputs=a,b`` reads nodes ``a`` and ``b`` instead.
INPUTS = "inputs"


@dataclass(frozen=True)
class Scenario:
    """A named set of overrides: ``{node name: {param: value}}``; the ``inputs`` override
    rewires a node to other nodes of the graph, by name.

    >>> Scenario.parse(["sma20.window=30", "to_signals.topic=alt.signals"]).overrides
    {'sma20': {'window': 30}, 'to_signals': {'topic': 'alt.signals'}}
    >>> Scenario.parse(["sma20.window=30"]).name
    'sma20.window=30'
    """

    name: str = "base"
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, assignments: Sequence[str], name: str | None = None) -> Scenario:
        """A scenario from ``NODE.PARAM=VALUE`` texts (values read as TOML, else text)."""
        overrides: dict[str, dict[str, Any]] = {}
        for text in assignments:
            node, param, value = _split_assignment(text)
            overrides.setdefault(node, {})[param] = _parse_value(value)
        return cls(name if name is not None else (",".join(assignments) or "base"), overrides)


def parse_sweeps(sweeps: Sequence[str], base: Sequence[str] = ()) -> list[Scenario]:
    """One scenario per combination of ``NODE.PARAM=V1,V2,...`` values (plus ``base`` overrides).

    >>> [s.name for s in parse_sweeps(["fast.window=10,20", "slow.window=50"])]
    ['fast.window=10,slow.window=50', 'fast.window=20,slow.window=50']
    """
    axes: list[list[str]] = []
    for text in sweeps:
        node, param, values = _split_assignment(text)
        choices = [value.strip() for value in values.split(",") if value.strip()]
        if not choices:
            raise ScenarioError(f"sweep {text!r} lists no values; write NODE.PARAM=V1,V2,...")
        axes.append([f"{node}.{param}={value}" for value in choices])
    variants = []
    for combination in itertools.product(*axes):
        variants.append(Scenario.parse([*base, *combination], name=",".join(combination)))
    names = [variant.name for variant in variants]
    if len(set(names)) != len(names):
        raise ScenarioError(f"sweep {list(sweeps)} repeats a value; each variant must differ")
    return variants


def apply_scenario(graph: Graph, scenario: Scenario) -> Graph:
    """The graph with the scenario's params and inputs set; unchanged nodes are the same
    objects.

    Raises ScenarioError naming the node, param or input that does not exist, or the cycle a
    rewiring would make. A node whose period followed its params (the default) follows the
    new ones.

    >>> import streamdag as sd
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> fast = ticks.rolling_mean("price", window=5, name="fast")
    >>> slow = ticks.rolling_mean("price", window=9, name="slow")
    >>> graph = sd.Graph("g", outputs=[fast.crossover(slow, name="x"), slow])
    >>> varied = apply_scenario(graph, Scenario.parse(["x.inputs=slow,fast"]))
    >>> [node.name for node in varied.node("x").inputs]
    ['slow', 'fast']
    """
    names = {node.name for node in graph.nodes}
    unknown = sorted(set(scenario.overrides) - names)
    if unknown:
        raise ScenarioError(f"scenario {scenario.name!r} overrides node(s) {unknown}, which "
                            f"graph {graph.name!r} does not have; its nodes are {sorted(names)}")
    by_name = {node.name: node for node in graph.nodes}
    rebuilt: dict[str, Node] = {}
    building: list[str] = []

    def build(node: Node) -> Node:
        done = rebuilt.get(node.name)
        if done is not None:
            return done
        if node.name in building:
            loop = " -> ".join([*building[building.index(node.name):], node.name])
            raise ScenarioError(f"scenario {scenario.name!r} rewires inputs into a cycle: "
                                f"{loop}; a node cannot read its own output")
        building.append(node.name)
        changes = dict(scenario.overrides.get(node.name, {}))
        upstream = node.inputs
        if INPUTS in changes:
            upstream = _rewired(scenario, node, changes.pop(INPUTS), by_name)
        declared = {param.name for param in lookup(node.operator).params}
        undeclared = sorted(set(changes) - declared)
        if undeclared:
            raise ScenarioError(f"scenario {scenario.name!r}: node {node.name!r} "
                                f"({node.operator}) has no param(s) {undeclared}; its params "
                                f"are {sorted(declared)} (and {INPUTS!r}, to rewire it)")
        inputs = tuple(build(input_node) for input_node in upstream)
        same = len(inputs) == len(node.inputs) and all(
            a is b for a, b in zip(inputs, node.inputs, strict=True))
        result = node if not changes and same else _rebuild(node, inputs, changes)
        building.pop()
        rebuilt[node.name] = result
        return result

    for node in graph.nodes:  # inputs first: recursion goes only as deep as a rewiring
        build(node)
    return Graph(graph.name, [rebuilt[node.name] for node in graph.outputs],
                 delivery=graph.delivery)


def _rewired(scenario: Scenario, node: Node, value: Any,
             by_name: Mapping[str, Node]) -> tuple[Node, ...]:
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    unknown = [name for name in names if name not in by_name]
    if unknown or not all(isinstance(name, str) for name in names):
        raise ScenarioError(f"scenario {scenario.name!r}: node {node.name!r} is rewired to "
                            f"{names}, but {unknown or names} are not nodes of the graph; its "
                            f"nodes are {sorted(by_name)}")
    return tuple(by_name[name] for name in names)


def _rebuild(node: Node, inputs: tuple[Node, ...], changes: Mapping[str, Any]) -> Node:
    params = {**node.params, **changes}
    default_period = lookup(node.operator).history(node.params)
    return make_node(
        node.operator, inputs, MappingProxyType(params), name=node.name,
        interval=node.interval,
        period=None if node.period == default_period else node.period,
        missing=node.missing, tags=node.tags, function=node.function,
        code_hash=node.code_hash, shareable=node.shareable,
    )


def _split_assignment(text: str) -> tuple[str, str, str]:
    target, equals, value = text.partition("=")
    node, dot, param = target.strip().rpartition(".")
    if not equals or not dot or not node or not param:
        raise ScenarioError(f"{text!r} is not NODE.PARAM=VALUE (e.g. sma20.window=30)")
    return node, param, value.strip()


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text  # a bare word: the param's own validation reads it (topics, durations)
