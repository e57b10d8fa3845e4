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
    #: Whether the actor answered (False: busy past ``call_timeout_s``, or unknown).
    answered: bool = False
    #: When it answered: the edges it still sends on.
    sending_on: frozenset[str] = frozenset()


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
        #: Keys whose actor was killed for not answering, with why: each counts as dead.
        self.unresponsive: dict[str, str] = {}
        #: Health probes in a row each key's actor did not answer in time.
        self.probes_missed: dict[str, int] = {}
        #: Probes in a row an actor may miss before it is killed as unresponsive (0: never).
        self.unresponsive_after = 0

    def create(self, key: str, host: HostSpec) -> Any:
        """Bind ``key`` to an idle pool actor if there is one (not an inference node, which
        needs its own actor class), else create its own named actor; returns its handle."""
        self.unresponsive.pop(key, None)  # a new actor: nothing it missed yet
        self.probes_missed.pop(key, None)
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
        query = self.handles[downstream]
        incarnation = await self.answer(query.follow.remote(edge, origin),
                                        f"the tag query of edge {edge} (follow)")
        target = await self.target_of(query, edge)
        await self.answer(self.handles[upstream].subscribe.remote(edge, target, incarnation),
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

        A consumer stopped before its producer took the call would fail the producer's next
        push, and a shared producer would hold; so the future ends only once the producer
        took it, is gone, or was found unresponsive and killed (``_unsubscribe``), each
        within ``2 * call_timeout_s`` and the kill's wait.
        """
        return asyncio.ensure_future(self._unsubscribe(upstream, edge))

    async def _unsubscribe(self, upstream: str, edge: str) -> None:
        """Steps:
        1. The producer is asked to unsubscribe; it answers once its consumer acknowledged
           what was sent, which a slow consumer may delay past ``call_timeout_s``.
        2. While it has not answered, a probe each ``call_timeout_s`` tells taking from busy:
           a producer that answers and no longer sends on ``edge`` has started the
           unsubscribe, whose first step stops the sending (a drain that fails once its
           consumer stops only drops that consumer, ``NodeHost.unsubscribe``), so the
           consumer may stop. One that answers and still sends on it has not started the
           call yet (Ray does not promise an async actor starts one caller's calls in the
           order sent): it is waited for.
        3. A producer that answers none is busy (a long batch, a compile) and is waited for,
           until it has missed ``unresponsive_after`` probes in a row, counted with the
           health check's (``probe``): then it is killed, and counts as dead with that cause,
           so its region recovers or its graphs fail instead of the caller waiting.
        """
        handle = self.handles.get(upstream)
        if handle is None:
            return
        # Step 1: the call.
        call = asyncio.ensure_future(awaited(handle.unsubscribe.remote(edge)))
        call.add_done_callback(lambda done: done.cancelled() or done.exception())
        done, _ = await asyncio.wait([call], timeout=self.call_timeout_s)
        while not done:
            # Step 2: taking, or busy?
            probe = await self.probe(upstream, counts_misses=True)
            if call.done() or not probe.alive:
                return  # taken, or the producer is gone (killed as unresponsive: step 3)
            if probe.answered and edge not in probe.sending_on:
                _log.warning("node actor %s has not finished the unsubscribe of edge %s "
                             "within %.0f s (its consumer is slow to acknowledge); it sends no "
                             "more on it, so the consumer may stop", upstream[:24], edge,
                             self.call_timeout_s)
                return
            # Step 3: busy, or the call not started yet; wait on.
            done, _ = await asyncio.wait([call], timeout=self.call_timeout_s)

    async def within_call_timeout(self, ref: Any) -> Any:
        """The result of actor call ``ref``; TimeoutError after ``call_timeout_s``."""
        return await asyncio.wait_for(awaited(ref), self.call_timeout_s)

    async def kill_unresponsive(self, key: str, handle: Any, cause: str) -> None:
        """Kill ``handle``, the actor of ``key`` that does not answer, and wait (up to
        ``call_timeout_s``) until Ray knows it is dead; while it is still ``key``'s actor,
        ``key`` counts as dead with ``cause`` at the next probe."""
        import ray
        from ray.exceptions import RayActorError

        if self.handles.get(key) is handle:  # not replaced meanwhile (a recovery's new actor)
            self.unresponsive[key] = cause
        _log.warning("node actor %s: %s", key[:24], cause)
        with contextlib.suppress(Exception):
            ray.kill(handle)
        deadline = time.monotonic() + self.call_timeout_s
        while time.monotonic() < deadline:  # dead in Ray: its name is free for a new actor
            try:
                await asyncio.wait_for(awaited(handle.report.remote()), self.call_timeout_s)
            except RayActorError:
                return
            except Exception:  # unreachable for now: not yet known to be dead
                pass
            await asyncio.sleep(0.01)

    async def stop(self, key: str, name: str) -> None:
        """Stop and kill the actor of ``key`` (if it has a handle) and forget it."""
        handle = self.handles.get(key)
        self.forget(key)
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

    async def probe(self, key: str, *, counts_misses: bool = False) -> NodeProbe:
        """One call to the actor of ``key``: its figures, and whether it finished or failed.

        An actor killed as unresponsive is dead, with why. One not answering within
        ``call_timeout_s`` is busy, not dead, until it missed ``unresponsive_after`` probes
        in a row that ``counts_misses`` (the health check's rounds, not a metrics scrape
        asking at the same time): then it is killed as unresponsive.
        """
        from ray.exceptions import ActorUnavailableError, RayActorError

        from runtime.deployment.lifecycle import failure_cause

        handle = self.handles.get(key)
        if key in self.unresponsive:
            return NodeProbe(alive=False, error=self.unresponsive[key])
        if handle is None:
            return NodeProbe(alive=False, error="the controller holds no handle to its actor")
        try:
            report = await asyncio.wait_for(awaited(handle.report.remote()), self.call_timeout_s)
        except ActorUnavailableError:
            return NodeProbe(alive=True)  # restarting or unreachable for now: not (yet) dead
        except RayActorError as exc:  # killed as unresponsive while this probe waited: why
            return NodeProbe(alive=False, error=self.unresponsive.get(key, failure_cause(exc)))
        except TimeoutError:
            if not counts_misses:
                return NodeProbe(alive=True)
            missed = self.probes_missed[key] = self.probes_missed.get(key, 0) + 1
            if 0 < self.unresponsive_after <= missed:
                await self.kill_unresponsive(
                    key, handle, f"its actor did not answer {missed} probes in a row within "
                    f"{self.call_timeout_s:g} s each; it was killed as unresponsive")
                return NodeProbe(alive=False, error=self.unresponsive.get(key))
            return NodeProbe(alive=True)  # busy, not dead: the next round asks again
        self.probes_missed.pop(key, None)
        error = None if report.error is None else failure_cause(report.error)
        return NodeProbe(alive=True, finished=report.finished, error=error, stats=report.stats,
                         answered=True, sending_on=report.sending_on)

    def forget(self, key: str) -> None:
        """``key``'s actor is gone (stopped, or declared dead): drop its handle and what its
        probes counted."""
        self.handles.pop(key, None)
        self.unresponsive.pop(key, None)
        self.probes_missed.pop(key, None)


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
