"""Sharded nodes in a deployment: a node of ``parallelism=N`` is N named actors, one logical node.

The deployment runs what ``runtime.planning.sharding.shard_plan`` plans for the runners, under
registry keys: shard ``s`` of a node registered under ``key`` is ``<key>.<s>of<N>`` (an
unsharded node keeps ``key``), its actor ``node_actor_name`` of that key. Each shard is a
registry entry of its own, so regions, retirement, crashes, checkpoints (every shard
snapshots under its key and restores the same shard) and recovery work shard by shard as they
do node by node; the entry records its shard, its input slots and which of them take only its
own keys (``NodeRequest.routed``), so a recovery re-wires exchange edges with their routes.
Dedup, status and metrics see the logical node: shards are shared together or not at all.

Tag queries follow unsharded nodes only, and neither a tag query nor a node reading one
(directly or not) is sharded: what a query follows comes and goes, and its loop check sees
nodes, not shards.

Sharing rule: a node is shared only when it is the same computation (node id) *and* runs with
the same parallelism. A graph that defines a running node with another parallelism is refused
with the running one's parallelism: running a second copy would publish a sink's output twice
and do the work twice, and quietly reusing the running shards would ignore what the graph
asked; the output per key is the same whatever the parallelism, so asking the running one's
costs nothing.

>>> import streamdag as sd
>>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
>>> graph = sd.Graph("g", outputs=[ticks.ema("price", span=3, name="smooth", parallelism=2)])
>>> from runtime.planning.wiring import wire_graph
>>> reader = lambda node: f"read {node.name}"  # connector factories, unused here
>>> hosts = {h.node.node_id: h for generation in wire_graph(graph, {}, {}, reader)[0]
...          for h in generation}
>>> plan = plan_shards("live", graph, {n.node_id: n.node_id for n in graph.nodes}, hosts)
>>> [(r.name, r.shard, r.shards, len(r.inputs), r.routed) for r in plan.requests]
[('ticks', 0, 1, 0, ()), ('smooth', 0, 2, 1, (0,)), ('smooth', 1, 2, 1, (0,))]
>>> [edge.route for edge in plan.edges]
[KeyRoute(shard=0, shards=2), KeyRoute(shard=1, shards=2)]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from runtime.dataplane.messages import edge_id
from runtime.dataplane.stats import NodeStats
from runtime.deployment.node_registry import (
    NodeRegistry,
    NodeRequest,
    node_actor_name,
    shard_edge_id,
)
from runtime.planning.sharding import merge_stats, shard_plan
from runtime.planning.wiring import EdgeSpec, HostSpec
from streamdag.graph import Graph
from streamdag.operator import shard_instance_id

__all__ = ["ShardedPlan", "logical_stats", "parallelism_refusal", "plan_shards"]


@dataclass(frozen=True)
class ShardedPlan:
    """What a deployment runs for one graph: hosts, registry requests and edges, by shard key."""

    #: How to build every shard, by registry key.
    hosts: Mapping[str, HostSpec]
    #: Every node's shard keys, by node id (one key for an unsharded node).
    shard_keys: Mapping[str, tuple[str, ...]]
    #: What the graph asks of the registry, one request per shard.
    requests: tuple[NodeRequest, ...]
    #: Every edge between the shards, with its key route where it has one.
    edges: tuple[EdgeSpec, ...]

    def generations(self, creation_order: Sequence[Sequence[str]]
                    ) -> list[list[tuple[str, HostSpec]]]:
        """The shards of ``creation_order``'s nodes (generations of node ids), keyed."""
        return [[(key, self.hosts[key]) for node_id in generation
                 for key in self.shard_keys[node_id]] for generation in creation_order]


