"""Errors raised by streamdag's core: one root, one class per condition."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ActorBudgetError",
    "CodeHashError",
    "CycleError",
    "DanglingInputError",
    "DuplicateNameError",
    "DuplicateSinkTopicError",
    "GraphError",
    "GraphSizeError",
    "KeyCollisionError",
    "LimitError",
    "MemoryBudgetError",
    "MissingDataError",
    "ParamError",
    "PlanError",
    "SchemaMismatchError",
    "SharedTopicError",
    "SpecError",
    "StreamdagError",
    "TopicLoopError",
    "TopicNameError",
    "UnknownOperatorError",
    "did_you_mean",
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


class TopicNameError(GraphError):
    """A topic name breaks Kafka's rules (characters, length, ``.`` or ``..``)."""


class TopicLoopError(GraphError):
    """A sink writes a topic its own graph reads: its output would come back as input."""


class SharedTopicError(GraphError):
    """A sink writes a topic another running graph writes, and not both declared it shared."""


class LimitError(GraphError):
    """A graph needs more than the deployment's ``[limits]`` allow; refused before it runs."""


class GraphSizeError(LimitError):
    """A graph has more nodes than ``limits.max_nodes_per_graph``."""


class ActorBudgetError(LimitError):
    """Running a graph would take the deployment over ``limits.max_actors``."""


class MemoryBudgetError(LimitError):
    """A graph's estimated node-cache memory is over ``limits.memory_budget_bytes``."""


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


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``candidates`` to ``name``, or ``''``.

    >>> did_you_mean("rolling_maen", ["rolling_mean", "rolling_max", "ema"])
    " (did you mean 'rolling_mean'?)"
    """
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
