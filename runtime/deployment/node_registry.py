"""The node registry of a deployment: which actor runs each node, who uses it, and its region.

The registry is immutable data and pure functions, so the reference counting and garbage
collection the controller relies on can be checked against a model without Ray: ``acquire``
adds a graph's references, ``release`` drops them and names the nodes no graph uses any more,
in the order they are retired (sources first). It is persisted as JSON, written atomically
(temp file, fsync, rename), and reloaded by a controller that restarts, which finds the
surviving actors by name (``locate_node_actors``). ``NodeActors`` holds the live handles and
is the thin executor through which the controller creates, wires, probes and stops them.

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

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import networkx as nx

from runtime.dataplane.messages import edge_id
from streamdag.errors import StreamdagError

if TYPE_CHECKING:
    from runtime.dataplane.host import RuntimeSettings
    from runtime.dataplane.stats import NodeStats
    from runtime.planning.wiring import HostSpec
    from streamdag.graph import Node

__all__ = [
    "NODE_NAMESPACE",
    "REGISTRY_FORMAT",
    "ActorNotReadyError",
    "NodeActors",
    "NodeEntry",
    "NodeProbe",
    "NodeRegistry",
    "NodeRequest",
    "RegistryFileError",
    "acquire",
    "assign_regions",
    "instance_key",
    "load_registry",
    "locate_node_actors",
    "mark_alive",
    "mark_dead",
    "node_actor_name",
    "node_requests",
    "read_json",
    "release",
    "retirement_order",
    "save_registry",
    "write_json_atomically",
]

#: Ray namespace of every named actor a deployment owns (controller and nodes).
NODE_NAMESPACE = "streamdag"
#: Version of the registry's JSON document; a different one is refused when loading.
REGISTRY_FORMAT = 1

_log = logging.getLogger("streamdag.controller")


class RegistryFileError(StreamdagError):
    """A persisted registry or submissions file cannot be read back."""


class ActorNotReadyError(StreamdagError):
    """A new node actor failed, or took too long, to report ready."""


def node_actor_name(deployment: str, key: str) -> str:
    """The deterministic Ray actor name of the node registered under ``key``.

    >>> node_actor_name("live", "0123456789abcdef" * 4)
    'streamdag-live-node-0123456789abcdef01234567'
    """
    return f"streamdag-{deployment}-node-{key[:24]}"


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
    #: Keys of the node's inputs, in input order.
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class NodeEntry:
    """One running node: its actor, the graphs using it, its region, and whether it is alive."""

    key: str
    node_id: str
    actor_name: str
    name: str
    operator: str
    role: str
    inputs: tuple[str, ...]
    graphs: frozenset[str]
    region: str = ""
    alive: bool = True

    @property
    def refcount(self) -> int:
        """How many graphs use this node."""
        return len(self.graphs)

    def input_edges(self) -> list[tuple[str, str, int]]:
        """``(edge, upstream key, input index)`` of every edge into this node."""
        return [
            (edge_id(upstream, self.key, index), upstream, index)
            for index, upstream in enumerate(self.inputs)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-ready data."""
        return {
            "key": self.key,
            "node_id": self.node_id,
            "actor_name": self.actor_name,
            "name": self.name,
            "operator": self.operator,
            "role": self.role,
            "inputs": list(self.inputs),
            "graphs": sorted(self.graphs),
            "region": self.region,
            "alive": self.alive,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeEntry:
        """The entry ``to_dict`` wrote."""
        return cls(
            key=str(data["key"]),
            node_id=str(data["node_id"]),
            actor_name=str(data["actor_name"]),
            name=str(data["name"]),
            operator=str(data["operator"]),
            role=str(data["role"]),
            inputs=tuple(str(i) for i in data["inputs"]),
            graphs=frozenset(str(g) for g in data["graphs"]),
            region=str(data.get("region", "")),
            alive=bool(data.get("alive", True)),
        )


@dataclass(frozen=True)
class NodeRegistry:
    """Every node of a deployment by key: an immutable value; the functions below make new ones."""

    entries: Mapping[str, NodeEntry] = field(default_factory=lambda: MappingProxyType({}))

    def live_keys(self) -> frozenset[str]:
        """Keys of nodes whose actor is alive (the ones a new graph may reuse)."""
        return frozenset(key for key, entry in self.entries.items() if entry.alive)

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

    def describe(self) -> list[dict[str, Any]]:
        """Every node for people and the API: actor, refcount, graphs, region, liveness."""
        return [
            {"node_id": e.node_id, "name": e.name, "operator": e.operator, "role": e.role,
             "actor": e.actor_name, "refcount": e.refcount, "graphs": sorted(e.graphs),
             "region": e.region, "alive": e.alive}
            for e in sorted(self.entries.values(), key=lambda e: (e.region, e.name, e.key))
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
            entries[request.key] = NodeEntry(
                key=request.key,
                node_id=request.node_id,
                actor_name=request.actor_name,
                name=request.name,
                operator=request.operator,
                role=request.role,
                inputs=request.inputs,
                graphs=frozenset({graph_id}),
            )
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


def mark_dead(registry: NodeRegistry, keys: Iterable[str]) -> NodeRegistry:
    """The registry with the actors of ``keys`` recorded as dead."""
    return _with_liveness(registry, keys, alive=False)


def mark_alive(registry: NodeRegistry, keys: Iterable[str]) -> NodeRegistry:
    """The registry with the actors of ``keys`` recorded as alive."""
    return _with_liveness(registry, keys, alive=True)


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
    union = nx.Graph()
    union.add_nodes_from(entries)
    union.add_edges_from((key, upstream) for key, entry in entries.items()
                         for upstream in entry.inputs if upstream in entries)
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
    pending = {key: {i for i in entries[key].inputs if i in keys} for key in keys}
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


def locate_node_actors(
    registry: NodeRegistry, deployment: str
) -> tuple[dict[str, Any], list[str], dict[str, Any]]:
    """Find node actors in Ray by name: ``(handles by key, keys not found, leftovers)``.

    Leftovers are named node actors of ``deployment`` that no entry claims (an interrupted
    submission's), by name. Only live entries are looked up; dead ones stay dead.
    """
    import ray

    found: dict[str, Any] = {}
    missing: list[str] = []
    for key, entry in registry.entries.items():
        if entry.alive:
            try:
                found[key] = ray.get_actor(entry.actor_name, namespace=NODE_NAMESPACE)
            except ValueError:
                missing.append(key)
    claimed = {entry.actor_name for entry in registry.entries.values()}
    pattern = re.compile(re.escape(node_actor_name(deployment, "")) + "[0-9a-f]{24}")
    leftovers = {
        actor["name"]: ray.get_actor(actor["name"], namespace=NODE_NAMESPACE)
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["namespace"] == NODE_NAMESPACE and pattern.fullmatch(actor["name"])
        and actor["name"] not in claimed
    }
    return found, missing, leftovers


def write_json_atomically(path: str | os.PathLike[str], document: Any) -> None:
    """Write ``document`` as JSON to ``path`` so a reader sees the old file or the new one.

    Steps: write a temp file in the same folder, fsync it, rename it over ``path``, fsync the
    folder (so the rename itself survives a power cut).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Step 1: the new content goes to a temp file beside the target.
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp:
            json.dump(document, temp, indent=1, sort_keys=True)
            temp.flush()
            # Step 2: the bytes are on disk before the name points at them.
            os.fsync(temp.fileno())
        # Step 3: the atomic switch.
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # Step 4: persist the directory entry.
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON document at ``path``, or None when there is no file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryFileError(
            f"{path} is not valid JSON ({exc}); it was not written by streamdag's atomic "
            "writer: restore it from a backup or move it away"
        ) from None


def save_registry(path: str | os.PathLike[str], registry: NodeRegistry, deployment: str) -> None:
    """Persist ``registry`` of ``deployment`` at ``path`` atomically."""
    write_json_atomically(path, registry.to_document(deployment))


def load_registry(path: str | os.PathLike[str]) -> NodeRegistry:
    """The registry persisted at ``path`` (empty when there is none)."""
    document = read_json(path)
    return NodeRegistry() if document is None else NodeRegistry.from_document(document)


@dataclass(frozen=True)
class NodeProbe:
    """What one probe learnt about a node actor."""

    alive: bool
    finished: bool = False
    error: str | None = None
    stats: NodeStats | None = None


class NodeActors:
    """The live handles of a deployment's node actors, by registry key.

    Node actors are detached and named after their key (``node_actor_name``), and created
    with ``get_if_exists``: a second creation of one key returns the running actor.
    """

    def __init__(self, deployment: str, *, call_timeout_s: float = 10.0) -> None:
        self.deployment = deployment
        self.call_timeout_s = call_timeout_s
        self.handles: dict[str, Any] = {}

    def create(self, key: str, host: HostSpec, settings: RuntimeSettings) -> Any:
        """Create (or get) the actor of ``key`` hosting ``host``'s node; returns its handle."""
        from runtime.runners.ray_runner import node_actor_class

        handle = node_actor_class().options(
            name=node_actor_name(self.deployment, key), namespace=NODE_NAMESPACE,
            lifetime="detached", get_if_exists=True, num_cpus=0, max_restarts=0,
        ).remote(host.node.config(), settings=settings, source=host.source, sink=host.sink,
                 capture=host.capture)
        self.handles[key] = handle
        return handle

    async def wait_ready(self, names: Mapping[str, str], timeout_s: float) -> None:
        """Wait until every actor of ``names`` (key -> node name) is ready, or raise."""
        from runtime.deployment.lifecycle import failure_cause

        tasks = {key: asyncio.ensure_future(_awaited(self.handles[key].ready.remote()))
                 for key in names}
        done, pending = await asyncio.wait(tasks.values(), timeout=timeout_s,
                                           return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        for key, task in tasks.items():
            error = task.exception() if task in done else None
            if error is not None:
                raise ActorNotReadyError(
                    f"node {names[key]!r} failed to become ready: {failure_cause(error)}")
        late = [names[key] for key, task in tasks.items() if task in pending]
        if late:
            raise ActorNotReadyError(
                f"node(s) {late} did not report ready within {timeout_s} s; check their "
                "actors' logs, or raise ControllerOptions.ready_timeout_s")

    async def subscribe(self, edge: str, upstream: str, downstream: str, index: int) -> None:
        """Let ``upstream`` send to input ``index`` of ``downstream`` over ``edge``."""
        from runtime.dataplane.channels import RayTarget

        consumer = self.handles[downstream]
        await consumer.connect_input.remote(edge, index)
        await self.handles[upstream].subscribe.remote(edge, RayTarget(consumer))

    async def unsubscribe(self, upstream: str, edge: str) -> None:
        """Stop ``upstream`` sending on ``edge``; an upstream that is gone sends nothing."""
        handle = self.handles.get(upstream)
        with contextlib.suppress(Exception):  # its consumer may be dead: nothing to drain
            if handle is not None:
                await asyncio.wait_for(_awaited(handle.unsubscribe.remote(edge)),
                                       self.call_timeout_s)

    async def start_sources(self, keys: Iterable[str]) -> None:
        """Let the source actors of ``keys`` start reading."""
        await asyncio.gather(*(_awaited(self.handles[k].start_source.remote()) for k in keys))

    async def stop(self, key: str, name: str) -> None:
        """Stop and kill the actor of ``key`` (if it has a handle) and forget it."""
        handle = self.handles.pop(key, None)
        if handle is not None:
            await self.stop_actor(handle, name)

    async def stop_actor(self, handle: Any, name: str) -> None:
        """Stop and kill one actor, then wait until its name is free for a new one."""
        import ray

        with contextlib.suppress(Exception):  # a dead actor is already stopped
            await asyncio.wait_for(_awaited(handle.stop.remote()), self.call_timeout_s)
        with contextlib.suppress(Exception):
            ray.kill(handle)
        deadline = time.monotonic() + self.call_timeout_s
        while time.monotonic() < deadline:
            try:
                ray.get_actor(name, namespace=NODE_NAMESPACE)
            except ValueError:
                return
            await asyncio.sleep(0.01)
        _log.warning("actor %s still holds its name %.0f s after being killed; a new actor of "
                     "that name will fail until Ray releases it", name, self.call_timeout_s)

    async def probe(self, key: str) -> NodeProbe:
        """Ask the actor of ``key`` for its figures and whether it finished (or failed)."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        from runtime.deployment.lifecycle import failure_cause

        handle = self.handles.get(key)
        if handle is None:
            return NodeProbe(alive=False, error="the controller holds no handle to its actor")
        try:
            stats, finished = await asyncio.wait_for(
                asyncio.gather(_awaited(handle.stats.remote()),
                               _awaited(handle.is_finished.remote())), self.call_timeout_s)
        except ActorUnavailableError:
            return NodeProbe(alive=True)  # restarting or unreachable for now: not (yet) dead
        except RayActorError as exc:
            return NodeProbe(alive=False, error=failure_cause(exc))
        except TimeoutError:
            return NodeProbe(alive=True)  # busy, not dead: the next round asks again
        error = None
        if finished:
            try:
                await asyncio.wait_for(_awaited(handle.wait_finished.remote()),
                                       self.call_timeout_s)
            except Exception as exc:
                error = failure_cause(exc)
        return NodeProbe(alive=True, finished=bool(finished), error=error, stats=stats)


async def _awaited(ref: Any) -> Any:
    """Await a Ray ObjectRef as a coroutine (so asyncio can wrap it in a task)."""
    return await ref
