"""The planner: validation, generations, execution plans and diffs, as pure functions.

Everything here is a function of its arguments (graphs, names, ids) built on networkx; nothing
starts an actor or touches the network, so the controller only carries out what these return.
Every step is O(V + E) apart from sorting the nodes of a generation by name. networkx (about
11 MiB and 285 modules) is imported by the functions that plan, so that a process that only
imports this module (the Ray backend, through the wiring's ``HostSpec``) does not load it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal, NamedTuple, get_args

from streamdag.errors import (
    CycleError,
    DanglingInputError,
    DuplicateNameError,
    DuplicateSinkTopicError,
    PlanError,
    SchemaMismatchError,
    TopicLoopError,
    UnknownOperatorError,
)
from streamdag.graph import Graph, Node
from streamdag.operator_registry import lookup
from streamdag.structure import find_cycle, validate_structure

if TYPE_CHECKING:
    import networkx as nx

__all__ = [
    "ITERATE_OPERATOR",
    "ExecutionPlan",
    "GraphDiff",
    "IterateBlock",
    "PlanMode",
    "dependency_graph",
    "diff_graph",
    "plan_graph",
    "validate_graph",
    "validate_structure",
]

PlanMode = Literal["batch", "streaming"]

#: Operator type of a fixed-point block: the only place where values may feed back.
ITERATE_OPERATOR = "iterate"


class IterateBlock(NamedTuple):
    """A fixed-point ``iterate`` node of a plan, with its convergence settings."""

    node_id: str
    tolerance: float
    max_iterations: int


def dependency_graph(graph: Graph) -> nx.DiGraph:
    """The graph as a networkx DiGraph over node ids, edges from each input to its consumer.

    Each vertex carries ``name`` and ``operator`` attributes. A node that reads one input twice
    (``crossover(x, x)``) gives one edge.
    """
    import networkx as nx

    flow = nx.DiGraph()
    flow.add_nodes_from(
        (node.node_id, {"name": node.name, "operator": node.operator}) for node in graph.nodes
    )
    flow.add_edges_from(
        (upstream.node_id, node.node_id) for node in graph.nodes for upstream in node.inputs
    )
    return flow


def validate_graph(graph: Graph) -> None:
    """Re-check a built or loaded Graph: names, operators, inputs, cycles, topics, schemas.

    Topics: no two sinks write one topic, and no sink writes a topic a source of the graph reads.

    Each condition raises its own GraphError subclass, naming the nodes involved. ``plan_graph``
    runs every check but the schema one, which re-runs each operator's ``output_schema`` (as
    ``make_node`` did when the node was built).
    """
    flow = _checked_dependency_graph(graph)
    _layers(graph, flow, flow)
    _check_schemas(graph)


def _checked_dependency_graph(graph: Graph) -> nx.DiGraph:
    """The dependency graph, once names, operators, sink topics and inputs are checked."""
    _check_unique_names(graph)
    _check_operators_and_sink_topics(graph)
    present = {node.node_id for node in graph.nodes}
    for node in graph.nodes:
        for upstream in node.inputs:
            if upstream.node_id not in present:
                raise DanglingInputError(
                    f"graph {graph.name!r}: node {node.name!r} reads {upstream.name!r} "
                    f"(id {upstream.node_id[:12]}), which is not a node of the graph; "
                    "build the graph from its outputs so every upstream node is included"
                )
    return dependency_graph(graph)


def _layers(graph: Graph, flow: nx.DiGraph, layered: nx.DiGraph) -> list[list[str]]:
    """Kahn layers of ``layered`` (``flow`` or its reverse): longest-path generations.

    A cycle is named in data-flow order from ``flow``, starting at its first-listed node.
    """
    import networkx as nx

    try:
        return list(nx.topological_generations(layered))
    except nx.NetworkXUnfeasible:
        position = {node.node_id: index for index, node in enumerate(graph.nodes)}
        cycle = find_cycle(flow, position)
        raise CycleError([flow.nodes[node_id]["name"] for node_id in cycle]) from None


@dataclass(frozen=True)
class ExecutionPlan:
    """Generations of node ids in the order they run: batch sources first, streaming sinks first.

    Nodes of one generation are independent of each other and may run (or be created) in
    parallel. A plan is immutable; ``validate()`` checks it against its own mode's rule.

    >>> import streamdag as sd
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> plan = plan_graph(sd.Graph("demo", outputs=[ticks.to_topic("out", name="out")]))
    >>> [[plan.names[node_id] for node_id in generation] for generation in plan.generations]
    [['out'], ['ticks']]
    """

    mode: PlanMode
    generations: tuple[tuple[str, ...], ...]
    names: Mapping[str, str] = field(hash=False)
    edges: tuple[tuple[str, str], ...]
    iterate_blocks: tuple[IterateBlock, ...] = ()

    @property
    def order(self) -> tuple[str, ...]:
        """Every node id, generation after generation."""
        return tuple(node_id for generation in self.generations for node_id in generation)

    @property
    def max_parallelism(self) -> int:
        """Size of the largest generation: the most nodes that can run at once."""
        return max((len(generation) for generation in self.generations), default=0)

    def summary(self) -> str:
        """One line: mode, node and edge counts, generations, parallelism, iterate blocks."""
        blocks = len(self.iterate_blocks)
        return (
            f"{self.mode} plan: {len(self.order)} nodes, {len(self.edges)} edges, "
            f"{len(self.generations)} generations, max parallelism {self.max_parallelism}, "
            f"{blocks} iterate block{'' if blocks == 1 else 's'}"
        )

    def validate(self) -> None:
        """Raise PlanError unless every node appears once and every edge follows the mode's rule.

        Batch: each producer is in an earlier generation than each of its consumers.
        Streaming: each consumer is in an earlier generation than each of its producers.
        """
        if self.mode not in get_args(PlanMode):
            raise PlanError(
                f"plan mode {self.mode!r} is not one of {list(get_args(PlanMode))}; "
                "build plans with plan_graph(graph, mode=...)"
            )
        generation_of = self._generation_index()
        for producer, consumer in self.edges:
            for node_id in (producer, consumer):
                if node_id not in generation_of:
                    raise PlanError(
                        f"{self.mode} plan: edge {self._label(producer)} -> "
                        f"{self._label(consumer)} names node {self._label(node_id)}, which is "
                        "in no generation; rebuild the plan with plan_graph()"
                    )
            first, second = (producer, consumer) if self.mode == "batch" else (consumer, producer)
            if generation_of[first] >= generation_of[second]:
                rule = (
                    "every producer runs in an earlier generation than its consumers"
                    if self.mode == "batch"
                    else "every consumer is started in an earlier generation than its producers"
                )
                raise PlanError(
                    f"{self.mode} plan: edge {self._label(producer)} -> {self._label(consumer)} "
                    f"has the producer in generation {generation_of[producer]} and the consumer "
                    f"in generation {generation_of[consumer]}, but {rule}; rebuild the plan "
                    "with plan_graph()"
                )
        for block in self.iterate_blocks:
            self._check_iterate_block(block, generation_of)

    def _generation_index(self) -> dict[str, int]:
        generation_of: dict[str, int] = {}
        for index, generation in enumerate(self.generations):
            if not generation:
                raise PlanError(
                    f"{self.mode} plan: generation {index} is empty; every generation holds at "
                    "least one node"
                )
            for node_id in generation:
                if node_id in generation_of:
                    raise PlanError(
                        f"{self.mode} plan: node {self._label(node_id)} appears in generations "
                        f"{generation_of[node_id]} and {index}; each node runs exactly once"
                    )
                generation_of[node_id] = index
        return generation_of

    def _check_iterate_block(self, block: IterateBlock, generation_of: Mapping[str, int]) -> None:
        if block.node_id not in generation_of:
            raise PlanError(
                f"{self.mode} plan: iterate block {self._label(block.node_id)} is in no "
                "generation; rebuild the plan with plan_graph()"
            )
        if not block.tolerance > 0.0 or block.max_iterations < 1:
            raise PlanError(
                f"{self.mode} plan: iterate block {self._label(block.node_id)} has tolerance "
                f"{block.tolerance!r} and max_iterations {block.max_iterations!r}; expected a "
                "tolerance > 0 and max_iterations >= 1"
            )

    def _label(self, node_id: str) -> str:
        name = self.names.get(node_id)
        return f"{name!r}" if name is not None else f"id {node_id[:12]}"


def plan_graph(graph: Graph, mode: PlanMode = "streaming") -> ExecutionPlan:
    """Validate ``graph`` and build its validated ExecutionPlan in ``mode``.

    A node's generation is the length of the longest path to it: from the sources in batch mode
    (sources are generation 0), from the sinks in streaming mode (sinks are generation 0).
    Inside a generation nodes are sorted by name, then id.
    """
    if mode not in get_args(PlanMode):
        raise PlanError(
            f"plan mode {mode!r} is not one of {list(get_args(PlanMode))}; pick 'batch' "
            "(sources first, for replays) or 'streaming' (sinks first, for deployment)"
        )
    flow = _checked_dependency_graph(graph)
    names = {node.node_id: node.name for node in graph.nodes}
    layers = _layers(graph, flow, flow if mode == "batch" else flow.reverse(copy=False))
    generations = tuple(
        tuple(sorted(layer, key=lambda node_id: (names[node_id], node_id)))
        if len(layer) > 1
        else tuple(layer)
        for layer in layers
    )
    plan = ExecutionPlan(
        mode=mode,
        generations=generations,
        names=MappingProxyType(names),
        edges=_edges(flow, generations),
        iterate_blocks=_iterate_blocks(graph, generations),
    )
    plan.validate()
    return plan


@dataclass(frozen=True)
class GraphDiff:
    """What submitting a graph changes: nodes to create (sinks first) and nodes already running."""

    new: tuple[str, ...]
    reused: tuple[str, ...]
    reuse_ratio: float
    creation_order: tuple[tuple[str, ...], ...]
    plan: ExecutionPlan


def diff_graph(graph: Graph, existing: Collection[str]) -> GraphDiff:
    """Split ``graph``'s nodes into new and reused against the node ids ``existing`` already.

    ``new`` is the streaming plan's order restricted to new nodes, so each new node is created
    after every new node downstream of it; ``creation_order`` groups them into generations
    that may be created in parallel. ``reuse_ratio`` is reused / total (0.0 for no nodes).
    """
    plan = plan_graph(graph, mode="streaming")
    # Membership is tested once per node: copy only what cannot answer it in constant time.
    is_hashed = isinstance(existing, AbstractSet | Mapping)
    existing_ids: Collection[str] = existing if is_hashed else frozenset(existing)
    creation_order = tuple(
        new_nodes
        for generation in plan.generations
        if (new_nodes := tuple(n for n in generation if n not in existing_ids))
    )
    new = tuple(node_id for generation in creation_order for node_id in generation)
    reused = tuple(node_id for node_id in plan.order if node_id in existing_ids)
    total = len(new) + len(reused)
    return GraphDiff(
        new=new,
        reused=reused,
        reuse_ratio=len(reused) / total if total else 0.0,
        creation_order=creation_order,
        plan=plan,
    )


def _edges(flow: nx.DiGraph, generations: Sequence[Sequence[str]]) -> tuple[tuple[str, str], ...]:
    """Each (producer, consumer) once, sorted by plan position so graph build order is moot."""
    position = {
        node_id: index
        for index, node_id in enumerate(n for generation in generations for n in generation)
    }
    return tuple(sorted(flow.edges, key=lambda edge: (position[edge[0]], position[edge[1]])))


def _iterate_blocks(
    graph: Graph, generations: tuple[tuple[str, ...], ...]
) -> tuple[IterateBlock, ...]:
    by_id = {node.node_id: node for node in graph.nodes}
    blocks: list[IterateBlock] = []
    for generation in generations:
        for node_id in generation:
            node = by_id[node_id]
            if node.operator == ITERATE_OPERATOR:
                blocks.append(
                    IterateBlock(
                        node_id=node_id,
                        tolerance=float(node.params["tolerance"]),
                        max_iterations=int(node.params["max_iterations"]),
                    )
                )
    return tuple(blocks)


def _check_unique_names(graph: Graph) -> None:
    seen: dict[str, Node] = {}
    for node in graph.nodes:
        other = seen.setdefault(node.name, node)
        if other.node_id != node.node_id:
            raise DuplicateNameError(
                f"graph {graph.name!r}: two different nodes are named {node.name!r} "
                f"({other.operator}, id {other.node_id[:12]} and {node.operator}, id "
                f"{node.node_id[:12]}); give each a unique name="
            )


def _check_operators_and_sink_topics(graph: Graph) -> None:
    writers: dict[str, str] = {}
    readers: dict[str, str] = {}
    for node in graph.nodes:
        try:
            definition = lookup(node.operator)
        except UnknownOperatorError as exc:
            raise UnknownOperatorError(f"graph {graph.name!r}: node {node.name!r}: {exc}") from None
        if definition.role == "source" and "topic" in node.params:
            readers.setdefault(str(node.params["topic"]), node.name)
        if definition.role != "sink" or "topic" not in node.params:
            continue
        topic = str(node.params["topic"])
        writer = writers.setdefault(topic, node.name)
        if writer != node.name:
            raise DuplicateSinkTopicError(
                f"graph {graph.name!r}: sinks {writer!r} and {node.name!r} both write topic "
                f"{topic!r}; give each sink its own topic"
            )
    # Checked after the loop: a source of another branch may come after the sink in order.
    for topic, writer in writers.items():
        if topic in readers:
            raise TopicLoopError(
                f"graph {graph.name!r}: sink {writer!r} writes topic {topic!r}, which source "
                f"{readers[topic]!r} of the same graph reads, so the graph's output would come "
                "back as its input (a loop through Kafka); write another topic"
            )


def _check_schemas(graph: Graph) -> None:
    """Recompute each node's output schema from its inputs: what an edge carries must fit."""
    for node in graph.nodes:
        definition = lookup(node.operator)
        input_schemas = [upstream.output_schema for upstream in node.inputs]
        try:
            expected = definition.output_schema(node.params, input_schemas)
        except SchemaMismatchError as exc:
            raise SchemaMismatchError(f"graph {graph.name!r}: node {node.name!r}: {exc}") from None
        if expected != node.output_schema:
            raise SchemaMismatchError(
                f"graph {graph.name!r}: node {node.name!r} declares output {node.output_schema} "
                f"but {node.operator} gives {expected} from its inputs "
                f"{[upstream.name for upstream in node.inputs]}; rebuild the node from its "
                "current inputs"
            )
