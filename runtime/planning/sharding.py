"""Keyed parallelism in the plan: a node of ``parallelism=N`` becomes N hosts, one logical node.

The runners deploy what ``shard_plan`` returns instead of one host per node:

- a node of parallelism N is N hosts, keyed ``<node_id>.<s>of<N>`` (one host keeps the node
  id as its key), each owning the keys whose stable hash modulo N is ``s``
  (``runtime.dataplane.exchange``); a sharded source reads a group of partitions, or its own
  keys;
- an edge between operator nodes of equal parallelism is forward: shard ``s`` feeds shard
  ``s`` alone (an operator's output keeps its input's keys, so they are already the right
  ones); any other edge is an exchange, every producer shard sending each consumer shard the
  records of that shard's keys, and the consumer taking each producer shard as one input slot
  (watermark, end-of-stream and barriers aligned over the slots, see ``NodeWorker``);
- every shard takes part in checkpoints under its own key, so a snapshot restores the same
  shard of a graph run with the same parallelism.

A source shard whose partitions all went quiet is idle (``connectors.watermarks``): it tells
its consumers so (``WatermarkStatus``, as Flink's), and a consumer leaves an idle slot out of
its watermark and of what it holds back, going by the highest of the slots' watermarks once
all are idle. So a live stream that pauses releases every event it delivered, however its
partitions fall over the shards, as one reader of every partition would; a shard that becomes
active again is late for what the others already released, as any input is.

Parallelism is not part of a node's id: a keyed operator's output per key depends only on
that key's events, in the order the watermarks allow, so it is the same whatever N (the
runners' tests check it exactly). A deployment runs the same plan, every shard a named actor
(``runtime.deployment.sharded_nodes``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

from runtime.dataplane.exchange import KeyRoute, ShardedSource
from runtime.dataplane.stats import LatencyHistogram, NodeStats
from runtime.planning.wiring import EdgeSpec, HostSpec
from streamdag.batch import Batch
from streamdag.graph import Graph, Node
from streamdag.operator import shard_instance_id

__all__ = [
    "gather_outputs",
    "instance_keys",
    "merge_stats",
    "shard_plan",
    "shard_stats",
]

Keyed = list[list[tuple[str, HostSpec]]]


def instance_keys(graph: Graph, node: Node) -> list[str]:
    """The keys of the hosts running ``node`` in ``graph``, shard by shard."""
    count = graph.parallelism_of(node)
    return [shard_instance_id(node.node_id, shard, count) for shard in range(count)]


def shard_plan(graph: Graph, generations: Sequence[Sequence[HostSpec]],
               edges: Sequence[EdgeSpec]) -> tuple[Keyed, list[EdgeSpec]]:
    """The hosts to deploy, keyed, by generation, and the edges between them.

    Unsharded graphs keep one host per node keyed by its id and their edges as they are.
    """
    by_id = {node.node_id: node for node in graph.nodes}
    counts = {node.node_id: graph.parallelism_of(node) for node in graph.nodes}

    def forward(upstream: Node, downstream: Node) -> bool:
        count = counts[upstream.node_id]
        return upstream.role != "source" and count == counts[downstream.node_id]

    def fan_in(node: Node) -> tuple[int, ...]:
        return tuple(1 if forward(i, node) else counts[i.node_id] for i in node.inputs)

    keyed: Keyed = []
    for generation in generations:
        hosts: list[tuple[str, HostSpec]] = []
        for host in generation:
            node = host.node
            count, slots = counts[node.node_id], fan_in(node)
            if count == 1 and all(n == 1 for n in slots):
                hosts.append((node.node_id, host))
                continue
            for shard, key in enumerate(instance_keys(graph, node)):
                source = (None if host.source is None else
                          host.source if count == 1 else
                          ShardedSource(host.source, KeyRoute(shard, count)))
                hosts.append((key, dataclasses.replace(
                    host, source=source, shard=shard, shards=count, fan_in=slots)))
        keyed.append(hosts)
    physical: list[EdgeSpec] = []
    for edge in edges:
        upstream, downstream = by_id[edge.upstream], by_id[edge.downstream]
        ups, downs = instance_keys(graph, upstream), instance_keys(graph, downstream)
        if len(ups) == 1 and len(downs) == 1:
            physical.append(edge)
            continue
        offset = sum(fan_in(downstream)[:edge.input_index])
        if forward(upstream, downstream):
            physical.extend(EdgeSpec(f"{edge.edge}/{s}", up, down, offset)
                            for s, (up, down) in enumerate(zip(ups, downs, strict=True)))
            continue
        physical.extend(
            EdgeSpec(f"{edge.edge}/{a}.{b}", up, down, offset + a,
                     KeyRoute(b, len(downs)) if len(downs) > 1 else None)
            for a, up in enumerate(ups) for b, down in enumerate(downs))
    return keyed, physical


def gather_outputs(graph: Graph, results: Callable[[str], list[Batch]]) -> dict[str, Batch | None]:
    """Each sink's and output's records: ``results(key)`` of its hosts, shard after shard."""
    outputs: dict[str, Batch | None] = {}
    for node in (*graph.sinks, *graph.outputs):
        batches = [batch for key in instance_keys(graph, node) for batch in results(key)]
        outputs[node.name] = Batch.concat(batches) if batches else None
    return outputs


def merge_stats(shards: Sequence[NodeStats]) -> NodeStats:
    """One logical node's figures from its shards': counts and histograms summed, the
    watermark the lowest, output times the first and the latest."""
    if len(shards) == 1:
        return shards[0]
    merged = dataclasses.replace(shards[0])
    for field in dataclasses.fields(NodeStats):
        values = [getattr(stats, field.name) for stats in shards]
        first = values[0]
        if field.name in ("node_id", "name"):
            continue
        if isinstance(first, LatencyHistogram):
            value: object = LatencyHistogram(
                [sum(counts) for counts in zip(*(h.counts for h in values), strict=True)],
                sum(h.total for h in values), sum(h.observations for h in values))
        elif field.name == "watermark":
            value = None if any(v is None for v in values) else min(values)
        elif field.name == "first_output_at":
            value = min((v for v in values if v), default=0.0)
        elif field.name in ("last_output_at", "max_queue_depth"):
            value = max(values)
        elif isinstance(first, dict):
            value = {k: v for shard in values for k, v in shard.items()}
        elif isinstance(first, int | float) and not isinstance(first, bool):
            value = sum(values)
        else:  # figures of a kind that only unsharded nodes have (an inference engine's)
            value = next((v for v in values if v is not None), first)
        setattr(merged, field.name, value)
    return merged


def shard_stats(graph: Graph, report: Mapping[str, NodeStats]
                ) -> tuple[dict[str, NodeStats], dict[str, tuple[NodeStats, ...]]]:
    """Per node name: its shards' figures summed, and (sharded nodes) each shard's."""
    merged: dict[str, NodeStats] = {}
    per_shard: dict[str, tuple[NodeStats, ...]] = {}
    for node in graph.nodes:
        shards = tuple(report[key] for key in instance_keys(graph, node))
        merged[node.name] = merge_stats(shards)
        if len(shards) > 1:
            per_shard[node.name] = shards
    return merged, per_shard

