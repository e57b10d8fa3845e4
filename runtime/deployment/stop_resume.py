"""Stopping a graph with a final checkpoint, and resuming it from there (Flink's
stop-with-savepoint).

``streamdag stop ID`` takes one more checkpoint of the graph's regions, records it as the
graph's stop point (``<state dir>/stopped/<graph>.json``), and stops the graph. ``streamdag
resume ID``, or submitting a graph of that name again, creates its nodes from that checkpoint:
sources go on from their offsets, exactly-once sinks publish nothing twice. The stop point is
used once. A graph whose nodes other running graphs share cannot stop this way: they go on
reading, so its nodes could not resume where they stopped.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.checkpoints.store import Manifest
from runtime.dataplane.checkpointing import NodeSnapshot
from runtime.deployment.controller_state import ControllerState
from runtime.deployment.lifecycle import SubmissionRecord, SubmissionState
from runtime.deployment.node_registry import NodeRegistry, instance_key, with_since
from runtime.deployment.region_checkpoints import RegionCheckpoints
from runtime.deployment.state_files import load_graph, read_json, write_json_atomically
from streamdag.errors import StreamdagError
from streamdag.graph import Graph

if TYPE_CHECKING:
    from runtime.deployment.sharded_nodes import ShardedPlan

__all__ = ["StopAndResume", "StopPoint", "drop_stop_point", "load_stop_point",
           "resume_snapshots", "save_stop_point", "stop_points", "stop_refusal"]


@dataclass(frozen=True)
class StopPoint:
    """Where a stopped graph resumes: its final checkpoint in each of its regions."""

    submission: str
    graph: str
    #: ``(store region, checkpoint id, created_at)`` of each final checkpoint.
    checkpoints: tuple[tuple[str, int, float], ...]

    @classmethod
    def of(cls, record: SubmissionRecord, manifests: Iterable[Manifest]) -> StopPoint:
        """The stop point of ``record`` at ``manifests``."""
        return cls(record.id, record.graph, tuple(
            (m.region, m.checkpoint_id, m.created_at) for m in manifests))

    def describe(self) -> list[str]:
        """``region/checkpoint`` of each final checkpoint."""
        return [f"{region}/{checkpoint_id}" for region, checkpoint_id, _ in self.checkpoints]


def _path(state_dir: Path, graph: str) -> Path:
    return state_dir / "stopped" / f"{re.sub(r'[^A-Za-z0-9._-]+', '-', graph)}.json"


def save_stop_point(state_dir: Path, point: StopPoint) -> None:
    """Record ``point`` as where its graph resumes."""
    write_json_atomically(_path(state_dir, point.graph), {
        "submission": point.submission, "graph": point.graph,
        "checkpoints": [list(c) for c in point.checkpoints]})


def load_stop_point(state_dir: Path, graph: str) -> StopPoint | None:
    """Where graph ``graph`` resumes; None when it was not stopped with a checkpoint."""
    return _load_file(_path(state_dir, graph))


def _load_file(path: Path) -> StopPoint | None:
    document: Any = read_json(path)
    if document is None:
        return None
    return StopPoint(str(document["submission"]), str(document["graph"]), tuple(
        (str(region), int(cid), float(at)) for region, cid, at in document["checkpoints"]))


def stop_points(state_dir: Path) -> list[StopPoint]:
    """Every stop point of the deployment whose state is in ``state_dir``, by graph name."""
    points = (_load_file(path) for path in sorted((state_dir / "stopped").glob("*.json")))
    return [point for point in points if point is not None]


def drop_stop_point(state_dir: Path, graph: str) -> None:
    """The stop point of ``graph`` was used: forget it."""
    _path(state_dir, graph).unlink(missing_ok=True)


def stop_refusal(registry: NodeRegistry, records: Mapping[str, SubmissionRecord],
                 record: SubmissionRecord, checkpointing: bool) -> str | None:
    """Why ``record`` cannot be stopped with a final checkpoint; None if it can."""
    if not checkpointing:
        return (f"submission {record.id} cannot stop with a checkpoint: the deployment does not "
                "checkpoint; set [checkpoint] enabled = true, or remove it (`streamdag rm`)")
    if record.terminal:
        return f"submission {record.id} is {record.state} already; there is nothing to stop"
    regions = {registry.entries[n.key].region for n in record.nodes if n.key in registry.entries}
    sharing = sorted({graph for entry in registry.entries.values() if entry.region in regions
                      for graph in entry.graphs
                      if graph != record.id and graph in records and not records[graph].terminal})
    if sharing:
        return (f"submission {record.id} shares nodes with running submission(s) {sharing}: "
                "they go on reading, so it could not resume where it stopped; remove it "
                "(`streamdag rm`) instead")
    return None


def resume_snapshots(
    checkpoints: RegionCheckpoints, point: StopPoint, keys: Iterable[str]
) -> tuple[dict[str, NodeSnapshot], dict[str, float]]:
    """The snapshots of ``keys`` at ``point``, and when each was written (a recovery before the
    resumed graph's first checkpoint may use them again)."""
    snapshots: dict[str, NodeSnapshot] = {}
    since: dict[str, float] = {}
    wanted = set(keys)
    for region, checkpoint_id, created_at in point.checkpoints:
        found = checkpoints.resumed_snapshots(region, checkpoint_id, wanted - set(snapshots))
        snapshots.update(found)
        since.update(dict.fromkeys(found, created_at))
    return snapshots, since


class StopAndResume(ControllerState):
    """The controller's stop, resume, and what a restarted controller reads back (a mixin of
    ``Controller``: it uses the controller's registry, records and lock)."""

    if TYPE_CHECKING:
        async def _move(self, submission: str, target: SubmissionState,
                        cause: str | None = None) -> None: ...

        async def _release(self, submission: str) -> dict[str, asyncio.Task[None]]: ...

        async def submit_graph(self, graph: Graph) -> dict[str, Any]: ...

        def _plan(self, graph: Graph, keys: Mapping[str, str]) -> ShardedPlan: ...

    def _resume_point(self, graph: Graph, new_keys: list[str]
                      ) -> tuple[StopPoint | None, dict[str, NodeSnapshot]]:
        """A graph stopped with a checkpoint resumes: its new nodes' snapshots there."""
        point = (load_stop_point(self.state_dir, graph.name)
                 if self._checkpoints is not None else None)
        if point is None or self._checkpoints is None:
            return None, {}
        snapshots, since = resume_snapshots(self._checkpoints, point, new_keys)
        self._registry = with_since(self._registry, since)
        return point, snapshots

    async def stop(self, submission_id: str) -> dict[str, Any]:
        """Take a final checkpoint of a submission's regions, then stop it and release its
        nodes; ``resume`` (or submitting the same graph again) goes on from that checkpoint."""
        async with self._lock:
            await self._ensure_started()
            record = self._record(submission_id)
            refusal = stop_refusal(self._registry, self._records, record,
                                   self._checkpoints is not None)
            if refusal is not None or self._checkpoints is None:
                raise StreamdagError(refusal)
            regions = sorted({self._registry.entries[n.key].region for n in record.nodes})
            try:
                point = StopPoint.of(record, [
                    await self._checkpoints.final_checkpoint(region, self._registry)
                    for region in regions])
            except StreamdagError:  # it runs on: so do its checkpoints
                await self._checkpoints.reconcile(self._registry)
                raise
            save_stop_point(self.state_dir, point)
            await self._move(submission_id, SubmissionState.STOPPED, f"stopped at checkpoint(s) "
                             f"{point.describe()}; `streamdag resume {submission_id}` goes on")
            retiring = await self._release(submission_id)
        await asyncio.gather(*retiring.values())
        return self._records[submission_id].describe(self.deployment)

    async def resume(self, submission_id: str) -> dict[str, Any]:
        """Submit a stopped submission's graph again, from its final checkpoint."""
        record = self._record(submission_id)
        point = load_stop_point(self.state_dir, record.graph)
        graph = load_graph(self.state_dir / "graphs", submission_id)
        if point is None or point.submission != submission_id or graph is None:
            raise StreamdagError(
                f"submission {submission_id} was not stopped with a checkpoint (`streamdag "
                "stop ID` does that), or has resumed already; submit its graph to start anew")
        return await self.submit_graph(graph)

    def _remember_graphs(self) -> None:
        """A restarted controller reads back the graphs of the submissions holding nodes; the
        regions' checkpoints learn what the registry and the stop points need kept."""
        if self._checkpoints is None:
            return
        self._checkpoints.sweep_with(lambda: (self._registry, [
            (region, checkpoint_id) for point in stop_points(self.state_dir)
            for region, checkpoint_id, _ in point.checkpoints]))
        for record in self._records.values():
            graph = load_graph(self.state_dir / "graphs", record.id) if record.holds_nodes \
                else None
            if graph is not None:
                keys = {node.node_id: instance_key(node.node_id, record.id,
                                                   dedup=self.options.dedup)
                        for node in graph.nodes}
                hosts = self._plan(graph, keys).hosts  # by shard key
                self._checkpoints.remember(self._registry, graph, {k: k for k in hosts}, hosts)
