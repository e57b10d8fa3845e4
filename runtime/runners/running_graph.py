"""A graph running on Ray: wait for it, read its figures, stop it, and recover it.

With checkpoints on, a coordinator checkpoints the graph's region every interval, and a
failure (an actor died, a node failed, a sink could not publish) is recovered by itself
(DESIGN.md §7, step 6):

1. The failure is counted; past ``checkpoint.max_failures`` within the window the graph ends
   with GraphFailedError and the cause.
2. The coordinator stops, and every actor of the graph is stopped and killed.
3. After the backoff (doubling from ``checkpoint.backoff_s``), the newest complete
   checkpoint that verifies is loaded (none: the graph starts over; exactly-once sinks have
   published nothing yet).
4. The actors are created again by the deployment sequence with the next incarnation (older
   messages are dropped) and their snapshots: sinks first, which publish what their
   checkpoint completed before they report ready; then interior nodes; sources seek to their
   offsets and read last.
5. The coordinator resumes after the last checkpoint id it used.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from runtime.checkpoints.coordinator import CheckpointCoordinator, CheckpointFigures
from runtime.checkpoints.store import CheckpointStore
from runtime.dataplane.checkpointing import NodeSnapshot
from runtime.dataplane.host import followed_a_failure
from runtime.dataplane.startup_phases import LaunchPhases
from runtime.dataplane.stats import NodeStats
from runtime.deployment.lifecycle import failure_cause
from runtime.planning.sharding import gather_outputs, instance_keys, shard_stats
from runtime.planning.wiring import EdgeSpec, HostSpec, RunResult
from runtime.runners.deploy_sequence import deploy
from runtime.runners.ray_nodes import RayNodes, run_blocking
from runtime.runners.recovery import BackgroundLoop, GraphFailedError, RestartPolicy
from streamdag.config import CheckpointSettings
from streamdag.graph import Graph

__all__ = ["RecoveryPlan", "RunningGraph"]

_log = logging.getLogger("streamdag.recovery")

#: Seconds one node is given to answer while the cause of a failure is looked for.
_PROBE_TIMEOUT_S = 10.0
#: Seconds between two looks at the coordinator while waiting for the graph.
_POLL_S = 0.25


@dataclass(frozen=True)
class RecoveryPlan:
    """What recovering a graph needs: its hosts and edges, where and how it checkpoints."""

    generations: list[list[tuple[str, HostSpec]]]
    edges: list[EdgeSpec]
    store: CheckpointStore
    region: str
    settings: CheckpointSettings


class _RegionFailedError(Exception):
    """Carries a failure's cause from waiting to recovering."""


class _StoppedError(Exception):
    """The graph is being stopped: its supervisor ends."""


