"""Resource budgets: a graph's node count, actor count and node-cache memory, before it runs.

Pure functions over graphs and numbers. Runners and the controller call them before they start
any actor, so a graph that would not fit (a window of 10**12 events, a thousand nodes) is
refused with the numbers instead of failing at run time with ``MemoryError``.

The memory estimate is ``NodeCache``'s own ``resident_bytes`` for the node's inputs, period and
key slots, measured on three small caches and extended linearly in the period and in the key
slots, as its arrays grow: per input, an int64 time and a float64 value for each of ``period``
slots of each key slot, plus per-key counters and the key table. Key slots start at 64 and
double until the expected keys (``limits.expected_keys``) fit. It counts one value feature per
input, which is what every built-in keeps but ``vwap`` (price and size: its rings are a third
larger) and count-window ``rolling_min`` / ``rolling_max`` (a deque as large again); a time
window's rings grow with the events inside it, which no static estimate can know. Endpoints
hold no history.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass

from operators.node_cache import NodeCache
from streamdag.config import LimitSettings
from streamdag.errors import ActorBudgetError, GraphSizeError, MemoryBudgetError
from streamdag.graph import Graph, Node
from streamdag.operator_registry import lookup

__all__ = [
    "FIRST_KEY_SLOTS",
    "GraphEstimate",
    "NodeEstimate",
    "cache_key_slots",
    "check_actors",
    "check_graph_size",
    "check_memory",
    "check_runner_budgets",
    "estimate_graph",
    "estimate_node",
    "format_bytes",
    "node_cache_bytes",
    "slot_bytes",
]

#: Key slots a NodeCache starts with (its ``key_capacity`` default); they double as keys arrive.
FIRST_KEY_SLOTS = 64
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(count: int) -> str:
    """``count`` bytes in binary units, to three significant digits.

    >>> format_bytes(512 * 10**12), format_bytes(8 << 30), format_bytes(1536), format_bytes(7)
    ('466 TiB', '8 GiB', '1.5 KiB', '7 B')
    """
    value = float(count)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    text = f"{value:.0f}" if value >= 100 else f"{value:.3g}"
    return f"{text} {unit}"


def cache_key_slots(expected_keys: int) -> int:
    """Key slots a NodeCache holds once ``expected_keys`` keys arrived: 64, doubled to fit.

    >>> cache_key_slots(10), cache_key_slots(64), cache_key_slots(10_000)
    (64, 64, 16384)
    """
    slots = FIRST_KEY_SLOTS
    while slots < expected_keys:
        slots *= 2
    return slots


def node_cache_bytes(inputs: int, period: int, key_slots: int) -> int:
    """Bytes a NodeCache of one value feature per input holds with ``key_slots`` key slots.

    >>> node_cache_bytes(1, 20, 64) == NodeCache(1, 20, 1).resident_bytes()
    True
    """
    if inputs < 1:
        return 0
    fixed, per_key, per_key_and_slot = _coefficients(inputs)
    return fixed + key_slots * (per_key + period * per_key_and_slot)


def slot_bytes(inputs: int) -> int:
    """Bytes one more event of history costs per input and key slot (a time and a value)."""
    return _coefficients(inputs)[2] // inputs


@functools.cache
def _coefficients(inputs: int) -> tuple[int, int, int]:
    # Every array of a cache is fixed or grows with key slots, or with key slots x period:
    # three small caches give the three coefficients without allocating a large one.
    def measured(period: int, key_slots: int) -> int:
        return NodeCache(inputs, period, 1, key_capacity=key_slots).resident_bytes()

    base = measured(1, FIRST_KEY_SLOTS)
    per_key_and_slot = (measured(2, FIRST_KEY_SLOTS) - base) // FIRST_KEY_SLOTS
    per_key = (measured(1, 2 * FIRST_KEY_SLOTS) - base) // FIRST_KEY_SLOTS - per_key_and_slot
    return base - FIRST_KEY_SLOTS * (per_key + per_key_and_slot), per_key, per_key_and_slot


@dataclass(frozen=True)
class NodeEstimate:
    """One node's estimated node-cache memory and the figures it was computed from."""

    node_id: str
    name: str
    bytes: int
    inputs: int
    period: int
    key_slots: int

    def formula(self, expected_keys: int) -> str:
        """How the estimate was computed, in words with the numbers."""
        inputs = f"{self.inputs} input{'' if self.inputs == 1 else 's'}"
        return (
            f"{self.key_slots:,} key slots for limits.expected_keys = {expected_keys:,} "
            f"x {inputs} x {self.period:,} events of history x "
            f"{slot_bytes(self.inputs)} B"
        )


