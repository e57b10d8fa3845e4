"""The deployment controller: deduplicates graphs into shared node actors and runs their lifecycle.

A plain class, deployed by ``Deployment`` as a detached named Ray actor. It holds the node
registry (``node_id -> actor, refcount, graphs, region``, see ``registry``), persists it and
every submission's lifecycle in its state directory, and carries out what the planner's diff
says: new node actors are created sinks first, generation by generation, each generation only
once every actor below it is ready; running producers are subscribed to their new consumers and
new sources start reading last. Submissions are serialized by an asyncio lock; node actors are
named after their node id and created with ``get_if_exists``, so even two controllers racing
cannot start one node twice.

The controller's health checks and recoveries are ``controller_health``, what it reports
(status, nodes, metrics) ``controller_reports``, stopping and resuming ``stop_resume``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runtime.dataplane.checkpointing import NodeSnapshot
from runtime.dataplane.host import RuntimeSettings
from runtime.dataplane.stats import LatencyHistogram, NodeStats
from runtime.deployment.controller_health import HealthChecks
from runtime.deployment.controller_options import (
    ControllerOptions,
    controller_actor_name,
    deployment_state_dir,
    start_when_restarted_by_ray,
)
from runtime.deployment.controller_reports import Reports, UnknownNodeError
from runtime.deployment.controller_waits import WatchedLock
from runtime.deployment.crashes import reuse_refusal
from runtime.deployment.lifecycle import (
    TERMINAL_STATES,
    DiffSummary,
    IllegalTransitionError,
    KafkaLifecycleEmitter,
    LifecycleEmitter,
    SubmissionNode,
    SubmissionRecord,
    SubmissionState,
    UnknownSubmissionError,
    cloud_event,
    failure_cause,
    load_submissions,
    log_event,
    log_to_file_inside_ray_actor,
    new_submission_id,
    save_submissions,
)
from runtime.deployment.node_actors import NodeActors, locate_node_actors
from runtime.deployment.node_registry import (
    NodeRegistry,
    acquire,
    instance_key,
    node_actor_name,
    release,
    retirement_order,
    with_actor_name,
    with_follows,
)
from runtime.deployment.region_checkpoints import region_checkpoints
from runtime.deployment.sharded_nodes import ShardedPlan, parallelism_refusal, plan_shards
from runtime.deployment.state_files import load_registry, save_graph, save_registry
from runtime.deployment.stop_resume import (
    StopAndResume,
    drop_stop_point,
)
from runtime.deployment.tag_queries import TagQueries
from runtime.deployment.warm_pool import WarmPool
from runtime.planning.planner import diff_graph
from runtime.planning.wiring import HostSpec, wire_graph
from runtime.runners.deploy_sequence import ActorNotReadyError, DeployProgress, deploy
from runtime.runners.kafka_binding import KafkaBinding
from streamdag.cancellation import cancel_and_wait
from streamdag.config import Settings
from streamdag.errors import StreamdagError
from streamdag.graph import Graph

__all__ = [
    "Controller",
    "ControllerOptions",
    "IllegalTransitionError",
    "UnknownNodeError",
    "UnknownSubmissionError",
    "controller_actor_name",
    "deployment_state_dir",
]

_log = logging.getLogger("streamdag.controller")
#: Seconds after a submission before the warm pool replaces the actors it took: booting them
#: sooner would take the CPU from the graph just started while it catches up with its input.
POOL_REFILL_AFTER_SUBMISSION_S = 5.0
_S = SubmissionState


class _SubmissionFailedError(Exception):
    """Carries a failed submission's cause to the rollback."""


