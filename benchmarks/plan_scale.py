"""Planner scale: build, plan and diff 10,000-node graphs; each must plan in under a second.

Cases: a chain (one long path), a fan-out (one source feeding every other node) and a grid of
100 layers of 100 nodes, each reading two nodes of the layer before. ``build`` is make_node for
every node plus Graph(); ``plan`` is plan_graph (validation of graph and plan included) in
streaming mode; ``diff`` is diff_graph against half of the ids. The baseline, measured in the
same run, is networkx alone building the DiGraph and its generations for the same edges: the
floor a networkx-based planner cannot beat. Run with ``python -m benchmarks.plan_scale``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import networkx as nx

from runtime.planning.planner import diff_graph, plan_graph
from streamdag.graph import Graph, Node, make_node
from streamdag.testing import declaration_only_operator

__all__ = ["main"]

NODES = 10_000
REPEATS = 3
BUDGET_S = 1.0

T = TypeVar("T")


declaration_only_operator("plan_scale_source", role="source", arity=0)
declaration_only_operator("plan_scale_identity")


def _source() -> Node:
    return make_node("plan_scale_source", (), {"tag": 0}, name="source")


def _chain() -> Graph:
    node = _source()
    for index in range(1, NODES):
        node = make_node("plan_scale_identity", (node,), {"tag": index}, name=f"n{index}")
    return Graph("chain", outputs=[node])


def _fan_out() -> Graph:
    source = _source()
    outputs = [
        make_node("plan_scale_identity", (source,), {"tag": index}, name=f"n{index}")
        for index in range(1, NODES)
    ]
    return Graph("fan_out", outputs=outputs)


def _grid() -> Graph:
    width = 100
    layer = [
        make_node("plan_scale_source", (), {"tag": index}, name=f"s{index}")
        for index in range(width)
    ]
    for depth in range(1, NODES // width):
        layer = [
            make_node(
                "plan_scale_identity",
                (layer[index], layer[(index + 1) % width]),
                {"tag": depth * width + index},
                name=f"n{depth}_{index}",
            )
            for index in range(width)
        ]
    return Graph("grid", outputs=layer)


def _networkx_floor(graph: Graph) -> None:
    flow = nx.DiGraph()
    flow.add_nodes_from(graph.node_ids)
    flow.add_edges_from((i.node_id, n.node_id) for n in graph.nodes for i in n.inputs)
    list(nx.topological_generations(flow.reverse(copy=False)))


def _best(action: Callable[[], T]) -> tuple[float, float, T]:
    """CPU and wall seconds of the fastest of REPEATS runs, and the last run's result."""
    best_cpu = best_wall = float("inf")
    result: T
    for _ in range(REPEATS):
        cpu, wall = time.process_time(), time.perf_counter()
        result = action()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_cpu, best_wall, result


def _row(case: str, build: Callable[[], Graph]) -> tuple[str, float]:
    """One case's table row, and its build + plan wall seconds."""
    build_cpu, build_wall, graph = _best(build)
    plan_cpu, plan_wall, plan = _best(lambda: plan_graph(graph))
    half = set(graph.node_ids[::2])
    diff_cpu, _, _ = _best(lambda: diff_graph(graph, half))
    floor_cpu, _, _ = _best(lambda: _networkx_floor(graph))
    wall = build_wall + plan_wall
    row = (
        f"{case:<8} {len(plan.order):>6} {build_cpu:>8.3f} {plan_cpu:>7.3f} {diff_cpu:>7.3f} "
        f"{floor_cpu:>6.3f} {plan_cpu / floor_cpu:>7.1f} {build_cpu + plan_cpu:>8.3f} "
        f"{wall:>8.3f} {'ok' if wall < BUDGET_S else 'SLOW'}"
    )
    return row, wall


def main() -> None:
    """Print one row per case: nodes, build, plan, diff and baseline seconds, plan/baseline."""
    print(f"CPU seconds of this process unless marked wall; best of {REPEATS} runs")
    header = (
        f"{'case':<8} {'nodes':>6} {'build s':>8} {'plan s':>7} {'diff s':>7} "
        f"{'nx s':>6} {'plan/nx':>7} {'b+p cpu':>8} {'b+p wall':>8}"
    )
    print(header)
    print("-" * len(header))
    slow: list[str] = []
    for case, build in (("chain", _chain), ("fan_out", _fan_out), ("grid", _grid)):
        row, wall = _row(case, build)
        print(row, flush=True)
        if wall >= BUDGET_S:
            slow.append(case)
    print(f"budget: build + plan under {BUDGET_S:.0f} s wall per case; over: {slow or 'none'}")


if __name__ == "__main__":
    main()