@dataclass(frozen=True)
class GraphEstimate:
    """The estimates of a graph's nodes (those asked for), largest first, and their total."""

    graph: str
    nodes: tuple[NodeEstimate, ...]
    expected_keys: int

    @property
    def bytes(self) -> int:
        """The sum over the nodes."""
        return sum(node.bytes for node in self.nodes)


def estimate_node(node: Node, expected_keys: int) -> NodeEstimate:
    """The node-cache memory ``node`` is estimated to hold with ``expected_keys`` keys."""
    slots = cache_key_slots(expected_keys)
    if lookup(node.operator).role != "operator":
        return NodeEstimate(node.node_id, node.name, 0, 0, 0, slots)
    inputs = len(node.inputs)
    return NodeEstimate(node.node_id, node.name, node_cache_bytes(inputs, node.period, slots),
                        inputs, node.period, slots)


def estimate_graph(
    graph: Graph, expected_keys: int, node_ids: Collection[str] | None = None
) -> GraphEstimate:
    """Estimates of ``graph``'s nodes (only those in ``node_ids`` when given), largest first."""
    chosen = [n for n in graph.nodes if node_ids is None or n.node_id in node_ids]
    estimates = sorted((estimate_node(node, expected_keys) for node in chosen),
                       key=lambda estimate: (-estimate.bytes, estimate.name))
    return GraphEstimate(graph.name, tuple(estimates), expected_keys)


def check_graph_size(graph: Graph, limits: LimitSettings) -> None:
    """GraphSizeError when ``graph`` has more nodes than ``limits.max_nodes_per_graph``."""
    if len(graph.nodes) > limits.max_nodes_per_graph:
        raise GraphSizeError(
            f"graph {graph.name!r} has {len(graph.nodes)} nodes, over the limit of "
            f"{limits.max_nodes_per_graph} set by limits.max_nodes_per_graph; split it into "
            "smaller graphs (nodes they share run once), or raise the limit"
        )


def check_actors(graph: Graph, new: int, running: int, limits: LimitSettings) -> None:
    """ActorBudgetError when ``new`` more actors beside ``running`` ones exceed the limit."""
    if new + running <= limits.max_actors:
        return
    beside = f" beside the {running} the deployment runs" if running else ""
    raise ActorBudgetError(
        f"graph {graph.name!r} needs {new} new node actor{'' if new == 1 else 's'}{beside}: "
        f"{new + running} in all, over the limit of {limits.max_actors} set by "
        "limits.max_actors; remove submissions that are done, reuse nodes running graphs "
        "already have, or raise the limit"
    )


def check_memory(estimate: GraphEstimate, limits: LimitSettings, running: int = 0) -> None:
    """MemoryBudgetError when the estimate plus ``running`` bytes exceed the memory budget.

    The message names the graph, the total, the budget and the largest node with its formula.
    """
    total = estimate.bytes + running
    if total <= limits.memory_budget_bytes:
        return
    needs = (f"graph {estimate.graph!r} needs an estimated {format_bytes(estimate.bytes)} "
             "of node caches")
    if running:
        needs += (f" and the deployment's running nodes hold an estimated "
                  f"{format_bytes(running)}: {format_bytes(total)} in all")
    largest = estimate.nodes[0] if estimate.nodes else None
    detail = ""
    if largest is not None and largest.bytes:
        detail = (f"; node {largest.name!r} alone needs {format_bytes(largest.bytes)} "
                  f"({largest.formula(estimate.expected_keys)})")
    raise MemoryBudgetError(
        f"{needs}, over the budget of {format_bytes(limits.memory_budget_bytes)} set by "
        f"limits.memory_budget_bytes{detail}; lower its window or period, or raise "
        "limits.memory_budget_bytes (or lower limits.expected_keys if fewer keys will come)"
    )


def check_runner_budgets(
    graph: Graph, limits: LimitSettings, *, actors: bool
) -> GraphEstimate:
    """Every budget of a graph run on its own (``actors``: one actor per node shard); its
    estimate."""
    check_graph_size(graph, limits)
    if actors:
        check_actors(graph, sum(graph.parallelism_of(n) for n in graph.nodes), 0, limits)
    estimate = estimate_graph(graph, limits.expected_keys)
    check_memory(estimate, limits)
    return estimate
