"""What the controller tells: submissions, nodes, checkpoints, metrics and interactive calls.

A mixin of ``Controller`` (it reads the controller's registry, records and latest figures);
the gateway, the CLI and the Prometheus collector call these.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from runtime.dataplane.stats import LatencyHistogram
from runtime.deployment.controller_state import ControllerState
from runtime.deployment.lifecycle import SubmissionState
from runtime.deployment.metrics import MetricsSnapshot, NodeMetrics
from runtime.deployment.sharded_nodes import logical_stats
from streamdag.errors import StreamdagError

if TYPE_CHECKING:
    from runtime.deployment.node_actors import NodeProbe
    from runtime.deployment.node_registry import NodeEntry

__all__ = ["Reports", "UnknownNodeError"]


class UnknownNodeError(StreamdagError):
    """No registered node has the id asked for."""


class Reports(ControllerState):
    """The controller's reading side (a mixin of ``Controller``)."""

    if TYPE_CHECKING:
        async def start(self) -> None: ...

        async def _probe_all(self, keys: Any) -> dict[str, NodeProbe]: ...

    def list_submissions(self) -> list[dict[str, Any]]:
        """Every submission, oldest first, in the shape ``submit_graph`` returns."""
        records = sorted(self._records.values(), key=lambda r: (r.submitted_at, r.id))
        return [record.describe(self.deployment, actor_names=self._registry.actor_names())
                for record in records]

    def status(self, submission_id: str) -> dict[str, Any]:
        """A submission with, per node: sharing, liveness and the latest NodeStats figures.

        Figures are those of the latest health check (or of the submission itself).
        """
        record = self._record(submission_id)
        described = record.describe(self.deployment, self._registry, self._stats,
                                    retiring=self._retiring.keys())
        first_shards = {n.name: n.key for n in record.nodes if n.shard == 0}
        for node in described["nodes"]:
            self._add_tag_query(node, first_shards[node["name"]])
        described["warm_pool"] = self._pool.figures().to_dict()
        return described

    def checkpoints(self, submission_id: str) -> list[dict[str, Any]]:
        """The checkpoints and recoveries of the regions a submission's nodes are in (each
        region's nodes by name, a sharded one once)."""
        record = self._record(submission_id)
        if self._checkpoints is None:
            return []
        described = self._checkpoints.describe(self._registry, (n.key for n in record.nodes))
        for region in described:  # a sharded node is one, whose shards all take part
            region["nodes"] = sorted({e.logical_key: e.name for e in self._registry.entries
                                      .values() if e.region == region["region"]}.values())
        return described

    def nodes(self) -> list[dict[str, Any]]:
        """Every registered node, a sharded one once: actor(s), shards, refcount, graphs,
        region, liveness (and, for a tag query, what it follows and skips)."""
        described = self._registry.describe()
        keys = {entry.actor_name: key for key, entry in self._registry.entries.items()}
        for node in described:
            self._add_tag_query(node, keys[node["actor"]])
        return described

    def node(self, node_id: str) -> dict[str, Any]:
        """One registered node by id (as ``nodes`` shows it), with its latest figures."""
        found = [node for node in self.nodes() if node["node_id"] == node_id]
        if not found:
            raise UnknownNodeError(
                f"deployment {self.deployment!r} runs no node {node_id!r}; nodes() lists the "
                f"ids of the {len(self._registry.entries)} running")
        keys = {entry.actor_name: key for key, entry in self._registry.entries.items()}
        shards = [keys[actor] for actor in found[0]["actors"]]
        stats = (logical_stats(node_id, found[0]["name"], shards, self._stats)
                 if any(key in self._stats for key in shards) else None)
        return {**found[0], "stats": dataclasses.asdict(stats) if stats else None}

    def _add_tag_query(self, node: dict[str, Any], key: str) -> None:
        query = self._tag_queries.describe(key)
        if query is not None:
            node["tag_query"] = query

    async def metrics_snapshot(self) -> MetricsSnapshot:
        """Fresh per-node figures plus the controller's own counters."""
        if not self._started:
            await self.start()
        registry, regions = self._registry, self._checkpoints
        await self._probe_all(registry.live_keys())
        by_state = {str(state): 0 for state in SubmissionState}
        for record in self._records.values():
            by_state[str(record.state)] += 1
        logical: dict[str, list[NodeEntry]] = {}  # a sharded node is one, its figures summed
        for entry in sorted(registry.entries.values(), key=lambda e: (e.logical_key, e.shard)):
            logical.setdefault(entry.logical_key, []).append(entry)
        nodes = tuple(
            NodeMetrics(e.node_id, e.name, e.operator, e.role, tuple(sorted(e.graphs)),
                        e.region, e.actor_name, all(s.alive for s in shards),
                        logical_stats(e.node_id, e.name, [s.key for s in shards], self._stats))
            for e, shards in ((shards[0], shards) for shards in logical.values())
        )
        return MetricsSnapshot(
            nodes=nodes, submissions_by_state=by_state,
            diff_duration=dataclasses.replace(self._diff_duration,
                                              counts=list(self._diff_duration.counts)),
            nodes_new_total=self._nodes_new_total, nodes_reused_total=self._nodes_reused_total,
            reuse_ratio=self._last_reuse_ratio, actor_crashes_total=self._crashes,
            actors_running=len(registry.live_keys()),
            regions=regions.metrics() if regions is not None else (),
            restore_duration=copy.deepcopy(regions.figures.restore_duration)
            if regions is not None else LatencyHistogram(),
            warm_pool_idle=len(self._pool.idle), warm_pool_starting=len(self._pool.starting),
            warm_pool_bound_total=self._pool.bound_total,
        )

    async def infer(self, node: str, features: Mapping[str, list[float]],
                    timeout_s: float = 10.0) -> dict[str, Any]:
        """One interactive request to inference node ``node`` (name or node id), run ahead of
        its streams; ``{"node", "node_id", "outputs": {output: values}}``."""
        from runtime.inference.requests import (
            UnknownInferenceNodeError,
            call_interactive,
            find_inference_node,
        )

        entry = find_inference_node(self._registry, node)
        handle = self._actors.handles.get(entry.key)
        if handle is None:
            raise UnknownInferenceNodeError(f"inference node {node!r} has no running actor")
        outputs = await call_interactive(handle, features, timeout_s)
        return {"node": entry.name, "node_id": entry.node_id, "outputs": outputs}

