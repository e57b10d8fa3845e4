"""A deployment's checkpoints and recovery, region by region (DESIGN.md §7 in a deployment).

Graphs that share a node form one region (``node_registry.assign_regions``); each region has
its own coordinator, so a failing region never stalls another's checkpoints, and a crash
restores only the region it hit while every other region reads on. The controller calls
``reconcile`` whenever regions change (a submission, a removal) and ``recover`` when an actor
of a region died or a node of it failed.

Regions merge when a graph attaches to a shared node and split when one is removed, so a
region's name can change: checkpoint ids come from one increasing sequence for the whole
deployment (a node's ids only grow whatever region it is in), a node is told its new region
before the next barrier, and a restore takes each node's snapshot from the newest complete
checkpoint that holds it (of whatever region name), never from one older than the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runtime.checkpoints.coordinator import CheckpointCoordinator, CheckpointFigures
from runtime.checkpoints.retention import Retention, carry_out, plan_sweep
from runtime.checkpoints.store import (
    CheckpointStore,
    CorruptCheckpointError,
    Manifest,
    shared_store,
)
from runtime.dataplane.checkpointing import CheckpointTarget, NodeSnapshot
from runtime.dataplane.stats import LatencyHistogram
from runtime.deployment.lifecycle import cloud_event_of, failure_cause, log_event
from runtime.deployment.metrics import RegionMetrics
from runtime.deployment.node_actors import NodeActors
from runtime.deployment.node_registry import NodeRegistry
from runtime.planning.wiring import EdgeSpec, HostSpec
from runtime.runners.deploy_sequence import deploy
from runtime.runners.ray_nodes import awaited
from runtime.runners.recovery import GraphFailedError, RestartPolicy
from streamdag.cancellation import cancel_and_wait
from streamdag.config import CheckpointSettings, Settings
from streamdag.errors import StreamdagError
from streamdag.graph import Graph

__all__ = ["RegionCheckpoints", "RegionFigures", "choose_snapshots", "region_checkpoints",
           "sinks_first"]

_log = logging.getLogger("streamdag.recovery")
#: What a sweep deletes: a child of the controller's logger, so it is in the deployment's log.
_deletions = logging.getLogger("streamdag.controller.checkpoints")


#: Publishes one CloudEvent keyed by region (the controller's lifecycle emitter).
EmitEvent = Callable[[str, dict[str, Any]], Awaitable[None]]
#: The deployment's registry now, and the ``(store region, checkpoint id)`` its stop points
#: resume from: read together, with nothing between that lets the controller move on.
DeploymentNeeds = Callable[[], tuple[NodeRegistry, Iterable[tuple[str, int]]]]


def region_checkpoints(deployment: str, settings: Settings, actors: NodeActors,
                       emit: EmitEvent | None = None) -> RegionCheckpoints:
    """The regions' checkpoints of ``deployment``, in ``settings.checkpoint``'s store."""
    store = shared_store(settings.checkpoint.store_url(settings.state_dir),
                         settings.checkpoint.keep, "a deployment's")
    return RegionCheckpoints(deployment, settings.checkpoint, store, actors, emit)


@dataclass
class RegionFigures:
    """What the regions' checkpoints and recoveries did: for metrics and the API."""

    #: Per region name: its coordinators' figures (carried over while the name lasts).
    checkpoints: dict[str, CheckpointFigures] = field(default_factory=dict)
    #: Per region name: how many times it was restored.
    recoveries: dict[str, int] = field(default_factory=dict)
    #: Seconds from the start of a recovery (after its backoff) to every actor ready again.
    restore_duration: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass
class _Running:
    members: frozenset[str]
    coordinator: CheckpointCoordinator
    task: asyncio.Task[None]


