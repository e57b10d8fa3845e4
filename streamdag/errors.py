"""Errors raised by streamdag's core: one root, one class per condition."""

from __future__ import annotations

__all__ = [
    "CodeHashError",
    "CycleError",
    "DanglingInputError",
    "DuplicateNameError",
    "DuplicateSinkTopicError",
    "GraphError",
    "KeyCollisionError",
    "MissingDataError",
    "ParamError",
    "PlanError",
    "SchemaMismatchError",
    "SpecError",
    "StreamdagError",
    "UnknownOperatorError",
]


class StreamdagError(Exception):
    """Root of every error streamdag raises on purpose."""


class GraphError(StreamdagError):
    """A graph is malformed; raised when it is built or loaded, before any actor starts."""


class CycleError(GraphError):
    """The graph has a cycle outside an explicit ``iterate`` block."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        path = " -> ".join([*cycle, cycle[0]]) if cycle else "?"
        super().__init__(
            f"cycle found: {path}. Streams must flow one way; break the cycle, or wrap the "
            "nodes that feed back into each other in an `iterate` block with a tolerance and a "
            "maximum number of iterations."
        )


class DanglingInputError(GraphError):
    """A node names an input that does not exist in the graph."""


class DuplicateNameError(GraphError):
    """Two nodes of one graph share a name."""


class DuplicateSinkTopicError(GraphError):
    """Two sinks of one graph write the same topic."""


class SchemaMismatchError(GraphError):
    """A node's input does not carry the fields or types the node needs."""


class UnknownOperatorError(GraphError):
    """An operator type name is not in the registry."""


class ParamError(GraphError):
    """A node's parameter is missing, of the wrong type, or out of range."""


class SpecError(GraphError):
    """A graph spec file cannot be parsed or does not have the expected shape."""


class CodeHashError(GraphError):
    """A user function cannot be hashed with certainty, so it cannot be identified or shared."""


class PlanError(StreamdagError):
    """An execution plan breaks its own ordering rule."""


class KeyCollisionError(StreamdagError):
    """Two different keys produced the same 64-bit hash; they are never merged silently."""


class MissingDataError(StreamdagError):
    """A node with the ``fail`` missing-data policy saw a gap in its input."""
