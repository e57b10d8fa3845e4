"""``sd.combine``: several streams computed on the same events, as one multi-field stream."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from streamdag.errors import GraphError
from streamdag.graph import Column, Node, make_node

__all__ = ["combine"]


def combine(
    columns: Mapping[str, Node | Column] | None = None,
    /,
    *,
    name: str | None = None,
    tags: Iterable[str] = (),
    **named: Node | Column,
) -> Node:
    """One stream whose fields are the given streams' values, paired on (ts, key).

    A stream gives its only field (a rolling mean its ``value``); a column such as
    ``ticks["price"]`` gives that field. A row is emitted where every stream has one for the
    same event (``operators.combine``). Pass a mapping first for a field called ``name``.

    >>> import streamdag as sd
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> sma = ticks.rolling_mean("price", window=20, min_periods=1, name="sma")
    >>> sd.combine(sma=sma, n=ticks.running_count(name="n")).output_schema
    Schema(sma: float64, n: int64)
    """
    given = {**dict(columns or {}), **named}
    if not given:
        raise GraphError("combine needs at least one stream; pass e.g. sma=<stream>")
    inputs: list[Node] = []
    sources: dict[str, str] = {}
    for column, item in given.items():
        if isinstance(item, Column):
            node, field = item.node, item.field
        elif isinstance(item, Node):
            node, field = item, _only_field(column, item)
        else:
            raise GraphError(
                f"combine column {column!r} got {type(item).__name__}; pass a stream or a "
                "column such as ticks['price']"
            )
        if node not in inputs:
            inputs.append(node)
        sources[column] = f"{inputs.index(node)}.{field}"
    return make_node("combine", inputs, {"columns": sources}, name=name, tags=tags)


def _only_field(column: str, node: Node) -> str:
    names = node.output_schema.names
    if len(names) != 1:
        raise GraphError(
            f"combine column {column!r}: stream {node.name!r} has fields {list(names)}; "
            f"pick one, e.g. {column}={node.name}[{names[0]!r}]"
        )
    return names[0]
