"""A deployment's node actors: named, detached Ray actors the controller finds again.

``NodeActors`` is the deployment sequence's backend for a deployment and the thin executor
through which the controller also unsubscribes, probes and stops them; a controller that
restarts finds the surviving actors by name (``locate_node_actors``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runtime.dataplane.exchange import KeyRoute
from runtime.deployment.node_registry import NODE_NAMESPACE, NodeRegistry, node_actor_name
from runtime.deployment.warm_pool import WarmPool, pool_actor_pattern
from runtime.inference.host import INFERENCE_OPERATOR
from runtime.runners.ray_nodes import RayNodes, awaited

if TYPE_CHECKING:
    from collections.abc import Callable

    from runtime.dataplane.checkpointing import CheckpointTarget
    from runtime.dataplane.host import RuntimeSettings
    from runtime.dataplane.stats import NodeStats
    from runtime.planning.wiring import HostSpec

__all__ = ["LocatedActors", "NodeActors", "NodeProbe", "kill_named_actor", "locate_node_actors"]

_log = logging.getLogger("streamdag.controller")


@dataclass(frozen=True)
class LocatedActors:
    """What a restarted controller found of its deployment's actors in Ray."""

    #: The live entries' actors, by key.
    found: dict[str, Any]
    #: Keys of live entries whose actor is gone.
    missing: list[str]
    #: Named node actors no entry claims (an interrupted submission's), by name.
    leftovers: dict[str, Any]
    #: Pool actors no entry claims (idle, or bound by an interrupted submission), by name.
    pooled: dict[str, Any]


def locate_node_actors(registry: NodeRegistry, deployment: str) -> LocatedActors:
    """Find a deployment's actors in Ray by name.

    A live entry's actor is the one its ``actor_name`` names (a pool actor's name once it was
    bound to the node), or else the node's own name (a recovery's new actor, when the
    controller stopped before it recorded the name). Only live entries are looked up; dead
    ones stay dead.
    """
    import ray

    found: dict[str, Any] = {}
    missing: list[str] = []
    claimed: set[str] = set()
    for key, entry in registry.entries.items():
        own = node_actor_name(deployment, key)
        claimed |= {entry.actor_name, own}
        if not entry.alive:
            continue
        for name in dict.fromkeys((entry.actor_name, own)):
            with contextlib.suppress(ValueError):
                found[key] = ray.get_actor(name, namespace=NODE_NAMESPACE)
                break
        else:
            missing.append(key)
    nodes = re.compile(re.escape(node_actor_name(deployment, "")) +
                       "[0-9a-f]{24}(-[0-9]+of[0-9]+)?")
    pool = pool_actor_pattern(deployment)
    named = [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
             if actor["namespace"] == NODE_NAMESPACE and actor["name"] not in claimed]
    return LocatedActors(
        found, missing,
        {name: ray.get_actor(name, namespace=NODE_NAMESPACE)
         for name in named if nodes.fullmatch(name)},
        {name: ray.get_actor(name, namespace=NODE_NAMESPACE)
         for name in named if pool.fullmatch(name)})


@dataclass(frozen=True)
class NodeProbe:
    """What one probe learnt about a node actor."""

    alive: bool
    finished: bool = False
    error: str | None = None
    stats: NodeStats | None = None


