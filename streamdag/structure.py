"""Structure checks on raw graph data (name -> input names), before any node is built."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from streamdag.errors import CycleError, DanglingInputError, SpecError

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["find_cycle", "validate_structure"]


def validate_structure(nodes: Mapping[str, Sequence[str]]) -> list[str]:
    """Check raw ``name -> input names`` data and return the names in a topological order.

    Meant for graph specs before any node is built. Among nodes that are ready at the same
    time, the one defined first comes first, so a spec already in order keeps its order.

    >>> validate_structure({"sma": ["ticks"], "ticks": [], "out": ["sma"]})
    ['ticks', 'sma', 'out']
    >>> validate_structure({"a": ["b"], "b": ["a"]})
    Traceback (most recent call last):
    ...
    streamdag.errors.CycleError: cycle found: a -> b -> a. ...
    """
    import networkx as nx  # here: a node actor imports this module, and never plans

    position = {name: index for index, name in enumerate(nodes)}
    flow = nx.DiGraph()
    flow.add_nodes_from(position)
    for name, inputs in nodes.items():
        if isinstance(inputs, str | bytes):
            raise SpecError(
                f"node {name!r}: inputs must be a list of node names, got the string "
                f"{inputs!r}; write inputs = [{inputs!r}]"
            )
        for input_name in inputs:
            if input_name not in position:
                raise DanglingInputError(_dangling_message(name, input_name, position))
            flow.add_edge(input_name, name)
    try:
        return list(nx.lexicographical_topological_sort(flow, key=position.__getitem__))
    except nx.NetworkXUnfeasible:
        raise CycleError(find_cycle(flow, position)) from None


def _dangling_message(name: str, missing: str, defined: Collection[str]) -> str:
    close = difflib.get_close_matches(missing, list(defined), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "define it or fix the name"
    return (
        f"node {name!r} reads input {missing!r}, which is not defined in the graph "
        f"({len(defined)} nodes defined); {hint}"
    )


def find_cycle(flow: nx.DiGraph, position: Mapping[str, int]) -> list[str]:
    """One cycle of ``flow`` in data-flow order, starting at its earliest-defined vertex."""
    import networkx as nx

    cycle = [producer for producer, _consumer in nx.find_cycle(flow)]
    start = min(range(len(cycle)), key=lambda index: position[cycle[index]])
    return cycle[start:] + cycle[:start]
