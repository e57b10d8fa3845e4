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

__all__ = ["Scenario", "apply_scenario", "parse_sweeps"]


@dataclass(frozen=True)
class Scenario:
    """A named set of overrides: ``{node name: {param: value}}``.

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
    """The graph with the scenario's params set; unchanged nodes are the same objects.

    Raises ScenarioError naming the node or param that does not exist. A node whose period
    followed its params (the default) follows the new ones.
    """
    names = {node.name for node in graph.nodes}
    unknown = sorted(set(scenario.overrides) - names)
    if unknown:
        raise ScenarioError(f"scenario {scenario.name!r} overrides node(s) {unknown}, which "
                            f"graph {graph.name!r} does not have; its nodes are {sorted(names)}")
    rebuilt: dict[str, Node] = {}
    for node in graph.nodes:
        inputs = tuple(rebuilt[upstream.node_id] for upstream in node.inputs)
        changes = scenario.overrides.get(node.name, {})
        declared = {param.name for param in lookup(node.operator).params}
        undeclared = sorted(set(changes) - declared)
        if undeclared:
            raise ScenarioError(f"scenario {scenario.name!r}: node {node.name!r} "
                                f"({node.operator}) has no param(s) {undeclared}; its params "
                                f"are {sorted(declared)}")
        same_inputs = all(a is b for a, b in zip(inputs, node.inputs, strict=True))
        if not changes and same_inputs:
            rebuilt[node.node_id] = node
            continue
        rebuilt[node.node_id] = _rebuild(node, inputs, changes)
    outputs = [rebuilt[node.node_id] for node in graph.outputs]
    return Graph(graph.name, outputs, delivery=graph.delivery)


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