class RegionCheckpoints:
    """The checkpoint coordinators of a deployment's regions, and their recoveries."""

    def __init__(self, deployment: str, settings: CheckpointSettings, store: CheckpointStore,
                 actors: NodeActors, emit: EmitEvent | None = None) -> None:
        self.deployment = deployment
        self._emit = emit
        self.settings = settings
        self.store = store
        self.actors = actors
        #: Store regions of this deployment are named ``<deployment>.<region>``: deployments
        #: may share a store, and the same graph has the same node keys in each of them.
        self.prefix = f"{deployment}."
        #: How to re-create every node, by key (kept from the submissions that created them).
        self.hosts: dict[str, HostSpec] = {}
        #: Whether each node's output is exactly-once, by key.
        self.exactly_once: dict[str, bool] = {}
        self.figures = RegionFigures()
        self._running: dict[str, _Running] = {}
        self._policies: dict[str, RestartPolicy] = {}
        self._next_id = 0
        self._incarnation = 0
        #: Until ``sweep_with`` tells what the deployment needs, no folder is deleted.
        self._needs: DeploymentNeeds | None = None
        self._sweeping = asyncio.Lock()
        self._sweeps: set[asyncio.Task[None]] = set()
        #: Whether a region folder is kept only until newer checkpoints replace it (a merged
        #: region's): completed checkpoints sweep again while so.
        self._unsettled = True

    def next_checkpoint_id(self) -> int:
        """The next id of the deployment's one increasing sequence (above all stored ones)."""
        if self._next_id == 0:
            # Abandoned ones count too: their barriers may have passed the running nodes.
            stored = [self.store.highest_id(region) for region in self.store.regions()
                      if region.startswith(self.prefix)]
            # Deleted regions' ids count too (``retention``): an id is never used twice.
            stored.append(self.store.retired_highest_id(self.deployment))
            self._next_id = max(stored) + 1
        checkpoint_id, self._next_id = self._next_id, self._next_id + 1
        return checkpoint_id

    def target(self, key: str, region: str) -> CheckpointTarget:
        """Where node ``key`` of (registry) ``region`` puts its snapshots."""
        return CheckpointTarget(self.store, self.prefix + region,
                                self.exactly_once.get(key, True))

    def add_nodes(self, registry: NodeRegistry, graph: Graph, keys: Mapping[str, str],
                  hosts: Mapping[str, HostSpec],
                  creation_order: tuple[tuple[str, ...], ...]) -> None:
        """Remember how to re-create ``graph``'s nodes (hosts by node id, keys by node id),
        and where the ones about to be created put their snapshots."""
        exactly_once = (graph.delivery or self.settings.delivery) == "exactly_once"
        for node_id, host in hosts.items():
            self.hosts.setdefault(keys[node_id], host)
            self.exactly_once.setdefault(keys[node_id], exactly_once)
        for node_id in (n for generation in creation_order for n in generation):
            key = keys[node_id]
            self.actors.targets[key] = self.target(key, registry.entries[key].region)

    def remember(self, registry: NodeRegistry, graph: Graph, keys: Mapping[str, str],
                 hosts: Mapping[str, HostSpec]) -> None:
        """A restarted controller learns again how to re-create ``graph``'s running nodes;
        the next ``reconcile`` tells each of them its region."""
        self.add_nodes(registry, graph, keys, hosts, ())
        for key in keys.values():
            if key in registry.entries:
                self.actors.targets.setdefault(
                    key, CheckpointTarget(self.store, "", self.exactly_once.get(key, True)))

    def forget(self, keys: Iterable[str]) -> None:
        """Nodes retired: nothing re-creates them any more."""
        for key in keys:
            self.hosts.pop(key, None)
            self.exactly_once.pop(key, None)
            self.actors.targets.pop(key, None)

    # -- coordinators -----------------------------------------------------------------------
    async def reconcile(self, registry: NodeRegistry) -> None:
        """Give every region of ``registry`` a coordinator over exactly its live nodes.

        Steps:
        1. A coordinator whose region changed members (or is gone) stops: what it had in
           flight is abandoned.
        2. Every node learns its region's name, so its next snapshot lands there.
        3. Every region without a coordinator gets one.
        4. Folders of regions nothing can need any more are deleted (``sweep``).
        """
        regions: dict[str, set[str]] = {}
        for key, entry in registry.entries.items():
            if entry.alive:
                regions.setdefault(entry.region, set()).add(key)
        # Step 1: changed or gone regions stop checkpointing.
        for region in list(self._running):
            if frozenset(regions.get(region, ())) != self._running[region].members:
                await self.stop(region)
        # Step 2: nodes of regions that merged or split are told their region.
        retargets = []
        for region, keys in regions.items():
            for key in keys:
                current = self.actors.targets.get(key)
                if current is not None and current.region != self.prefix + region:
                    self.actors.targets[key] = self.target(key, region)
                    handle = self.actors.handles.get(key)
                    if handle is not None:
                        retargets.append(
                            handle.retarget_checkpoints.remote(self.prefix + region))
        for call in retargets:
            with contextlib.suppress(Exception):  # a dead or hung node is recovered, not retargeted
                await asyncio.wait_for(awaited(call), self.actors.call_timeout_s)
        # Step 3: new coordinators.
        for region, keys in regions.items():
            if region not in self._running and all(k in self.hosts for k in keys):
                self._start(region, frozenset(keys))
        # Step 4: folders of regions nothing needs any more go.
        await self.sweep_logged()

    def _start(self, region: str, members: frozenset[str], *, at_once: bool = False) -> None:
        coordinator = self._coordinator(region, members)
        task = asyncio.create_task(coordinator.run(at_once=at_once),
                                   name=f"checkpoints of {region}")
        self._running[region] = _Running(members, coordinator, task)

    def _coordinator(self, region: str, members: Iterable[str]) -> CheckpointCoordinator:
        """A coordinator over ``members`` of ``region``, with the region's figures so far."""
        nodes = sorted(members)

        async def on_outcome(checkpoint_id: int, completed: bool) -> None:
            figures = coordinator.figures
            if completed:
                await self._event("checkpoint.completed", region, {
                    "checkpoint": checkpoint_id, "size_bytes": figures.last_size_bytes})
                if self._unsettled:  # a merged region's folder may be replaced now
                    self._sweep_soon()
            else:
                await self._event("checkpoint.failed", region, {
                    "checkpoint": checkpoint_id, "abandoned": figures.abandoned})

        coordinator = CheckpointCoordinator(
            self.prefix + region, self.store, self.actors, nodes,
            [k for k in nodes if self.hosts[k].source is not None],
            interval_s=self.settings.interval_s, timeout_s=self.settings.timeout_s,
            ids=self.next_checkpoint_id, on_outcome=on_outcome)
        coordinator.figures = self.figures.checkpoints.setdefault(region, CheckpointFigures())
        return coordinator

    async def final_checkpoint(self, region: str, registry: NodeRegistry) -> Manifest:
        """Take one more checkpoint of ``region`` now (its coordinator stops); its manifest.

        Raises StreamdagError when none completes (a source finished: nothing to resume).
        """
        await self.stop(region)
        coordinator = self._coordinator(
            region, (k for k, e in registry.entries.items() if e.region == region))
        for _ in range(3):  # a checkpoint may be abandoned; the next one is tried
            if await coordinator.checkpoint():
                return self.store.manifest(self.prefix + region, coordinator.next_id - 1)
            if coordinator.sources_finished:
                break
        raise StreamdagError(f"no final checkpoint of region {region} completed (a source "
                             "finished, or its nodes did not acknowledge in time)")

    def resumed_snapshots(self, region: str, checkpoint_id: int,
                          keys: Iterable[str]) -> dict[str, NodeSnapshot]:
        """The snapshots of ``keys`` in checkpoint ``checkpoint_id`` of store ``region``."""
        loaded = self.store.load(region, checkpoint_id).snapshots
        return {key: NodeSnapshot.from_bytes(loaded[key]) for key in keys if key in loaded}

    async def _event(self, kind: str, region: str, data: dict[str, Any]) -> None:
        """Emit CloudEvent ``io.streamdag.<kind>`` about ``region`` (never raises)."""
        event = cloud_event_of(self.deployment, f"io.streamdag.{kind}", region, time.time(),
                               {"region": region, **data})
        log_event(event)
        if self._emit is not None:
            try:
                await self._emit(region, event)
            except Exception:  # events are for people; checkpoints go on without them
                _log.warning("could not emit %s of region %s", kind, region, exc_info=True)

    # -- old folders ------------------------------------------------------------------------
    def sweep_with(self, needs: DeploymentNeeds) -> None:
        """Delete region folders nothing can need, judged by ``needs`` at every sweep (the
        controller's registry and stop points, which only the controller knows)."""
        self._needs = needs
        self._retention()  # the stop points' checkpoints are pinned from now on

    def _retention(self) -> Retention:
        assert self._needs is not None
        registry, stop_points = self._needs()
        live = {self.prefix + entry.region for entry in registry.entries.values()}
        retention = Retention(
            self.deployment, frozenset(live | {self.prefix + r for r in self._running}),
            {key: entry.since for key, entry in registry.entries.items()},
            frozenset(stop_points))
        # A region live again (a graph sharing its smallest node) must not prune them either.
        self.store.pinned = retention.pinned
        return retention

    async def sweep(self) -> list[str]:
        """Delete the folders of the deployment's regions that nothing can need any more
        (``runtime.checkpoints.retention``); the folders deleted.

        Steps:
        1. What the deployment needs now is read, and the store is read off the event loop.
        2. What it needs is read again: a region that became live or needed meanwhile stays.
        3. The rest is deleted, off the event loop.
        """
        if self._needs is None:
            return []
        async with self._sweeping:
            # Step 1: the plan.
            plan = await asyncio.to_thread(plan_sweep, self.store, self._retention())
            # Step 2: the check.
            plan = plan.still(self._retention())
            # Step 3: the deletion.
            removed = await asyncio.to_thread(carry_out, self.store, plan, self.deployment,
                                              _deletions)
            # A region kept only for its nodes' newest checkpoints goes once newer ones exist.
            now = self._retention()
            held = now.live | {region for region, _ in now.pinned}
            self._unsettled = any(m.region not in held and m.region not in plan.regions
                                  for m in plan.manifests)
            return removed

    async def sweep_logged(self) -> None:
        """``sweep``, a failure logged rather than raised (old folders stay until the next)."""
        try:
            await self.sweep()
        except Exception:  # old folders stay until the next sweep; checkpoints go on
            _log.warning("deleting old checkpoint folders failed", exc_info=True)

    def _sweep_soon(self) -> None:
        """Sweep in the background (a coordinator must not wait for it)."""
        if self._sweeping.locked():
            return  # one is running: it sees this checkpoint, or the next one sweeps

        task = asyncio.create_task(self.sweep_logged(), name=f"sweep of {self.deployment}")
        self._sweeps.add(task)
        task.add_done_callback(self._sweeps.discard)

    async def stop(self, region: str) -> None:
        """Stop the coordinator of ``region`` (its checkpoint in flight is abandoned)."""
        running = self._running.pop(region, None)
        if running is not None:  # cancelled again if a wait_for swallowed it
            await cancel_and_wait(running.task, timeout_s=self.settings.timeout_s,
                                  what=f"the checkpoint coordinator of region {region}")

    async def stop_all(self) -> None:
        """Stop every coordinator."""
        for region in list(self._running):
            await self.stop(region)

    def failed(self) -> dict[str, str]:
        """Regions whose coordinator failed (a checkpoint could not be committed): why."""
        failures = {}
        for region, running in self._running.items():
            task = running.task
            if task.done() and not task.cancelled() and task.exception() is not None:
                failures[region] = (f"a checkpoint of region {region} could not be completed "
                                    f"({task.exception()!r})")
        return failures

    def describe(self, registry: NodeRegistry, keys: Iterable[str]) -> list[dict[str, Any]]:
        """The checkpoints and recoveries of the regions of ``keys``, for people and the API."""
        regions = sorted({registry.entries[k].region for k in keys if k in registry.entries})
        described = []
        for region in regions:
            figures = self.figures.checkpoints.get(region, CheckpointFigures())
            described.append({
                "region": region, "store_region": self.prefix + region,
                "nodes": sorted(e.name for e in registry.entries.values() if e.region == region),
                "completed": figures.completed, "abandoned": figures.abandoned,
                "last_checkpoint": figures.last_completed_id or None,
                "last_completed_at": figures.last_completed_at or None,
                "last_size_bytes": figures.last_size_bytes,
                # When the last complete one started, when its sources were last heard to go
                # idle, and whether that started it early (``runtime.checkpoints.quiet``).
                "last_started_at": figures.last_started_at or None,
                "last_quiet_at": figures.last_quiet_at or None,
                "last_started_early": figures.last_started_early,
                "started_early": figures.started_early,
                "recoveries": self.figures.recoveries.get(region, 0)})
        return described

    def metrics(self) -> tuple[RegionMetrics, ...]:
        """Every region's figures, for the metrics endpoint."""
        return tuple(
            RegionMetrics(region, f.completed, f.abandoned, f.last_size_bytes,
                          f.last_completed_at, copy.deepcopy(f.duration),
                          self.figures.recoveries.get(region, 0))
            for region, f in sorted(self.figures.checkpoints.items()))

    def failed_nodes(self, registry: NodeRegistry) -> dict[str, str]:
        """One node of every region whose coordinator failed, with the cause."""
        failures = self.failed()
        found: dict[str, str] = {}
        for key in sorted(registry.entries):
            region = registry.entries[key].region
            if region in failures and region not in {registry.entries[k].region for k in found}:
                found[key] = failures[region]
        return found

    # -- recovery ---------------------------------------------------------------------------
    async def recover_regions(
        self, registry: NodeRegistry, causes: Mapping[str, str]
    ) -> tuple[set[str], dict[str, str]]:
        """Recover the region of every node of ``causes`` (key -> why it crashed or failed).

        Returns the keys recovered, and the causes of the nodes whose region could not be
        (its graphs' definitions are unknown, or it failed too often: ``max_failures``).
        """
        entries = registry.entries
        hit: dict[str, list[str]] = {}
        for key in sorted(key for key in causes if key in entries):
            hit.setdefault(entries[key].region, []).append(key)
        recovered: set[str] = set()
        left: dict[str, str] = {}
        for region, keys in hit.items():
            members = {key for key, entry in entries.items() if entry.region == region}
            if not all(key in self.hosts for key in members):
                left.update({key: causes[key] for key in keys})
                continue
            cause = f"node {entries[keys[0]].name!r}: {causes[keys[0]]}"
            while True:
                try:
                    await self.recover(region, registry, cause)
                except GraphFailedError as gave_up:
                    await self.stop(region)
                    await self._event("recovery.failed", region, {"cause": str(gave_up)})
                    left.update(dict.fromkeys(keys, str(gave_up)))
                    break
                except Exception as exc:  # the restore itself failed: one more failure
                    _log.warning("recovering region %s failed", region, exc_info=True)
                    cause = f"region {region}: recovery failed ({failure_cause(exc)})"
                else:
                    recovered |= members
                    break
        return recovered, left


    async def recover(self, region: str, registry: NodeRegistry, cause: str) -> float:
        """Restore ``region`` from its newest complete checkpoint; seconds it took.

        Raises GraphFailedError once the region failed ``max_failures`` times in the window.

        Steps:
        1. The failure is counted, and the region's coordinator stops.
        2. Every actor of the region is killed (not drained: it restarts from the checkpoint).
        3. After the backoff, each node's snapshot is chosen (``choose_snapshots``).
        4. The nodes are created again with a new incarnation, sinks first (which publish
           what their checkpoint completed before they report ready), then interior nodes,
           then the sources, which seek to their offsets and read.
        5. The region checkpoints again.
        """
        entries = {key: e for key, e in registry.entries.items() if e.region == region}
        # Step 1: count it.
        policy = self._policies.setdefault(region, RestartPolicy(self.settings))
        figures = self.figures.checkpoints.get(region, CheckpointFigures())
        delay = policy.next_delay(cause, figures.completed)
        _log.warning("region %s failed (%s); recovering in %.1f s", region, cause, delay)
        await self._event("recovery.started", region, {"cause": cause, "backoff_s": delay})
        await self.stop(region)
        # Step 2: kill what is left of it.
        for key, entry in entries.items():
            handle = self.actors.handles.pop(key, None)
            if handle is not None:
                await self.actors.kill_actor(handle, entry.actor_name)
        # Step 3: back off, then the snapshots.
        await asyncio.sleep(delay)
        started = time.monotonic()
        snapshots, restored_from = await asyncio.to_thread(
            choose_snapshots, self.store, {key: e.since for key, e in entries.items()},
            self.prefix)
        # Step 4: the next incarnation, sinks first.
        self._incarnation = max(self._incarnation + 1, int(time.time() * 1000))
        for key in entries:
            self.actors.targets[key] = self.target(key, region)
        generations = [[(key, self.hosts[key]) for key in generation]
                       for generation in sinks_first(registry, set(entries))]
        edges = [EdgeSpec(edge, upstream, key, index) for key, entry in entries.items()
                 for edge, upstream, index in entry.input_edges()]
        self.actors.incarnation, self.actors.snapshots = self._incarnation, snapshots
        try:
            await deploy(self.actors, generations, edges)
        finally:
            self.actors.incarnation, self.actors.snapshots = 0, {}
        # Step 5: checkpoints go on, the first one at once.
        self._start(region, frozenset(entries), at_once=True)
        took = time.monotonic() - started
        self.figures.recoveries[region] = self.figures.recoveries.get(region, 0) + 1
        self.figures.restore_duration.observe(took)
        _log.warning("region %s recovered from checkpoint(s) %s (incarnation %d) in %.2f s "
                     "after a %.1f s backoff", region, restored_from or "none",
                     self._incarnation, took, delay)
        await self._event("recovery.finished", region, {
            "restored_from": restored_from, "incarnation": self._incarnation,
            "restore_s": round(took, 3)})
        return took


