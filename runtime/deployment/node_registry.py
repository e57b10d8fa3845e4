"""The node registry of a deployment: which actor runs each node, who uses it, and its region.

The registry is immutable data and pure functions, so the reference counting and garbage
collection the controller relies on can be checked against a model without Ray: ``acquire``
adds a graph's references, ``release`` drops them and names the nodes no graph uses any more,
in the order they are retired (sources first). It is persisted as JSON, written atomically
(temp file, fsync, rename; ``state_files``), and reloaded by a controller that restarts,
which finds the surviving actors by name (``node_actors``).

>>> request = NodeRequest("a" * 64, "a" * 64, "streamdag-demo-node-aaa", "ticks",
...                       "kafka_source", "source", ())
>>> registry = acquire(NodeRegistry(), "g1", [request])
>>> registry.entries["a" * 64].refcount
1
>>> registry, retired = release(registry, "g1")
>>> len(registry.entries), retired == ("a" * 64,)
(0, True)
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from runtime.dataplane.exchange import KeyRoute
from runtime.dataplane.messages import edge_id
from streamdag.errors import StreamdagError

if TYPE_CHECKING:
    from streamdag.graph import Node

__all__ = [
    "NODE_NAMESPACE",
    "REGISTRY_FORMAT",
    "NodeEntry",
    "NodeRegistry",
    "NodeRequest",
    "RegistryFileError",
    "acquire",
    "assign_regions",
    "instance_key",
    "mark_alive",
    "mark_dead",
    "node_actor_name",
    "node_requests",
    "release",
    "retirement_order",
    "shard_edge_id",
    "with_actor_name",
    "with_follows",
    "with_since",
]

#: Ray namespace of every named actor a deployment owns (controller and nodes).
NODE_NAMESPACE = "streamdag"
#: Version of the registry's JSON document; a different one is refused when loading.
REGISTRY_FORMAT = 1

class RegistryFileError(StreamdagError):
    """A persisted registry or submissions file cannot be read back."""


def node_actor_name(deployment: str, key: str) -> str:
    """The deterministic Ray actor name of the node (or shard) registered under ``key``.

    >>> node_actor_name("live", "0123456789abcdef" * 4)
    'streamdag-live-node-0123456789abcdef01234567'
    >>> node_actor_name("live", "0123456789abcdef" * 4 + ".1of2")
    'streamdag-live-node-0123456789abcdef01234567-1of2'
    """
    base, _, shard = key.partition(".")
    return f"streamdag-{deployment}-node-{base[:24]}" + (f"-{shard}" if shard else "")


def shard_edge_id(upstream: str, downstream: str, input_index: int) -> str:
    """The name of the edge between two registry keys: ``edge_id``, with the shards it joins
    when either end is a shard (``edge_id`` keeps only the keys' first 16 characters).

    >>> shard_edge_id("a" * 64, "b" * 64 + ".1of2", 0)[-8:]
    '#0/>1of2'
    """
    up, down = upstream.partition(".")[2], downstream.partition(".")[2]
    return edge_id(upstream, downstream, input_index) + (f"/{up}>{down}" if up or down else "")


def instance_key(node_id: str, graph_id: str, *, dedup: bool = True) -> str:
    """The registry key of a node: its ``node_id``, or one salted per graph without dedup.

    Without dedup every graph gets actors of its own (for measuring what dedup saves).

    >>> instance_key("abc", "g1") == "abc"
    True
    >>> instance_key("abc", "g1", dedup=False) == instance_key("abc", "g2", dedup=False)
    False
    """
    if dedup:
        return node_id
    return hashlib.sha256(f"{node_id}/{graph_id}".encode()).hexdigest()


@dataclass(frozen=True)
class NodeRequest:
    """What one graph asks of the registry for one of its nodes."""

    key: str
    node_id: str
    actor_name: str
    name: str
    operator: str
    role: str
    #: Keys of the node's inputs, in input order (a sharded node's: one per input slot).
    inputs: tuple[str, ...]
    #: Which shard of its logical node this is, and of how many (``runtime.planning.sharding``).
    shard: int = field(default=0, kw_only=True)
    shards: int = field(default=1, kw_only=True)
    #: Input slots that take only this shard's keys (exchange edges into a sharded node).
    routed: tuple[int, ...] = field(default=(), kw_only=True)

    @property
    def logical_key(self) -> str:
        """The key of the logical node: the same for every shard of it.

        >>> NodeRequest("ab.1of2", "ab", "n", "m", "map", "operator", (), shard=1,
        ...             shards=2).logical_key
        'ab'
        """
        return self.key if self.shards == 1 else self.key.rsplit(".", 1)[0]

    def route_of(self, index: int) -> KeyRoute | None:
        """The keys input slot ``index`` takes: this shard's, or (None) all it is sent."""
        return KeyRoute(self.shard, self.shards) if index in self.routed else None


@dataclass(frozen=True)
class NodeEntry(NodeRequest):
    """One running node: what was requested, plus the graphs using it, region and liveness."""

    graphs: frozenset[str]
    region: str = ""
    alive: bool = True
    #: Wall-clock time (time.time()) the entry was created: checkpoints older than it hold an
    #: earlier node of the same key (retired since), never this one.
    since: float = 0.0
    #: A tag query: the nodes it follows now, as ``(upstream key, input index, origin)``;
    #: edges like its static inputs' (regions, retirement, recovery), but they come and go.
    follows: tuple[tuple[str, int, str], ...] = ()

    @classmethod
    def of(cls, request: NodeRequest, graph_id: str) -> NodeEntry:
        """The new entry of ``request``, used by ``graph_id`` alone."""
        return cls(**{f.name: getattr(request, f.name) for f in fields(NodeRequest)},
                   graphs=frozenset({graph_id}), since=time.time())

    @property
    def refcount(self) -> int:
        """How many graphs use this node."""
        return len(self.graphs)

    @property
    def upstreams(self) -> tuple[str, ...]:
        """Keys of every node this one reads: its static inputs, then what it follows."""
        return (*self.inputs, *(upstream for upstream, _, _ in self.follows))

    def input_edges(self) -> list[tuple[str, str, int]]:
        """``(edge, upstream key, input index)`` of every edge into this node."""
        return [
            (shard_edge_id(upstream, self.key, index), upstream, index)
            for index, upstream in enumerate(self.inputs)
        ] + [(edge_id(upstream, self.key, index), upstream, index)
             for upstream, index, _ in self.follows]

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        return {**data, "inputs": list(self.inputs), "graphs": sorted(self.graphs),
                "follows": [list(follow) for follow in self.follows],
                "routed": list(self.routed)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeEntry:
        """The entry ``to_dict`` wrote."""
        texts = {f.name: str(data[f.name]) for f in fields(NodeRequest)
                 if f.name not in ("inputs", "shard", "shards", "routed")}
        return cls(
            **texts,
            inputs=tuple(str(i) for i in data["inputs"]),
            shard=int(data.get("shard", 0)), shards=int(data.get("shards", 1)),
            routed=tuple(int(i) for i in data.get("routed", ())),
            graphs=frozenset(str(g) for g in data["graphs"]),
            region=str(data.get("region", "")),
            alive=bool(data.get("alive", True)),
            since=float(data.get("since", 0.0)),
            follows=tuple((str(upstream), int(index), str(origin))
                          for upstream, index, origin in data.get("follows", [])),
        )


@dataclass(frozen=True)
class NodeRegistry:
    """Every node of a deployment by key: an immutable value; the functions below make new ones."""

    entries: Mapping[str, NodeEntry] = field(default_factory=lambda: MappingProxyType({}))

    def live_keys(self) -> frozenset[str]:
        """Keys of nodes whose actor is alive (the ones a new graph may reuse)."""
        return frozenset(key for key, entry in self.entries.items() if entry.alive)

    def actor_names(self) -> dict[str, str]:
        """The actor name of every key."""
        return {key: entry.actor_name for key, entry in self.entries.items()}

    def dead_keys(self) -> frozenset[str]:
        """Keys of nodes whose actor died and that some graph still references."""
        return frozenset(key for key, entry in self.entries.items() if not entry.alive)

    def consumer_edges(self, key: str) -> list[tuple[str, str, int]]:
        """``(edge, consumer key, input index)`` of every edge out of node ``key``."""
        return [
            (edge, consumer.key, index)
            for consumer in self.entries.values()
            for edge, upstream, index in consumer.input_edges()
            if upstream == key
        ]

    def shards_of(self, logical_key: str) -> list[NodeEntry]:
        """The entries of one logical node, shard by shard (one for an unsharded node)."""
        return sorted((e for e in self.entries.values() if e.logical_key == logical_key),
                      key=lambda e: e.shard)

    def routes(self) -> dict[str, KeyRoute]:
        """The key route of every edge into a shard that takes only its own keys, by edge."""
        return {edge: route for entry in self.entries.values()
                for edge, _, index in entry.input_edges()
                if (route := entry.route_of(index)) is not None}

    def describe(self) -> list[dict[str, Any]]:
        """Every logical node for people and the API: actor (the first shard's; ``actors``:
        each shard's), refcount, graphs, region, liveness (of every shard), ``shards``."""
        logical: dict[str, list[NodeEntry]] = {}
        for e in sorted(self.entries.values(), key=lambda e: (e.region, e.name, e.key)):
            logical.setdefault(e.logical_key, []).append(e)
        return [
            {"node_id": e.node_id, "name": e.name, "operator": e.operator, "role": e.role,
             "actor": e.actor_name, "refcount": e.refcount, "graphs": sorted(e.graphs),
             "region": e.region, "alive": all(s.alive for s in shards),
             "shards": e.shards, "actors": [s.actor_name for s in shards]}
            for e, shards in ((shards[0], shards) for shards in logical.values())
        ]

    def to_document(self, deployment: str) -> dict[str, Any]:
        """The JSON document ``save_registry`` writes."""
        return {
            "format": REGISTRY_FORMAT,
            "deployment": deployment,
            "nodes": [self.entries[key].to_dict() for key in sorted(self.entries)],
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> NodeRegistry:
        """The registry of a document ``to_document`` made."""
        if document.get("format") != REGISTRY_FORMAT:
            raise RegistryFileError(
                f"registry document has format {document.get('format')!r}, expected "
                f"{REGISTRY_FORMAT}; it was written by another streamdag version: stop the "
                "deployment with that version, or move the state directory away"
            )
        entries = [NodeEntry.from_dict(item) for item in document.get("nodes", [])]
        return cls(MappingProxyType({entry.key: entry for entry in entries}))


def node_requests(
    deployment: str, nodes: Iterable[Node], keys: Mapping[str, str]
) -> list[NodeRequest]:
    """What a graph's ``nodes`` ask of the registry, each under ``keys[node_id]``."""
    return [
        NodeRequest(keys[node.node_id], node.node_id,
                    node_actor_name(deployment, keys[node.node_id]), node.name, node.operator,
                    node.role, tuple(keys[upstream.node_id] for upstream in node.inputs))
        for node in nodes
    ]


def acquire(registry: NodeRegistry, graph_id: str, requests: Sequence[NodeRequest]) -> NodeRegistry:
    """The registry with ``graph_id`` using every requested node; unknown nodes get entries.

    An entry that exists keeps its actor, name and liveness; only its graph set grows.
    Regions are recomputed over the whole deployment.
    """
    entries = dict(registry.entries)
    for request in requests:
        current = entries.get(request.key)
        if current is None:
            entries[request.key] = NodeEntry.of(request, graph_id)
        elif graph_id not in current.graphs:
            entries[request.key] = replace(current, graphs=current.graphs | {graph_id})
    return NodeRegistry(MappingProxyType(_with_regions(entries)))


def release(registry: NodeRegistry, graph_id: str) -> tuple[NodeRegistry, tuple[str, ...]]:
    """Drop ``graph_id``'s references; return the new registry and the keys to retire.

    A node is retired exactly when no graph uses it any more. Retired keys come producers
    before consumers (sources first), the order in which their actors are stopped so that
    nothing still running pushes into a stopped actor.
    """
    entries = dict(registry.entries)
    retired: set[str] = set()
    for key, entry in registry.entries.items():
        if graph_id not in entry.graphs:
            continue
        remaining = entry.graphs - {graph_id}
        if remaining:
            entries[key] = replace(entry, graphs=remaining)
        else:
            retired.add(key)
            del entries[key]
    order = retirement_order(registry.entries, retired)
    return NodeRegistry(MappingProxyType(_with_regions(entries))), order


def with_follows(
    registry: NodeRegistry, follows: Mapping[str, tuple[tuple[str, int, str], ...]]
) -> NodeRegistry:
    """The registry with what each tag query of ``follows`` follows now; regions recomputed
    (a query and the nodes it follows are one region)."""
    entries = dict(registry.entries)
    for key, followed in follows.items():
        if key in entries and entries[key].follows != followed:
            entries[key] = replace(entries[key], follows=followed)
    return NodeRegistry(MappingProxyType(_with_regions(entries)))


def with_since(registry: NodeRegistry, since: Mapping[str, float]) -> NodeRegistry:
    """The registry with the entries of ``since`` dated back (nodes resumed from a checkpoint
    written then, which a recovery may use again)."""
    entries = dict(registry.entries)
    for key, at in since.items():
        if key in entries:
            entries[key] = replace(entries[key], since=at)
    return NodeRegistry(MappingProxyType(entries))


def mark_dead(registry: NodeRegistry, keys: Iterable[str]) -> NodeRegistry:
    """The registry with the actors of ``keys`` recorded as dead."""
    return _with_liveness(registry, keys, alive=False)


def mark_alive(registry: NodeRegistry, keys: Iterable[str]) -> NodeRegistry:
    """The registry with the actors of ``keys`` recorded as alive."""
    return _with_liveness(registry, keys, alive=True)


def with_actor_name(registry: NodeRegistry, key: str, name: str) -> NodeRegistry:
    """The registry with ``key``'s actor named ``name`` (a pool actor bound to it, or a new
    actor of its own after a recovery); unchanged when ``key`` is not registered.

    >>> request = NodeRequest("k", "k", "streamdag-d-node-k", "n", "map", "operator", ())
    >>> registry = acquire(NodeRegistry(), "g", [request])
    >>> with_actor_name(registry, "k", "streamdag-d-pool-0123456789ab").entries["k"].actor_name
    'streamdag-d-pool-0123456789ab'
    """
    entry = registry.entries.get(key)
    if entry is None or entry.actor_name == name:
        return registry
    return NodeRegistry(MappingProxyType({**registry.entries,
                                          key: replace(entry, actor_name=name)}))


def _with_liveness(registry: NodeRegistry, keys: Iterable[str], *, alive: bool) -> NodeRegistry:
    entries = dict(registry.entries)
    for key in keys:
        if key in entries and entries[key].alive != alive:
            entries[key] = replace(entries[key], alive=alive)
    return NodeRegistry(MappingProxyType(entries))


def assign_regions(entries: Mapping[str, NodeEntry]) -> dict[str, str]:
    """Region of every key: connected components of the union of all graphs.

    A region is named after the smallest key it holds, so its name stays the same as long as
    that node is part of it.

    >>> def entry(key, inputs):
    ...     return NodeEntry(key, key, key, key, "op", "operator", inputs, frozenset({"g"}))
    >>> sorted(assign_regions({"a": entry("a", ()), "b": entry("b", ("a",)),
    ...                        "c": entry("c", ())}).items())
    [('a', 'region-a'), ('b', 'region-a'), ('c', 'region-c')]
    """
    import networkx as nx  # here: a node actor may import this module; it never plans

    union = nx.Graph()
    union.add_nodes_from(entries)
    union.add_edges_from((key, upstream) for key, entry in entries.items()
                         for upstream in entry.upstreams if upstream in entries)
    regions: dict[str, str] = {}
    for component in nx.connected_components(union):
        name = f"region-{min(component)[:12]}"
        regions.update(dict.fromkeys(component, name))
    return {key: regions[key] for key in entries}


def _with_regions(entries: dict[str, NodeEntry]) -> dict[str, NodeEntry]:
    regions = assign_regions(entries)
    return {
        key: entry if entry.region == regions[key] else replace(entry, region=regions[key])
        for key, entry in entries.items()
    }


def retirement_order(entries: Mapping[str, NodeEntry], keys: set[str]) -> tuple[str, ...]:
    """``keys`` ordered so each comes after its inputs among them (ties by key): sources first."""
    pending = {key: {i for i in entries[key].upstreams if i in keys} for key in keys}
    order: list[str] = []
    while pending:
        ready = sorted(key for key, waiting in pending.items() if not waiting)
        if not ready:
            raise RegistryFileError(
                f"registry entries {sorted(pending)} read each other in a cycle; the registry "
                "is corrupt: stop the deployment and move its state directory away"
            )
        order.extend(ready)
        for key in ready:
            del pending[key]
        for waiting in pending.values():
            waiting.difference_update(ready)
    return tuple(order)
















