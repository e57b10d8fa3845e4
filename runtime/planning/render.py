"""Plans and graphs as text, Mermaid and Graphviz DOT; the same input gives the same bytes.

Nodes are labelled by name, operator and the params that differ from their defaults, with a
short id: the first 12 hex digits of the node id, more only where two of the graph's ids share
them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from runtime.planning.planner import ITERATE_OPERATOR, ExecutionPlan
from streamdag.errors import PlanError
from streamdag.graph import Graph, Node
from streamdag.operator_registry import lookup
from streamdag.params import Param

__all__ = ["node_label", "render_dot", "render_mermaid", "render_text", "short_ids"]

_MIN_ID_LENGTH = 12
_MAX_VALUE_LENGTH = 32
#: Schemas and expression maps are too long for a label; the node's name stands for them.
_UNLABELLED_KINDS = ("schema", "str_map")
_DURATION_UNITS = (
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
)


def short_ids(node_ids: Iterable[str]) -> dict[str, str]:
    """Each id's prefix of one common length: 12 hex digits, doubled until they are unique.

    >>> sorted(short_ids(["abc" + "0" * 61, "abc" + "0" * 20 + "1" * 41]).values())
    ['abc000000000000000000000', 'abc000000000000000000001']
    """
    ids = list(dict.fromkeys(node_ids))
    length = _MIN_ID_LENGTH
    while len({node_id[:length] for node_id in ids}) < len(ids):
        length *= 2
    return {node_id: node_id[:length] for node_id in ids}


def node_label(node: Node) -> str:
    """``operator key=value ...`` over the params that differ from their declared defaults.

    >>> import streamdag as sd
    >>> node_label(sd.source("ticks", topic="market.ticks", key="symbol", schema={"p": "float64"}))
    'kafka_source topic=market.ticks key=symbol'
    """
    parts = [node.operator]
    for param in lookup(node.operator).params:
        value = node.params.get(param.name)
        if param.kind in _UNLABELLED_KINDS or (not param.required and value == param.default):
            continue
        parts.append(f"{param.name}={_format_value(param, value)}")
    return " ".join(parts)


def render_text(plan: ExecutionPlan, graph: Graph) -> str:
    """The plan generation by generation: name, label, short id, inputs and shards of every
    node."""
    by_id = {node.node_id: node for node in graph.nodes}
    foreign = [node_id for node_id in plan.order if node_id not in by_id]
    if foreign:
        raise PlanError(
            f"the plan names node id {foreign[0][:12]}, which graph {graph.name!r} does not "
            "hold; render a plan together with the graph it was made from"
        )
    ids = short_ids(plan.order)
    labels = {node_id: node_label(by_id[node_id]) for node_id in plan.order}
    name_width = max((len(by_id[node_id].name) for node_id in plan.order), default=0)
    label_width = max((len(label) for label in labels.values()), default=0)
    lines = [f"graph {graph.name!r}: {plan.summary()}"]
    for index, generation in enumerate(plan.generations):
        lines.append(f"generation {index}:")
        for node_id in generation:
            node = by_id[node_id]
            row = f"  {node.name:<{name_width}}  {labels[node_id]:<{label_width}}  {ids[node_id]}"
            if node.inputs:
                row += "  <- " + ", ".join(upstream.name for upstream in node.inputs)
            if graph.parallelism_of(node) > 1:
                row += f"  ({graph.parallelism_of(node)} shards)"
            lines.append(row.rstrip())
    if plan.iterate_blocks:
        lines.append("iterate blocks:")
        for block in plan.iterate_blocks:
            lines.append(
                f"  {by_id[block.node_id].name}  tolerance={block.tolerance!r}  "
                f"max_iterations={block.max_iterations}  {ids[block.node_id]}"
            )
    return "\n".join(lines) + "\n"


def render_mermaid(graph: Graph) -> str:
    """A Mermaid flowchart, left to right: sources as stadiums, sinks as parallelograms."""
    ids = short_ids(graph.node_ids)
    lines = ["flowchart LR"]
    for node in graph.nodes:
        text = "<br/>".join(_mermaid_escape(line) for line in _label_lines(node, ids))
        opening, closing = _mermaid_shape(node)
        lines.append(f'  n{ids[node.node_id]}{opening}"{text}"{closing}')
    for node, upstream, port in _edges(graph.nodes):
        arrow = "-->" if port is None else f"-->|{port}|"
        lines.append(f"  n{ids[upstream.node_id]} {arrow} n{ids[node.node_id]}")
    return "\n".join(lines) + "\n"


def render_dot(graph: Graph) -> str:
    """A Graphviz digraph, left to right, one box per node; sources and sinks shaped apart."""
    ids = short_ids(graph.node_ids)
    lines = [
        f"digraph {_dot_quote(graph.name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, fontname="Helvetica"];',
    ]
    for node in graph.nodes:
        label = "\\n".join(_dot_escape(line) for line in _label_lines(node, ids))
        shape = _dot_shape(node)
        attributes = f'label="{label}"' + (f", shape={shape}" if shape else "")
        lines.append(f"  {_dot_quote('n' + ids[node.node_id])} [{attributes}];")
    for node, upstream, port in _edges(graph.nodes):
        attributes = "" if port is None else f' [label="{port}"]'
        lines.append(
            f"  {_dot_quote('n' + ids[upstream.node_id])} -> "
            f"{_dot_quote('n' + ids[node.node_id])}{attributes};"
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _label_lines(node: Node, ids: Mapping[str, str]) -> list[str]:
    return [node.name, node_label(node), ids[node.node_id]]


def _edges(nodes: Sequence[Node]) -> list[tuple[Node, Node, str | None]]:
    """(consumer, producer, port) per input; ports are named only on multi-input nodes."""
    edges: list[tuple[Node, Node, str | None]] = []
    for node in nodes:
        many = len(node.inputs) > 1
        for index, upstream in enumerate(node.inputs):
            edges.append((node, upstream, f"in{index}" if many else None))
    return edges


def _format_value(param: Param, value: Any) -> str:
    if param.kind == "duration" and isinstance(value, int):
        text = _format_duration(value)
    elif isinstance(value, tuple):
        text = ",".join(str(item) for item in value)
    elif isinstance(value, str) and (not value or any(c.isspace() for c in value)):
        text = repr(value)
    else:
        text = str(value)
    if len(text) > _MAX_VALUE_LENGTH:
        text = text[: _MAX_VALUE_LENGTH - 3] + "..."
    return text


def _format_duration(nanoseconds: int) -> str:
    for unit, size in _DURATION_UNITS:
        if nanoseconds and nanoseconds % size == 0:
            return f"{nanoseconds // size}{unit}"
    return f"{nanoseconds}ns"


def _mermaid_shape(node: Node) -> tuple[str, str]:
    if node.role == "source":
        return "([", "])"
    if node.role == "sink":
        return "[/", "/]"
    if node.operator == ITERATE_OPERATOR:
        return "{{", "}}"
    return "[", "]"


def _mermaid_escape(text: str) -> str:
    """Mermaid entity codes for the characters that would end or reshape a quoted label."""
    return (
        text.replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    )


def _dot_shape(node: Node) -> str:
    if node.role == "source":
        return "invhouse"
    if node.role == "sink":
        return "house"
    if node.operator == ITERATE_OPERATOR:
        return "doubleoctagon"
    return ""


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _dot_quote(text: str) -> str:
    return f'"{_dot_escape(text)}"'
