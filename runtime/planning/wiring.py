"""How a graph becomes hosts and edges: pure functions shared by the local and Ray runners."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from runtime.dataplane.exchange import KeyRoute
from runtime.dataplane.messages import edge_id
from runtime.dataplane.stats import NodeStats
from runtime.planning.planner import plan_graph
from streamdag.batch import Batch
from streamdag.connector import SinkFactory, SourceFactory
from streamdag.errors import GraphError
from streamdag.graph import Graph, Node, make_node

if TYPE_CHECKING:
    from runtime.dataplane.checkpointing import CheckpointTarget, NodeSnapshot
    from runtime.dataplane.host import RuntimeSettings

__all__ = [
    "EdgeSpec",
    "HostSpec",
    "RunResult",
    "merge_graphs",
    "wire_graph",
]


@dataclass(frozen=True)
class EdgeSpec:
    """One edge: ``upstream``'s output into input ``input_index`` of ``downstream``.

    Between sharded nodes ``input_index`` is the consumer's input slot, and ``route`` the
    keys of the consumer shard (None: every record).
    """

    edge: str
    upstream: str
    downstream: str
    input_index: int
    route: KeyRoute | None = None


@dataclass(frozen=True)
class HostSpec:
    """What a host needs to be built: the node and its connectors."""

    node: Node
    source: SourceFactory | None
    sink: SinkFactory | None
    capture: bool
    #: Keyed parallelism: shard ``shard`` of ``shards``; upstream shards feeding each input.
    shard: int = 0
    shards: int = 1
    fan_in: tuple[int, ...] = ()

    def host_arguments(
        self,
        settings: RuntimeSettings,
        *,
        incarnation: int = 0,
        snapshot: NodeSnapshot | None = None,
        checkpoints: CheckpointTarget | None = None,
    ) -> dict[str, Any]:
        """Keyword arguments of the ``NodeHost`` (in process or as an actor) for this node."""
        config = self.node.config()
        if self.shards > 1 or self.fan_in:
            config = replace(config, shard=self.shard, shards=self.shards, fan_in=self.fan_in)
        return {"config": config, "settings": settings, "source": self.source,
                "sink": self.sink, "capture": self.capture, "incarnation": incarnation,
                "snapshot": snapshot, "checkpoints": checkpoints}


@dataclass(frozen=True)
class RunResult:
    """A finished run: each output node's records, and every node's counters.

    A sharded node's output holds its shards' outputs one after the other (each key's records
    in order), its ``stats`` the shards' figures summed, and ``shards`` each shard's.
    """

    outputs: Mapping[str, Batch | None]
    stats: Mapping[str, NodeStats]
    shards: Mapping[str, tuple[NodeStats, ...]] = field(default_factory=dict)

    def records(self, name: str) -> list[dict[str, object]]:
        """The records an output node produced, as dicts."""
        batch = self.outputs[name]
        return [] if batch is None else batch.to_records()


def wire_graph(
    graph: Graph,
    sources: Mapping[str, SourceFactory],
    sinks: Mapping[str, SinkFactory],
    default_source: Callable[[Node], SourceFactory] | None = None,
    default_sink: Callable[[Node], SinkFactory] | None = None,
    *,
    capture_outputs: bool = True,
) -> tuple[list[list[HostSpec]], list[EdgeSpec]]:
    """Hosts in creation order (generations, sinks first) and the edges between them.

    ``capture_outputs`` keeps, in memory, what output nodes that are not sinks produce: right
    for tests and bounded runs, never for long-running deployments.
    """
    plan = plan_graph(graph, mode="streaming")
    by_id = {node.node_id: node for node in graph.nodes}
    leaves = {node.node_id for node in graph.sinks} | {n.node_id for n in graph.outputs}
    unknown = (set(sources) | set(sinks)) - {node.name for node in graph.nodes}
    if unknown:
        raise GraphError(
            f"graph {graph.name!r} has no node(s) {sorted(unknown)} to bind a connector to; "
            f"its nodes are {[n.name for n in graph.nodes]}"
        )
    generations: list[list[HostSpec]] = []
    for generation in plan.generations:
        hosts = []
        for node_id in generation:
            node = by_id[node_id]
            hosts.append(
                HostSpec(
                    node,
                    _connector_for(node, "source", sources, default_source),
                    _connector_for(node, "sink", sinks, default_sink),
                    capture=capture_outputs and node.node_id in leaves and node.role != "sink",
                )
            )
        generations.append(hosts)
    edges = [
        EdgeSpec(edge_id(upstream.node_id, node.node_id, index), upstream.node_id,
                 node.node_id, index)
        for node in graph.nodes
        for index, upstream in enumerate(node.inputs)
    ]
    return generations, edges


F = TypeVar("F")


def _connector_for(
    node: Node,
    role: str,
    bound: Mapping[str, F],
    default: Callable[[Node], F] | None,
) -> F | None:
    """The connector factory of a ``role`` node: bound by name, else the default, else refused."""
    if node.role != role:
        return None
    if node.name in bound:
        return bound[node.name]
    if default is None:
        what, argument = ("reader", "sources") if role == "source" else ("writer", "sinks")
        raise GraphError(
            f"{role} {node.name!r} (topic {node.params.get('topic')!r}) has no {what}: pass "
            f"{argument}={{{node.name!r}: factory}} or run with Kafka configured"
        )
    return default(node)


def merge_graphs(name: str, graphs: Sequence[Graph]) -> Graph:
    """One graph running every node of ``graphs`` once: nodes with equal ids are shared.

    Names clash only between different computations; such nodes are renamed
    ``<graph>.<name>``. Ids do not depend on names, so every node keeps its id.
    """
    owners: dict[str, set[str]] = {}
    for graph in graphs:
        for node in graph.nodes:
            owners.setdefault(node.name, set()).add(node.node_id)
    rebuilt: dict[str, Node] = {}

    def rebuild(node: Node, graph: Graph) -> Node:
        if node.node_id in rebuilt:
            return rebuilt[node.node_id]
        inputs = [rebuild(i, graph) for i in node.inputs]
        clash = len(owners[node.name]) > 1
        copy = make_node(
            node.operator, inputs, node.params,
            name=f"{graph.name}.{node.name}" if clash else node.name,
            interval=node.interval, period=node.period, missing=node.missing, tags=node.tags,
            function=node.function, code_hash=node.code_hash, shareable=node.shareable,
            parallelism=node.parallelism,
        )
        rebuilt[node.node_id] = copy
        return copy

    outputs = [rebuild(output, graph) for graph in graphs for output in graph.outputs]
    return Graph(name, outputs=outputs)