class RunningGraph:
    """A graph whose actors are up: wait for it, read its stats, attach, stop or recover it."""

    def __init__(self, graph: Graph, nodes: RayNodes, plan: RecoveryPlan | None = None) -> None:
        self.graph = graph
        self.nodes = nodes
        self.plan = plan
        self._policy = RestartPolicy(plan.settings) if plan is not None else None
        self._loop: BackgroundLoop | None = None
        self._coordinator: CheckpointCoordinator | None = None
        self._coordinating: concurrent.futures.Future[None] | None = None
        #: With checkpoints: the supervisor thread's result (the outputs, or why it gave up).
        self._supervised: concurrent.futures.Future[RunResult] | None = None
        self._supervisor: concurrent.futures.ThreadPoolExecutor | None = None
        self._stopping = False
        #: The checkpoint each recovery restored (None: there was none, it started over).
        self.restored_from: list[int | None] = []
        #: True from a failure being noticed until the graph runs again, or recovery gave up.
        self.recovering = False
        self._recovered = 0
        #: When the start of this graph passed each step, in the driver (``RayRunner.start``).
        self.launch_phases = LaunchPhases()

    @property
    def actors(self) -> dict[str, Any]:
        """The actor of every node, by node id (of the current incarnation); a sharded
        node's, by ``<node_id>.<shard>of<count>``."""
        return self.nodes.handles

    @property
    def recoveries(self) -> int:
        """How many times the graph was restored (from a checkpoint, or from the start) and
        runs again."""
        return self._recovered

    @property
    def checkpoints(self) -> CheckpointFigures | None:
        """The coordinator's figures (None without checkpoints)."""
        return self._coordinator.figures if self._coordinator is not None else None

    def actor(self, name: str, shard: int = 0) -> Any:
        """The actor hosting node ``name`` (its shard ``shard``, when it has several)."""
        return self.actors[instance_keys(self.graph, self.graph.node(name))[shard]]

    def stats(self) -> dict[str, NodeStats]:
        """Every node's counters, by node name (a sharded node's summed over its shards)."""
        return shard_stats(self.graph, self._reports())[0]

    def shard_stats(self) -> dict[str, tuple[NodeStats, ...]]:
        """Each sharded node's counters shard by shard, by node name."""
        return shard_stats(self.graph, self._reports())[1]

    def _reports(self) -> dict[str, NodeStats]:
        import ray

        refs = {key: actor.stats.remote() for key, actor in self.actors.items()}
        return {key: ray.get(ref) for key, ref in refs.items()}

    # -- checkpoints ----------------------------------------------------------------------
    def start_checkpoints(self, first_id: int = 1, *, at_once: bool = False) -> None:
        """Start the coordinator of this graph's region (a no-op without checkpoints); with
        ``at_once`` its first checkpoint starts now."""
        plan = self.plan
        if plan is None:
            return
        if self._loop is None:
            self._loop = BackgroundLoop("streamdag-checkpoints")
        previous = self._coordinator
        self._coordinator = CheckpointCoordinator(
            plan.region, plan.store, self.nodes, list(self.nodes.handles),
            list(self.nodes.sources), interval_s=plan.settings.interval_s,
            timeout_s=plan.settings.timeout_s, first_id=first_id)
        if previous is not None:
            self._coordinator.figures = previous.figures
        self._coordinating = self._loop.submit(self._coordinator.run(at_once=at_once))

    def supervise(self) -> None:
        """With checkpoints: start the thread that waits for the graph and recovers it."""
        if self.plan is None or self._supervisor is not None:
            return
        self._supervisor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="streamdag-supervisor")
        self._supervised = self._supervisor.submit(self._supervise)

    def _stop_checkpoints(self) -> int:
        """Stop the coordinator; the id its next checkpoint would have had."""
        if self._coordinating is not None:
            self._coordinating.cancel()
            with contextlib.suppress(BaseException):
                self._coordinating.result(timeout=10)
            self._coordinating = None
        return self._coordinator.next_id if self._coordinator is not None else 1

    # -- waiting and recovering -----------------------------------------------------------
    def wait(self, timeout_s: float | None = None) -> RunResult:
        """Block until every node has seen EndOfStream; return the outputs.

        Without checkpoints, raises GraphFailedError as soon as any node fails or its actor
        dies (the nodes that fed it hold rather than lose what they read), with the cause.
        With checkpoints, the graph's supervisor recovers every failure by itself from the
        last complete checkpoint, and GraphFailedError comes only once recovery gives up.
        """
        if self._supervised is None:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            try:
                return self._wait_once(deadline, timeout_s)
            except _RegionFailedError as failed:
                raise GraphFailedError(str(failed)) from None
        try:
            return self._supervised.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"graph {self.graph.name!r} did not finish within "
                               f"{timeout_s} s") from None

    @property
    def ended(self) -> bool:
        """With checkpoints: whether the supervisor is done, because the graph finished or
        recovery gave up (``wait`` then returns or raises at once); without, False."""
        return self._supervised is not None and self._supervised.done()

    def _supervise(self) -> RunResult:
        """Wait for the graph, recovering each failure, until it finishes or recovery gives up."""
        try:
            while True:
                try:
                    return self._wait_once(None, None)
                except _RegionFailedError as failed:
                    cause = str(failed)
                self.recovering = True
                while True:
                    try:
                        self.recover(cause)
                        self.recovering = False
                        break
                    except (GraphFailedError, _StoppedError):
                        raise
                    except Exception as exc:  # the restore failed: that is one more failure
                        cause = (f"graph {self.graph.name!r}: recovery failed "
                                 f"({failure_cause(exc)})")
        finally:  # given up or stopped: nothing is recovering any more
            self.recovering = False

    def recover(self, cause: str) -> None:
        """Restore the graph from its newest complete checkpoint (see the module's steps)."""
        plan, policy = self.plan, self._policy
        assert plan is not None and policy is not None, "recovery needs checkpoints"
        # Step 1: count it; give up past the limit.
        figures = self.checkpoints
        try:
            delay = policy.next_delay(cause, figures.completed if figures is not None else 0)
        except GraphFailedError:
            self._stop_checkpoints()
            raise
        _log.warning("graph %r failed (%s); recovering in %.1f s", self.graph.name, cause, delay)
        # Step 2: stop everything: killed, not drained (it restarts from the checkpoint anyway).
        started = time.monotonic()
        next_id = self._stop_checkpoints()
        self._stop_actors(drain=False)
        stopped = time.monotonic()
        # Step 3: back off, then the newest complete checkpoint.
        time.sleep(delay)
        if self._stopping:
            raise _StoppedError
        restoring = time.monotonic()
        loaded = plan.store.latest(plan.region)
        self.restored_from.append(loaded.checkpoint_id if loaded is not None else None)
        nodes = self.nodes
        nodes.snapshots = ({} if loaded is None else
                           {key: NodeSnapshot.from_bytes(data)
                            for key, data in loaded.snapshots.items()})
        # Step 4: the next incarnation, sinks first.
        nodes.incarnation += 1
        try:
            run_blocking(deploy(nodes, plan.generations, plan.edges))
        finally:
            nodes.snapshots = {}
        # Step 5: checkpoints go on, the first one at once.
        self.start_checkpoints(first_id=next_id, at_once=True)
        self._recovered += 1
        done = time.monotonic()
        _log.warning("graph %r recovered from checkpoint %s (incarnation %d) in %.2f s: stop "
                     "%.2f s, backoff %.2f s, restore %.2f s", self.graph.name,
                     loaded.checkpoint_id if loaded is not None else "none", nodes.incarnation,
                     done - started, stopped - started, restoring - stopped, done - restoring)

    def _wait_once(self, deadline: float | None, timeout_s: float | None) -> RunResult:
        import ray

        waits = {actor.wait_finished.remote(): node_id for node_id, actor in self.actors.items()}
        # Every node, not only the leaves: a producer's counters are final once the
        # acknowledgements of its last pushes came back, after its consumers finished.
        awaited = set(self.actors)
        pending = list(waits)
        while awaited:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            step = _POLL_S if remaining is None else min(_POLL_S, remaining)
            ready, pending = ray.wait(pending, num_returns=1, timeout=step)
            if self._stopping:
                raise _StoppedError
            self._raise_if_coordinator_failed()
            if not ready:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"graph {self.graph.name!r}: {len(awaited)} node(s) did not finish "
                        f"within {timeout_s} s")
                continue
            try:
                ray.get(ready[0])
            except Exception as exc:
                raise _RegionFailedError(self._failure_cause(exc)) from None
            awaited.discard(waits[ready[0]])
        outputs = gather_outputs(self.graph,
                                 lambda key: ray.get(self.actors[key].results.remote()))
        self._stop_checkpoints()
        return RunResult(outputs, *shard_stats(self.graph, self._reports()))

    def _raise_if_coordinator_failed(self) -> None:
        running = self._coordinating
        if running is None or not running.done() or running.cancelled():
            return
        error = running.exception()
        if error is not None:
            raise _RegionFailedError(
                f"graph {self.graph.name!r} failed: a checkpoint could not be completed "
                f"({failure_cause(error)})")

    def _failure_cause(self, first: BaseException) -> str:
        """The root cause once some node failed: a crashed actor, else a node's own failure."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        # Actors that died are the cause; the nodes that held after them only followed.
        crashed: list[tuple[str, BaseException]] = []
        failed: list[tuple[str, BaseException]] = []
        shards = [(node, key) for node in self.graph.nodes
                  for key in instance_keys(self.graph, node)]
        for node, key in shards:
            actor = self.actors[key]
            try:
                if ray.get(actor.is_finished.remote(), timeout=_PROBE_TIMEOUT_S):
                    ray.get(actor.wait_finished.remote(), timeout=_PROBE_TIMEOUT_S)
            except RayActorError as exc:
                crashed.append((node.name, exc))
            except GetTimeoutError:
                continue  # busy, so not what stopped the graph
            except Exception as exc:
                failed.append((node.name, exc))
        prefix = f"graph {self.graph.name!r} failed: "
        if crashed:
            return (f"{prefix}node(s) {[name for name, _ in crashed]} crashed: its actor died "
                    f"({failure_cause(crashed[0][1])})")
        # Else the first node that failed on its own, not one that held after it.
        own = [item for item in failed if not followed_a_failure(item[1])] or failed
        if not own:
            return prefix + failure_cause(first)
        return f"{prefix}node {own[0][0]!r} failed: {failure_cause(own[0][1])}"

    # -- stopping -------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop the supervisor and the checkpoints, then stop and kill every actor, sources
        first."""
        self._stopping = True
        if self._supervisor is not None:
            with contextlib.suppress(BaseException):
                concurrent.futures.wait([self._supervised] if self._supervised else [],
                                        timeout=30)
            self._supervisor.shutdown(wait=False)
            self._supervisor = None
        self._stop_checkpoints()
        if self._loop is not None:
            self._loop.close()
            self._loop = None
        self._stop_actors()

    def _stop_actors(self, *, drain: bool = True) -> None:
        import ray

        sources = set(self.nodes.sources)
        order = sorted(self.actors.items(), key=lambda item: item[0] not in sources)
        for _, actor in order:
            if drain:  # a dead actor is already stopped; killing it is all that is left
                with contextlib.suppress(Exception):
                    ray.get(actor.stop.remote(), timeout=10)
            ray.kill(actor)
        self.nodes.handles.clear()
        self.nodes.sources.clear()