def sinks_first(registry: NodeRegistry, keys: set[str]) -> list[list[str]]:
    """``keys`` in generations, sinks first: a node comes after every consumer of it.

    >>> from runtime.deployment.node_registry import NodeEntry
    >>> def entry(key, inputs):
    ...     return NodeEntry(key, key, key, key, "op", "map", inputs, frozenset({"g"}))
    >>> registry = NodeRegistry({"s": entry("s", ()), "m": entry("m", ("s",)),
    ...                          "k": entry("k", ("m",))})
    >>> sinks_first(registry, {"s", "m", "k"})
    [['k'], ['m'], ['s']]
    """
    consumers: dict[str, list[str]] = {key: [] for key in keys}
    for key in keys:
        for upstream in registry.entries[key].upstreams:
            if upstream in consumers:
                consumers[upstream].append(key)
    depth: dict[str, int] = {}

    def depth_of(key: str) -> int:
        if key not in depth:
            depth[key] = 1 + max((depth_of(c) for c in consumers[key]), default=-1)
        return depth[key]

    levels: dict[int, list[str]] = {}
    for key in sorted(keys):
        levels.setdefault(depth_of(key), []).append(key)
    return [levels[level] for level in sorted(levels)]


def choose_snapshots(
    store: CheckpointStore, since: Mapping[str, float], prefix: str = ""
) -> tuple[dict[str, NodeSnapshot], list[str]]:
    """Each node's snapshot from the newest complete checkpoint holding it; and which those are.

    ``since`` maps node keys to when their entry was created: a checkpoint written before
    then holds an earlier node of that key, never this one. Nodes that form one region were
    in one region at every checkpoint holding them both, so they come from one cut. Only the
    regions named ``prefix...`` are read. A corrupt checkpoint is skipped (with a logged
    reason) for the one before it. A node no checkpoint holds starts afresh.
    """
    manifests: list[Manifest] = []
    for region in store.regions():
        if not region.startswith(prefix):
            continue
        for checkpoint_id in store.checkpoint_ids(region):
            try:
                manifests.append(store.manifest(region, checkpoint_id))
            except CorruptCheckpointError as exc:
                _log.warning("checkpoint %d of region %s is corrupt (%s); skipped",
                             checkpoint_id, region, exc)
    manifests.sort(key=lambda m: m.created_at, reverse=True)
    while True:
        chosen: dict[str, Manifest] = {}
        for manifest in manifests:
            for key, at in since.items():
                if key not in chosen and key in manifest.snapshots and manifest.created_at >= at:
                    chosen[key] = manifest
        used = {id(m): m for m in chosen.values()}
        try:
            loaded = {key: _load(store, manifest) for key, manifest in used.items()}
        except _CorruptError as corrupt:
            _log.warning("checkpoint %d of region %s is corrupt (%s); falling back to the one "
                         "before it", corrupt.manifest.checkpoint_id, corrupt.manifest.region,
                         corrupt.reason)
            manifests.remove(corrupt.manifest)
            continue
        snapshots = {key: NodeSnapshot.from_bytes(loaded[id(manifest)][key])
                     for key, manifest in chosen.items()}
        return snapshots, sorted(f"{m.region}/{m.checkpoint_id}" for m in used.values())


class _CorruptError(Exception):
    def __init__(self, manifest: Manifest, reason: str) -> None:
        super().__init__(reason)
        self.manifest = manifest
        self.reason = reason


def _load(store: CheckpointStore, manifest: Manifest) -> dict[str, bytes]:
    try:
        return store.load(manifest.region, manifest.checkpoint_id).snapshots
    except CorruptCheckpointError as exc:
        raise _CorruptError(manifest, str(exc)) from None