class Controller(HealthChecks, Reports, StopAndResume):
    """One deployment's controller: submissions, the shared node actors, their lifecycle."""

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap_servers: str,
        state_dir: str | None = None,
        options: ControllerOptions | None = None,
        emitter: LifecycleEmitter | None = None,
    ) -> None:
        self.settings = settings
        self.deployment = settings.name
        self.bootstrap_servers = bootstrap_servers
        self.options = options or ControllerOptions()
        self.state_dir = Path(state_dir or deployment_state_dir(settings)).resolve()
        self._registry_path = self.state_dir / "registry.json"
        self._submissions_path = self.state_dir / "submissions.json"
        self._registry = load_registry(self._registry_path)
        self._records = {r.id: r for r in load_submissions(self._submissions_path)}
        self._emitter: LifecycleEmitter = emitter or KafkaLifecycleEmitter(
            bootstrap_servers, self.options.lifecycle_topic,
            partitions=settings.kafka.partitions,
        )
        self._binding = KafkaBinding(bootstrap_servers, settings.kafka.fetch_max_wait_ms,
                                     idle_timeout_s=settings.kafka.idle_timeout_s,
                                     compression_type=settings.kafka.compression or None)
        self._runtime = RuntimeSettings(settings.runtime.credits,
                                        settings.runtime.max_batch_records,
                                        settings.runtime.linger_ms / 1000,
                                        data_connections=settings.runtime.data_connections)
        #: Serializes submissions, removals, health checks and shutdown; a call waiting for
        #: it long logs where its holder waits (``controller_waits``).
        self._lock = WatchedLock("the controller's lock", self.options.lock_report_after_s)
        self._actors = NodeActors(self.deployment, self._runtime,
                                  call_timeout_s=self.options.call_timeout_s,
                                  ready_timeout_s=self.options.ready_timeout_s)
        self._actors.unresponsive_after = self.options.unresponsive_probes
        self._actors.routes = self._registry.routes()
        self._actors.on_named = self._actor_named
        #: Idle warmed node actors new nodes bind to (``settings.runtime.warm_pool``).
        self._pool = WarmPool(self.deployment, settings.runtime.warm_pool,
                              self._actors.actor_options,
                              call_timeout_s=self.options.call_timeout_s,
                              warm_timeout_s=self.options.ready_timeout_s)
        self._actors.pool = self._pool if self._pool.size else None
        self._stats: dict[str, NodeStats] = {}
        self._retiring: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._health_task: asyncio.Task[None] | None = None
        self._diff_duration = LatencyHistogram()
        self._nodes_new_total = 0
        self._nodes_reused_total = 0
        self._last_reuse_ratio = 0.0
        self._crashes = 0
        #: With ``checkpoint.enabled``: every region checkpoints and recovers by itself.
        self._checkpoints = (region_checkpoints(self.deployment, settings, self._actors,
                                                self._emitter.emit)
                             if settings.checkpoint.enabled else None)
        #: What every tag-query node follows (resolved after each submission and removal).
        self._tag_queries = TagQueries(self.state_dir / "tag_queries.json")
        self._actors.origins.update(self._tag_queries.origins())
        #: The start of a controller Ray restarted (kept: the loop holds tasks weakly).
        self._restart = start_when_restarted_by_ray(self.start)

    # -- start and reconcile ----------------------------------------------------------------
    async def start(self) -> None:
        """Reconcile the persisted registry with the running actors and start health checks."""
        async with self._lock:
            await self._ensure_started()

    async def _ensure_started(self) -> None:
        """Runs once, under the lock, before anything else touches actors."""
        if self._started:
            return
        self._started = True
        log_to_file_inside_ray_actor(self.state_dir / "deployment.log", "streamdag.lifecycle",
                                     "streamdag.controller")
        # Step 1: find each live node's actor by its recorded name.
        located = locate_node_actors(self._registry, self.deployment)
        self._actors.handles.update(located.found)
        # Step 2: with checkpoints, how to re-create the running graphs' nodes.
        self._remember_graphs()
        # Step 3: nodes whose actor is gone died while no controller watched them (with
        # checkpoints, their regions recover).
        await self._declare_dead(
            dict.fromkeys(located.missing, "its actor was not found when the controller started"))
        # Step 4: named node actors no entry claims are leftovers of an interrupted submission;
        # unclaimed pool actors join the pool while idle, and are stopped once bound.
        for name, handle in located.leftovers.items():
            _log.warning("stopping leftover node actor %s", name)
            await self._actors.stop_actor(handle, name)
        for name in await self._pool.adopt(located.pooled):
            _log.warning("stopped leftover pool actor %s", name)
        self._pool.refill()
        # Step 5: the regions checkpoint again; periodic health checks.
        await self._reconcile_checkpoints()
        if self.options.health_interval_s > 0:
            self._health_task = asyncio.create_task(self._health_loop())

    # -- submissions ------------------------------------------------------------------------
    async def submit_spec(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        """Deploy a data-only graph spec (the gateway's path); see ``submit_graph``."""
        from streamdag.spec import graph_from_dict

        return await self.submit_graph(graph_from_dict(spec))

    async def submit_graph(self, graph: Graph) -> dict[str, Any]:
        """Deploy ``graph``, sharing every node some running graph already has.

        Returns the submission: ``id``, ``graph``, ``state`` (``executing``, or ``failed`` with
        its ``cause``), ``diff`` (node names: ``new``, ``reused``, ``creation_order``, and
        ``reuse_ratio``) and ``nodes``.
        """
        async with self._lock:
            await self._ensure_started()
            record = SubmissionRecord.new(new_submission_id(graph.name), graph.name)
            self._records[record.id] = record
            await self._publish(record)
            try:
                await self._deploy(record.id, graph)
            except Exception as exc:  # every failure ends the submission FAILED, with its cause
                if not isinstance(exc, _SubmissionFailedError | StreamdagError):
                    _log.exception("submission %s of graph %r failed", record.id, graph.name)
                await self._fail(record.id, str(exc) if isinstance(exc, _SubmissionFailedError)
                                 else failure_cause(exc))
            finally:
                # What the submission took, once its nodes have had the CPU for a while.
                self._pool.refill(after_s=POOL_REFILL_AFTER_SUBMISSION_S)
            return self._records[record.id].describe(self.deployment,
                                                     actor_names=self._registry.actor_names())

    async def _deploy(self, submission: str, graph: Graph) -> None:
        """Steps of one submission; raises _SubmissionFailedError after rolling back."""
        # Step 1: plan and diff against the live nodes.
        await self._move(submission, _S.PROCESSING)
        dedup = self.options.dedup
        keys = {n.node_id: instance_key(n.node_id, submission, dedup=dedup) for n in graph.nodes}
        started = time.perf_counter()
        diff = diff_graph(graph, frozenset(e.logical_key for e in self._registry.entries.values()
                                           if e.alive) if dedup else frozenset())
        self._diff_duration.observe(time.perf_counter() - started)
        from runtime.deployment.admission import admit_submission

        refusal = parallelism_refusal(self._registry, graph, keys)
        if refusal is not None:  # a node is shared only with its parallelism (sharded_nodes)
            raise _SubmissionFailedError(refusal)
        # Limits and topic ownership, before anything is mapped or created.
        admit_submission(self.state_dir, self.settings.limits, self._registry,
                         self._records.values(), submission, graph, keys, diff)
        names = {node.node_id: node.name for node in graph.nodes}
        plan = self._plan(graph, keys)
        refusal = reuse_refusal(self._registry, self._records, graph.name,
                                {r.key: r.name for r in plan.requests})
        if refusal is not None:  # dead nodes, or nodes held since their region failed
            raise _SubmissionFailedError(refusal)
        await asyncio.gather(*(self._retiring[r.key] for r in plan.requests
                               if r.key in self._retiring))
        # Step 2: map every node (every shard of it) to its actor in the registry.
        self._registry = acquire(self._registry, submission, plan.requests)
        self._tag_queries.learn(submission, graph, keys)
        leaves = {n.node_id for n in (*graph.sinks, *graph.outputs)}
        self._records[submission] = dataclasses.replace(
            self._records[submission], holds_nodes=True, diff=DiffSummary.of(diff, names),
            nodes=tuple(SubmissionNode.of(n, key, leaf=n.node_id in leaves, shard=shard,
                                          shards=len(plan.shard_keys[n.node_id]))
                        for n in graph.nodes
                        for shard, key in enumerate(plan.shard_keys[n.node_id])),
        )
        self._nodes_new_total += len(diff.new)
        self._nodes_reused_total += len(diff.reused)
        self._last_reuse_ratio = diff.reuse_ratio
        resuming, snapshots = self._resume_point(
            graph, [key for g in plan.generations(diff.creation_order) for key, _ in g])
        self._save_registry()
        await self._move(submission, _S.MAPPED)
        # Step 3: the deployment sequence: the new actors, sinks first; running producers
        # attach to them; the new sources read.
        progress = DeployProgress()
        try:
            await self._create_and_start(submission, graph, plan, diff.creation_order,
                                         progress, snapshots)
        except Exception as exc:
            await self._roll_back(submission, progress)
            raise _SubmissionFailedError(
                str(exc) if isinstance(exc, ActorNotReadyError) else failure_cause(exc)
            ) from exc
        if resuming is not None:  # used once
            drop_stop_point(self.state_dir, graph.name)
        await self._move(submission, _S.EXECUTING, None if resuming is None else
                         f"resumed from checkpoint(s) {resuming.describe()}")
        await self._reconcile_checkpoints()
        await self._follow_tags()
        await self._refresh_stats(r.key for r in plan.requests)

    def _plan(self, graph: Graph, keys: Mapping[str, str]) -> ShardedPlan:
        """How to build and wire every shard of ``graph``'s nodes, registered under ``keys``
        (by node id)."""
        hosts = {spec.node.node_id: spec
                 for generation in wire_graph(graph, {}, {}, *self._binding.defaults(),
                                              capture_outputs=False)[0]
                 for spec in generation}
        return plan_shards(self.deployment, graph, keys, hosts)

    async def _create_and_start(
        self,
        submission: str,
        graph: Graph,
        plan: ShardedPlan,
        creation_order: tuple[tuple[str, ...], ...],
        progress: DeployProgress,
        snapshots: dict[str, NodeSnapshot],
    ) -> None:
        """Create (from ``snapshots`` when a stopped graph resumes), wire and start the new
        nodes' shards; ``progress`` records it for a rollback."""
        generations = plan.generations(creation_order)
        await self._create_sink_topics([host for g in generations for _, host in g])
        if self._checkpoints is not None:
            save_graph(self.state_dir / "graphs", submission, graph)
            self._checkpoints.add_nodes(
                self._registry, graph, {key: key for key in plan.hosts}, plan.hosts,
                tuple(tuple(key for key, _ in generation) for generation in generations))
        self._actors.snapshots = snapshots
        try:
            await deploy(self._actors, generations, plan.edges, progress)
        finally:
            self._actors.snapshots = {}

    async def _create_sink_topics(self, hosts: list[HostSpec]) -> None:
        topics = {str(h.node.params["topic"]): self.settings.kafka.partitions
                  for h in hosts if h.node.operator == "kafka_sink"}
        if topics and self.options.create_sink_topics:
            from connectors.topics import ensure_topics

            await ensure_topics(self.bootstrap_servers, topics, strict=False)

    async def _roll_back(self, submission: str, progress: DeployProgress) -> None:
        """Undo a failed submission: shared actors keep running, untouched."""
        # Step 1: running producers stop sending to what this submission created.
        detaching = [self._actors.unsubscribe(edge.upstream, edge.edge)
                     for edge in progress.attached]
        # Step 2: the created actors stop, in reverse creation order (sources first), once no
        # producer sends to them; a producer slow to take that goes on in the background.
        created = tuple(reversed(progress.created))
        entries = self._registry.entries
        stopping = asyncio.create_task(self._retire(
            created, [entries[key].actor_name if key in entries
                      else node_actor_name(self.deployment, key) for key in created], detaching,
            grace_s=0.0))
        for key in created:
            self._retiring[key] = stopping
        await asyncio.wait([stopping], timeout=self.options.call_timeout_s)
        # Step 3: the registry forgets this submission's references.
        self._registry, retired = release(self._registry, submission)
        self._records[submission] = dataclasses.replace(self._records[submission],
                                                        holds_nodes=False)
        self._save_registry()
        await self._reconcile_checkpoints(retired)

    # -- removal and garbage collection -----------------------------------------------------
    async def remove(self, submission_id: str) -> dict[str, Any]:
        """Stop a submission and release its nodes; nodes no graph uses any more are retired.

        A retired node is unsubscribed from its producers at once, stopped after
        ``grace_s``, and forgotten. Returns the submission, with ``retired`` node names.
        Removing a submission already in a terminal state only releases its nodes.
        """
        async with self._lock:
            await self._ensure_started()
            record = self._record(submission_id)
            if not record.terminal:
                await self._move(submission_id, _S.STOPPED, "removed")
            retiring = await self._release(submission_id)
        await asyncio.gather(*retiring.values())
        if retiring and self._checkpoints is not None:
            # A retired node may have been writing its snapshot of a checkpoint abandoned
            # when its region's coordinator stopped, and so have made the region's folder
            # again after the sweep of ``_release``; its actor is gone now: sweep once more.
            await self._checkpoints.sweep_logged()
        names = {node.key: node.name for node in record.nodes}
        return {**self._records[submission_id].describe(self.deployment),
                "retired": [names.get(key, key) for key in retiring]}

    async def _release(self, submission: str) -> dict[str, asyncio.Task[None]]:
        """Drop the submission's references and start retiring the nodes left unused."""
        record = self._records[submission]
        if not record.holds_nodes:
            return {}
        before = self._registry
        self._registry, retired = release(before, submission)
        self._records[submission] = dataclasses.replace(record, holds_nodes=False)
        self._save_registry()
        self._save_submissions()
        await self._reconcile_checkpoints(retired)
        await self._follow_tags()  # tag queries let go of retired nodes, or retire themselves
        # Unsubscribe now so no new batch enters a retiring node; what is in flight drains.
        detaching = [self._actors.unsubscribe(upstream, edge) for key in retired
                     for edge, upstream, _ in before.entries[key].input_edges()
                     if upstream in self._registry.entries]
        task = asyncio.create_task(self._retire(
            retired, [before.entries[k].actor_name for k in retired], detaching,
            grace_s=self.options.grace_s))
        for key in retired:
            self._retiring[key] = task
        return dict.fromkeys(retired, task)

    async def _retire(self, keys: tuple[str, ...], actor_names: list[str],
                      detaching: list[asyncio.Future[None]], grace_s: float) -> None:
        """Stop retired nodes, sources first, once no producer sends to them, and forget them."""
        try:
            # Step 1: every running producer has stopped sending to them.
            await asyncio.gather(*detaching)
            # Step 2: what was in flight drains during the grace period.
            await asyncio.sleep(grace_s)
            # Step 3: the actors stop.
            for key, name in zip(keys, actor_names, strict=True):
                await self._actors.stop(key, name)
                self._stats.pop(key, None)
        finally:
            for key in keys:
                self._retiring.pop(key, None)

    async def shutdown(self) -> dict[str, Any]:
        """Stop every node actor (sources first) and every submission still running.

        Steps:
        1. The periodic health check ends first: one cancelled mid-way releases the lock, so
           shutdown never waits behind a check (or a recovery) that waits on an actor.
        2. Under the lock: the regions stop checkpointing, the running submissions stop,
           retiring nodes finish retiring, every node actor and the warm pool stop.
        """
        # Step 1: no health check holds the lock, or takes it again.
        await self._stop_health_checks()
        async with self._lock:
            await self._ensure_started()
            await self._stop_health_checks()  # one _ensure_started may just have started
            # Step 2: everything stops.
            if self._checkpoints is not None:
                await self._checkpoints.stop_all()
            for record in list(self._records.values()):
                if not record.terminal:
                    await self._move(record.id, _S.STOPPED, "deployment shut down")
                self._records[record.id] = dataclasses.replace(
                    self._records[record.id], holds_nodes=False)
            await asyncio.gather(*self._retiring.values(), return_exceptions=True)
            entries = self._registry.entries
            order = retirement_order(entries, set(entries))
            for key in order:
                await self._actors.stop(key, entries[key].actor_name)
            self._registry = NodeRegistry()
            await self._pool.close()
            await self._tag_queries.apply((), {}, self._actors)  # no query follows anything
            self._stats.clear()
            self._save_registry()
            self._save_submissions()
            try:
                await asyncio.wait_for(self._emitter.close(), self.options.call_timeout_s)
            except Exception:  # the lifecycle topic is for people; the actors are stopped
                _log.warning("the lifecycle emitter of deployment %r did not close",
                             self.deployment, exc_info=True)
            return {"stopped": [entries[key].name for key in order]}

    async def _stop_health_checks(self) -> None:
        """Cancel the periodic health check and wait until it has ended."""
        task, self._health_task = self._health_task, None
        if task is not None:
            await cancel_and_wait(task, timeout_s=self.options.call_timeout_s,
                                  what=f"the health check of deployment {self.deployment!r}")

    async def _reconcile_checkpoints(self, retired: Iterable[str] = ()) -> None:
        if self._checkpoints is not None:
            self._checkpoints.forget(retired)
            await self._checkpoints.reconcile(self._registry)

    # -- tag queries ------------------------------------------------------------------------
    async def _follow_tags(self) -> None:
        """Every tag query follows the live nodes that match it now (``tag_queries``); the
        registry holds it (a query and what it follows are one region)."""
        await self._tag_queries.apply(self._registry.live_keys(), self._registry.entries,
                                      self._actors)
        self._registry = with_follows(self._registry, self._tag_queries.follows())
        self._save_registry()
        await self._reconcile_checkpoints()

    # -- records, persistence, events -------------------------------------------------------
    def _record(self, submission_id: str) -> SubmissionRecord:
        record = self._records.get(submission_id)
        if record is None:
            known = sorted(self._records)[-5:]
            raise UnknownSubmissionError(
                f"deployment {self.deployment!r} has no submission {submission_id!r}; "
                f"list_submissions() shows the ids ({len(self._records)} known, e.g. {known})"
            )
        return record

    async def _move(self, submission: str, target: SubmissionState,
                    cause: str | None = None) -> None:
        self._records[submission] = self._records[submission].advance(target, cause)
        await self._publish(self._records[submission])

    async def _fail(self, submission: str, cause: str) -> None:
        if self._records[submission].state not in TERMINAL_STATES:
            await self._move(submission, _S.FAILED, cause)

    async def _publish(self, record: SubmissionRecord) -> None:
        """Persist the records, then emit the record's latest transition to log and topic."""
        self._save_submissions()
        event = cloud_event(self.deployment, record, record.history[-1])
        log_event(event)
        await self._emitter.emit(record.id, event)

    def _actor_named(self, key: str, name: str) -> None:
        """Record that ``key``'s actor is now ``name`` (a pool actor bound to it, or a new one
        after a recovery) before anything can depend on it."""
        registry = with_actor_name(self._registry, key, name)
        if registry is not self._registry:
            self._registry = registry
            self._save_registry()

    def warm_pool(self) -> dict[str, int]:
        """The warm pool's figures: ``size``, ``idle``, ``starting``, ``bound_total``."""
        return self._pool.figures().to_dict()

    def _save_registry(self) -> None:
        save_registry(self._registry_path, self._registry, self.deployment)
        self._actors.routes = self._registry.routes()  # a recovery re-wires exchanges by them

    def _save_submissions(self) -> None:
        save_submissions(self._submissions_path, list(self._records.values()))

