"""Warm-up: the history before ``--from`` each source must replay so the first output equals live.

A node's output at time t depends on its ``period`` last events per key and input (and on the
events of its time windows: a rolling ``time_window``, a bar and its lateness, an interval
bucket), and those events depend on the same kind of history upstream. So a source replays,
per key, the events that the longest path below it needs: the sum of the periods along the
path, plus every event within the sum of its time spans.

A node whose state reaches back without limit makes its sources replay their whole recorded
history before ``--from``: an EMA, and the rolling std and z-score, whose compensated sums are
centred on a shift taken from an earlier window (its last bits depend on when that was). Mode
``period`` gives every node only its period even then: faster, equal to live within rounding for
std and z-score, and only approximately for an EMA.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streamdag.batch import Batch
from streamdag.graph import Graph, Node
from streamdag.operator_registry import lookup

__all__ = ["UNBOUNDED_HISTORY", "WARM_UP_MODES", "WarmUp", "describe", "range_mask",
           "select_range",
           "warm_up_of"]

#: How much history a backtest replays before its range.
WARM_UP_MODES = ("auto", "period", "all", "none")

#: Operators whose output bits depend on events older than their period (see the docstring).
UNBOUNDED_HISTORY = frozenset({"ema", "rolling_std", "zscore"})


@dataclass(frozen=True)
class WarmUp:
    """History one source replays before the range: events per key, a time span, or all."""

    events: int = 0
    span_ns: int = 0
    everything: bool = False

    def canonical(self) -> tuple[int, int, bool]:
        """What decides the events kept (all history makes the counts irrelevant)."""
        return (0, 0, True) if self.everything else (self.events, self.span_ns, False)

    def __str__(self) -> str:
        if self.everything:
            return "all history"
        return f"{self.events} events per key + {self.span_ns / 1e9:g} s"


def warm_up_of(graph: Graph, mode: str = "auto") -> dict[str, WarmUp]:
    """Per source node name, the history it replays before the range.

    ``mode`` is ``auto`` (what the nodes below need for outputs equal to live), ``period``
    (each node's period and time spans only), ``none`` or ``all``.

    >>> import streamdag as sd
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> fast = ticks.rolling_mean("price", window=5, name="fast")
    >>> slow = ticks.rolling_mean("price", window=8, name="slow")
    >>> warm_up_of(sd.Graph("g", outputs=[fast.crossover(slow, name="cross")]))
    {'ticks': WarmUp(events=9, span_ns=0, everything=False)}
    """
    if mode not in WARM_UP_MODES:
        raise ValueError(f"warm-up mode {mode!r} is not one of {', '.join(WARM_UP_MODES)}")
    consumers: dict[str, list[Node]] = {node.node_id: [] for node in graph.nodes}
    for node in graph.nodes:
        for upstream in node.inputs:
            consumers[upstream.node_id].append(node)
    below: dict[str, WarmUp] = {}
    for node in reversed(graph.nodes):  # consumers before their inputs
        deepest = _deepest(below[c.node_id] for c in consumers[node.node_id])
        if node.inputs:
            own = _own_history(node)
            below[node.node_id] = WarmUp(deepest.events + own.events,
                                         deepest.span_ns + own.span_ns,
                                         deepest.everything or own.everything)
        else:
            below[node.node_id] = deepest
    result = {}
    for node in graph.sources:
        need = below[node.node_id]
        if mode == "none":
            need = WarmUp()
        elif mode == "all":
            need = WarmUp(everything=True)
        elif mode == "period":
            need = WarmUp(need.events, need.span_ns)
        result[node.name] = need
    return result


def select_range(batch: Batch, start_ns: int, end_ns: int, warm_up: WarmUp) -> Batch:
    """The events of ``[start_ns, end_ns)`` plus the warm-up before them, in their order."""
    keep = range_mask(batch, start_ns, end_ns, warm_up)
    return batch.take(np.flatnonzero(keep)) if not bool(keep.all()) else batch


def range_mask(batch: Batch, start_ns: int, end_ns: int,
               warm_up: WarmUp) -> npt.NDArray[np.bool_]:
    """Which events ``select_range`` keeps."""
    ts = batch.ts
    keep = ts < end_ns
    before = ts < start_ns
    if not warm_up.everything:
        recent = before & (ts >= start_ns - warm_up.span_ns) if warm_up.span_ns else (
            np.zeros(len(ts), dtype=bool))
        keep &= ~before | recent | _last_per_key(batch.key, before, warm_up.events)
    return keep


def _last_per_key(keys: npt.NDArray[np.bytes_], mask: npt.NDArray[np.bool_],
                  count: int) -> npt.NDArray[np.bool_]:
    """Where ``mask`` holds, the last ``count`` positions of each key."""
    chosen = np.zeros(len(keys), dtype=bool)
    positions = np.flatnonzero(mask)
    if count <= 0 or not len(positions):
        return chosen
    _, groups = np.unique(keys[positions], return_inverse=True)
    order = np.lexsort((-positions, groups))  # per key, newest first
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    chosen[positions[order[rank < count]]] = True
    return chosen


def _own_history(node: Node) -> WarmUp:
    definition = lookup(node.operator)
    span = sum(int(node.params.get(param.name, 0) or 0) for param in definition.params
               if param.kind == "duration" and param.size)
    if node.interval is not None:
        span += node.interval * node.period
    return WarmUp(node.period, span, node.operator in UNBOUNDED_HISTORY)


def _deepest(needs: Iterable[WarmUp]) -> WarmUp:
    events = span = 0
    everything = False
    for need in needs:
        events, span = max(events, need.events), max(span, need.span_ns)
        everything = everything or need.everything
    return WarmUp(events, span, everything)


def describe(warm_ups: Mapping[str, WarmUp]) -> str:
    """One line naming each source's warm-up."""
    return "; ".join(f"{name}: {need}" for name, need in sorted(warm_ups.items()))
