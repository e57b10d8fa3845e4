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

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.checkpoints.store import Manifest
from runtime.dataplane.checkpointing import NodeSnapshot
from runtime.deployment.lifecycle import SubmissionRecord
from runtime.deployment.node_registry import NodeRegistry
from runtime.deployment.region_checkpoints import RegionCheckpoints
from runtime.deployment.state_files import read_json, write_json_atomically

__all__ = ["StopPoint", "drop_stop_point", "load_stop_point", "resume_snapshots",
           "save_stop_point", "stop_refusal"]


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
    document: Any = read_json(_path(state_dir, graph))
    if document is None:
        return None
    return StopPoint(str(document["submission"]), str(document["graph"]), tuple(
        (str(region), int(cid), float(at)) for region, cid, at in document["checkpoints"]))


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