def plan_shards(deployment: str, graph: Graph, keys: Mapping[str, str],
                hosts: Mapping[str, HostSpec]) -> ShardedPlan:
    """The shards of ``graph``'s nodes (registered under ``keys`` by node id, built from
    ``hosts`` by node id) and the edges between them, as deployment ``deployment`` runs them."""
    # Step 1: the runners' plan, keyed by node id.
    logical = [EdgeSpec(edge_id(up.node_id, node.node_id, index), up.node_id, node.node_id,
                        index)
               for node in graph.nodes for index, up in enumerate(node.inputs)]
    keyed, physical = shard_plan(graph, [[hosts[n.node_id] for n in graph.nodes]], logical)
    # Step 2: its keys renamed to registry keys (salted per graph without dedup).
    counts = {node.node_id: graph.parallelism_of(node) for node in graph.nodes}
    rename = {shard_instance_id(node_id, s, n): shard_instance_id(keys[node_id], s, n)
              for node_id, n in counts.items() for s in range(n)}
    built = {rename[key]: host for generation in keyed for key, host in generation}
    # Step 3: every shard's input slots, and which take only its keys.
    slots: dict[str, dict[int, str]] = {key: {} for key in built}
    routed: dict[str, list[int]] = {key: [] for key in built}
    for edge in physical:
        slots[rename[edge.downstream]][edge.input_index] = rename[edge.upstream]
        if edge.route is not None:
            routed[rename[edge.downstream]].append(edge.input_index)
    shard_keys = {node.node_id: tuple(shard_instance_id(keys[node.node_id], s, counts[
        node.node_id]) for s in range(counts[node.node_id])) for node in graph.nodes}
    requests = tuple(
        NodeRequest(key, node.node_id, node_actor_name(deployment, key), node.name,
                    node.operator, node.role, tuple(slots[key][i] for i in sorted(slots[key])),
                    shard=shard, shards=counts[node.node_id], routed=tuple(sorted(routed[key])))
        for node in graph.nodes for shard, key in enumerate(shard_keys[node.node_id]))
    # Step 4: the edges as the registry names them (a recovery re-wires them from it).
    edges = tuple(EdgeSpec(shard_edge_id(upstream, request.key, index), upstream, request.key,
                           index,
                           request.route_of(index))
                  for request in requests for index, upstream in enumerate(request.inputs))
    return ShardedPlan(built, shard_keys, requests, edges)


def parallelism_refusal(registry: NodeRegistry, graph: Graph,
                        keys: Mapping[str, str]) -> str | None:
    """Why ``graph`` cannot run here as it asks (a node it shares runs with another
    parallelism, or a tag query or what reads it is sharded); None if it can."""
    queried: set[str] = set()  # tag queries and every node downstream of one
    for node in graph.nodes:  # inputs come first
        wanted = graph.parallelism_of(node)
        if node.operator == "tag_query" or any(i.node_id in queried for i in node.inputs):
            queried.add(node.node_id)
            if wanted > 1:
                return (f"node {node.name!r} of graph {graph.name!r} asks for parallelism "
                        f"{wanted}, but it is or reads a tag query, whose inputs come and go "
                        "and which tells loops apart by node: a deployment runs those "
                        "unsharded; give it parallelism=1")
        running = registry.shards_of(keys[node.node_id])
        if running and running[0].shards != wanted:
            return (f"node {node.name!r} of graph {graph.name!r} asks for parallelism {wanted}, "
                    f"but the same node runs in this deployment with parallelism "
                    f"{running[0].shards} for {sorted(running[0].graphs)}; a node is shared "
                    "only with its parallelism (running it twice would publish its output "
                    f"twice): give it parallelism={running[0].shards} (the output per key is "
                    "the same), or remove those submissions first")
    return None


def logical_stats(node_id: str, name: str, keys: Sequence[str],
                  stats: Mapping[str, NodeStats]) -> NodeStats:
    """One logical node's figures from its shards' (by key): ``merge_stats`` of what is known."""
    known = [stats[key] for key in keys if key in stats]
    return merge_stats(known) if known else NodeStats(node_id, name)
