"""The one deployment sequence: create sinks first, wait until ready, wire, start sources.

Every way of running a graph goes through ``deploy``: the local runner (hosts in this
process), the Ray runner (one anonymous actor per node) and a deployment's controller (named,
detached actors, some already running for other graphs). Each supplies a ``NodeBackend``;
recovery re-creates nodes through the same sequence.

>>> import asyncio
>>> class Printing:
...     def create(self, key, host): print("create", key)
...     async def wait_ready(self, names): print("ready", sorted(names))
...     async def subscribe(self, edge, upstream, downstream, index, route=None):
...         print("wire", upstream, "->", downstream)
...     async def start_sources(self, keys): print("start", list(keys))
>>> from types import SimpleNamespace
>>> def host(name, source=None):  # what deploy reads of a HostSpec
...     return SimpleNamespace(node=SimpleNamespace(name=name), source=source)
>>> generations = [[("sink", host("sink"))], [("src", host("src", source=object()))]]
>>> progress = asyncio.run(deploy(Printing(), generations, [EdgeSpec("e", "src", "sink", 0)]))
create sink
create src
ready ['sink']
ready ['src']
wire src -> sink
start ['src']
>>> progress.created
['sink', 'src']
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from runtime.dataplane.exchange import KeyRoute
from runtime.planning.wiring import EdgeSpec, HostSpec
from streamdag.errors import StreamdagError

__all__ = ["ActorNotReadyError", "DeployProgress", "NodeBackend", "deploy"]


class ActorNotReadyError(StreamdagError):
    """A node did not become ready: its constructor failed or it timed out."""


class NodeBackend(Protocol):
    """Where nodes are created: in-process hosts, Ray actors, a deployment's named actors."""

    def create(self, key: str, host: HostSpec) -> None:
        """Start creating node ``key`` hosting ``host``'s node, without waiting for it."""

    async def wait_ready(self, names: Mapping[str, str]) -> None:
        """Wait until every node of ``names`` (key -> node name) is ready, or raise."""

    async def subscribe(self, edge: str, upstream: str, downstream: str, index: int,
                        route: KeyRoute | None = None) -> None:
        """Connect input ``index`` of ``downstream``, then let ``upstream`` send on ``edge``
        (only the records of ``route``'s keys, when set)."""

    async def start_sources(self, keys: Iterable[str]) -> None:
        """Let the source nodes of ``keys`` start reading."""


@dataclass
class DeployProgress:
    """What a sequence did so far, so a failure can be rolled back exactly."""

    #: Keys of the nodes created, in creation order (a rollback stops them in reverse).
    created: list[str] = field(default_factory=list)
    #: Edges from nodes that were already running to the new ones.
    attached: list[EdgeSpec] = field(default_factory=list)
    #: When each step ended (``time.time()``): every node asked for, each generation ready
    #: and wired (downstream first), the sources started.
    created_at: float = 0.0
    generations_ready_at: list[float] = field(default_factory=list)
    sources_started_at: float = 0.0


async def deploy(
    backend: NodeBackend,
    generations: Sequence[Sequence[tuple[str, HostSpec]]],
    edges: Sequence[EdgeSpec],
    progress: DeployProgress | None = None,
) -> DeployProgress:
    """Create, wire and start the nodes of ``generations`` (sinks first) through ``backend``.

    ``generations`` holds only the nodes to create, as ``(key, host)``; ``edges`` may name
    nodes that already run (a shared producer), which are attached, never created. Pass a
    ``progress`` to keep what was done even when a step raises.

    Steps:
    1. Every node is created, downstream first, all at once (actors start in parallel; a
       failing call leaks nothing: what was created is recorded first). Nothing can send yet:
       no node has a subscriber.
    2. One generation at a time, downstream first: wait until all its nodes are ready (restored,
       connectors open), then wire them to their consumers, all ready before them.
    3. Producers that were already running feed their new consumers from their next batch on.
    4. Sources start reading last, once everything below them is ready.
    """
    progress = progress if progress is not None else DeployProgress()
    new = {key for generation in generations for key, _ in generation}
    edges_from: dict[str, list[EdgeSpec]] = {}
    for edge in edges:
        edges_from.setdefault(edge.upstream, []).append(edge)
    # Step 1: create everything.
    for generation in generations:
        for key, host in generation:
            backend.create(key, host)
            progress.created.append(key)
    progress.created_at = time.time()
    for generation in generations:
        # Step 2: ready, downstream first, then wired.
        await backend.wait_ready({key: host.node.name for key, host in generation})
        for key, _ in generation:
            for edge in edges_from.get(key, ()):
                if edge.downstream in new:
                    await backend.subscribe(edge.edge, key, edge.downstream, edge.input_index,
                                            edge.route)
        progress.generations_ready_at.append(time.time())
    # Step 3: running producers attach to their new consumers.
    for edge in edges:
        if edge.upstream not in new and edge.downstream in new:
            await backend.subscribe(edge.edge, edge.upstream, edge.downstream, edge.input_index,
                                    edge.route)
            progress.attached.append(edge)
    # Step 4: sources last.
    await backend.start_sources(
        key for generation in generations for key, host in generation if host.source is not None)
    progress.sources_started_at = time.time()
    return progress