class NodeActors(RayNodes):
    """The live handles of a deployment's node actors, by registry key.

    Node actors are detached and named after their key (``node_actor_name``), and created
    with ``get_if_exists``: a second creation of one key returns the running actor. They are
    created, made ready, wired and started by the deployment sequence like any runner's.
    With a ``pool``, a new node is bound to an idle warmed pool actor instead, which keeps
    its pool name: ``on_named`` hears every key's actor name, so the registry records it.
    """

    def __init__(
        self,
        deployment: str,
        settings: RuntimeSettings,
        *,
        call_timeout_s: float = 10.0,
        ready_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(settings, ready_timeout_s=ready_timeout_s)
        self.deployment = deployment
        self.call_timeout_s = call_timeout_s
        #: With checkpoints: where each node's actor puts its snapshots, by key.
        self.targets: dict[str, CheckpointTarget] = {}
        #: Edges into tag queries, with the name of the node each comes from: wiring one
        #: (a recovery re-wires every edge of its region) makes the query follow it.
        self.origins: dict[str, str] = {}
        #: The key route of every exchange edge into a shard (``NodeRegistry.routes``): a
        #: recovery re-wires its region's edges from the registry, which names no routes.
        self.routes: dict[str, KeyRoute] = {}
        #: Idle warmed actors new nodes are bound to (None: every node starts its own).
        self.pool: WarmPool | None = None
        #: Told ``(key, actor name)`` whenever a key gets a new actor.
        self.on_named: Callable[[str, str], None] | None = None

    def create(self, key: str, host: HostSpec) -> Any:
        """Bind ``key`` to an idle pool actor if there is one (not an inference node, which
        needs its own actor class), else create its own named actor; returns its handle."""
        pooled = (self.pool.take() if self.pool is not None and self.shard_options is None
                  and host.node.operator != INFERENCE_OPERATOR else None)
        if pooled is None:
            self._named(key, node_actor_name(self.deployment, key))
            return super().create(key, host)
        name, handle = pooled
        self._named(key, name)
        self.handles[key] = handle
        self._getting_ready[key] = asyncio.ensure_future(self._bind(key, host, name, handle))
        if host.source is not None:
            self.sources.append(key)
        return handle

    async def _bind(self, key: str, host: HostSpec, name: str, handle: Any) -> str:
        """Make pool actor ``handle`` the host of ``key`` and wait until it is ready; one that
        died in the pool is replaced by a new actor of the node's own."""
        from ray.exceptions import ActorDiedError

        try:
            node_id: str = await handle.bind.remote(self.host_arguments(key, host))
        except ActorDiedError as died:
            _log.warning("pool actor %s died before it could host node %r (%s); starting an "
                         "actor of its own", name, host.node.name, died)
            self._named(key, node_actor_name(self.deployment, key))
            handle = self.handles[key] = self.new_actor(key, host)
            node_id = await handle.ready.remote()
        return node_id

    def _named(self, key: str, name: str) -> None:
        if self.on_named is not None:
            self.on_named(key, name)

    async def subscribe(self, edge: str, upstream: str, downstream: str, index: int,
                        route: KeyRoute | None = None) -> None:
        """Let ``upstream`` send to input ``index`` of ``downstream`` over ``edge``: only the
        records of ``route``'s keys (or, when None, of the edge's route in ``routes``), or, into
        a tag query, every record labelled with its origin."""
        origin = self.origins.get(edge)
        if origin is None:
            await super().subscribe(edge, upstream, downstream, index,
                                    route if route is not None else self.routes.get(edge))
            return
        from runtime.dataplane.channels import RayTarget

        query = self.handles[downstream]
        incarnation = await self.answer(query.follow.remote(edge, origin),
                                        f"the tag query of edge {edge} (follow)")
        await self.answer(self.handles[upstream].subscribe.remote(edge, RayTarget(query),
                                                                  incarnation),
                          f"the producer of edge {edge} (subscribe)")

    def checkpoints_for(self, key: str) -> CheckpointTarget | None:
        """The target of ``key``'s region (None: the deployment does not checkpoint)."""
        return self.targets.get(key)

    def options_for(self, key: str) -> dict[str, Any]:
        """A named, detached actor that Ray never restarts behind the controller's back."""
        return {**self.actor_options, "name": node_actor_name(self.deployment, key),
                "namespace": NODE_NAMESPACE, "lifetime": "detached", "get_if_exists": True,
                "max_restarts": 0}

    def unsubscribe(self, upstream: str, edge: str) -> asyncio.Future[None]:
        """Stop ``upstream`` sending on ``edge``: the future ends once it sends no more.

        It is never given up on: a consumer stopped before its producer took the call would
        fail the producer's next push, and a shared producer would hold. A producer that is
        gone sends nothing, so its future ends at once.
        """
        return asyncio.ensure_future(self._unsubscribe(upstream, edge))

    async def _unsubscribe(self, upstream: str, edge: str) -> None:
        handle = self.handles.get(upstream)
        if handle is None:
            return
        call = asyncio.ensure_future(awaited(handle.unsubscribe.remote(edge)))
        done, _ = await asyncio.wait([call], timeout=self.call_timeout_s)
        if not done:
            _log.warning("node actor %s has not taken the unsubscribe of edge %s within %.0f s; "
                         "its consumer stays up until it has", upstream[:24], edge,
                         self.call_timeout_s)
        with contextlib.suppress(Exception):  # a dead producer sends nothing
            await call

    async def stop(self, key: str, name: str) -> None:
        """Stop and kill the actor of ``key`` (if it has a handle) and forget it."""
        handle = self.handles.pop(key, None)
        if handle is not None:
            await self.stop_actor(handle, name)

    async def stop_actor(self, handle: Any, name: str) -> None:
        """Stop and kill one actor, then wait until its name is free for a new one."""
        with contextlib.suppress(Exception):  # a dead actor is already stopped
            await asyncio.wait_for(awaited(handle.stop.remote()), self.call_timeout_s)
        await self.kill_actor(handle, name)

    async def kill_actor(self, handle: Any, name: str) -> None:
        """Kill one actor at once (no stop, no drain), then wait until its name is free."""
        await kill_named_actor(handle, name, self.call_timeout_s)

    async def probe(self, key: str) -> NodeProbe:
        """One call to the actor of ``key``: its figures, and whether it finished or failed."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        from runtime.deployment.lifecycle import failure_cause

        handle = self.handles.get(key)
        if handle is None:
            return NodeProbe(alive=False, error="the controller holds no handle to its actor")
        try:
            report = await asyncio.wait_for(awaited(handle.report.remote()), self.call_timeout_s)
        except ActorUnavailableError:
            return NodeProbe(alive=True)  # restarting or unreachable for now: not (yet) dead
        except RayActorError as exc:
            return NodeProbe(alive=False, error=failure_cause(exc))
        except TimeoutError:
            return NodeProbe(alive=True)  # busy, not dead: the next round asks again
        error = None if report.error is None else failure_cause(report.error)
        return NodeProbe(alive=True, finished=report.finished, error=error, stats=report.stats)


async def kill_named_actor(handle: Any, name: str, timeout_s: float) -> None:
    """Kill one named node actor at once, then wait (up to ``timeout_s``) until Ray has
    released its name, so that a new actor may take it."""
    import ray

    with contextlib.suppress(Exception):
        ray.kill(handle)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(name, namespace=NODE_NAMESPACE)
        except ValueError:
            return
        await asyncio.sleep(0.01)
    _log.warning("actor %s still holds its name %.0f s after being killed; a new actor of "
                 "that name will fail until Ray releases it", name, timeout_s)
