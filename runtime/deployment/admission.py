"""What a deployment admits: a submission's budgets and sink topics, checked before any actor.

The controller calls ``admit_submission`` once it has planned a submission's diff, before it
maps or creates anything. Beside the budgets of ``runtime.planning.budgets`` (nodes per graph,
actors, node-cache memory), a topic may have one writer: a sink of another running graph
writing the same topic is refused unless both declare the topic ``shared``. A sink that two
graphs define identically is one node and one actor, so one writer.

For that the deployment remembers, per submission holding nodes, the estimated bytes of its
nodes and the topics its sinks write: ``admission.json`` in the state directory, written
atomically, so a restarted controller still knows them. Submissions that no longer hold nodes
(removed, failed, rolled back) are dropped from it at the next admission.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.deployment.lifecycle import SubmissionRecord
from runtime.deployment.node_registry import NodeRegistry, RegistryFileError
from runtime.deployment.state_files import read_json, write_json_atomically
from runtime.planning.budgets import (
    check_actors,
    check_graph_size,
    check_memory,
    estimate_graph,
)
from runtime.planning.planner import GraphDiff
from streamdag.config import LimitSettings
from streamdag.errors import SharedTopicError
from streamdag.graph import Graph
from streamdag.operator_registry import lookup

__all__ = [
    "ADMISSION_FILE",
    "ADMISSION_FORMAT",
    "AdmittedSubmission",
    "SinkClaim",
    "admit_submission",
    "check_topic_claims",
    "load_admitted",
    "running_bytes",
    "save_admitted",
    "sink_claims",
]

#: File in the deployment's state directory holding the admitted submissions.
ADMISSION_FILE = "admission.json"
#: Version of that file's document; another one is refused when loading.
ADMISSION_FORMAT = 1


@dataclass(frozen=True)
class SinkClaim:
    """A sink of an admitted submission and the topic it writes."""

    topic: str
    sink: str
    node_id: str
    graph: str
    submission: str
    shared: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"topic": self.topic, "sink": self.sink, "node_id": self.node_id,
                "graph": self.graph, "submission": self.submission, "shared": self.shared}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SinkClaim:
        """The claim ``to_dict`` wrote."""
        return cls(str(data["topic"]), str(data["sink"]), str(data["node_id"]),
                   str(data["graph"]), str(data["submission"]), bool(data["shared"]))


@dataclass(frozen=True)
class AdmittedSubmission:
    """What the deployment remembers of an admitted submission."""

    submission: str
    graph: str
    #: Estimated node-cache bytes of each of its nodes, by registry key.
    node_bytes: Mapping[str, int]
    sinks: tuple[SinkClaim, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"submission": self.submission, "graph": self.graph,
                "node_bytes": dict(sorted(self.node_bytes.items())),
                "sinks": [claim.to_dict() for claim in self.sinks]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdmittedSubmission:
        """The submission ``to_dict`` wrote."""
        return cls(str(data["submission"]), str(data["graph"]),
                   {str(k): int(v) for k, v in data["node_bytes"].items()},
                   tuple(SinkClaim.from_dict(c) for c in data["sinks"]))


def sink_claims(graph: Graph, submission: str) -> tuple[SinkClaim, ...]:
    """The topics ``graph``'s sinks write, as claims of ``submission``."""
    return tuple(
        SinkClaim(str(node.params["topic"]), node.name, node.node_id, graph.name, submission,
                  bool(node.params.get("shared", False)))
        for node in graph.nodes
        if lookup(node.operator).role == "sink" and "topic" in node.params
    )


def check_topic_claims(graph: Graph, claims: Iterable[SinkClaim]) -> None:
    """SharedTopicError when a sink of ``graph`` writes a topic another running sink writes.

    Allowed: the very same sink (same node id: one actor), or every writer declaring the topic
    ``shared``.
    """
    by_topic: dict[str, list[SinkClaim]] = {}
    for claim in claims:
        by_topic.setdefault(claim.topic, []).append(claim)
    for mine in sink_claims(graph, ""):
        for other in by_topic.get(mine.topic, ()):
            if other.node_id == mine.node_id or (other.shared and mine.shared):
                continue
            unshared = [repr(c.sink) for c in (mine, other) if not c.shared]
            raise SharedTopicError(
                f"graph {graph.name!r}: sink {mine.sink!r} writes topic {mine.topic!r}, which "
                f"sink {other.sink!r} of graph {other.graph!r} (submission {other.submission}) "
                "already writes; two graphs writing one topic interleave their records. Write "
                f"another topic, remove submission {other.submission} first, or, if both "
                f"should write it, declare it shared on {' and '.join(unshared)} "
                "(.to_topic(..., shared=True); shared = true in a spec sink's params)"
            )


def running_bytes(admitted: Iterable[AdmittedSubmission], live_keys: Collection[str]) -> int:
    """Estimated node-cache bytes of the live nodes, each counted once however many share it."""
    seen: dict[str, int] = {}
    for entry in admitted:
        for key, size in entry.node_bytes.items():
            if key in live_keys:
                seen.setdefault(key, size)
    return sum(seen.values())


def load_admitted(path: str | Path) -> tuple[AdmittedSubmission, ...]:
    """The admitted submissions saved at ``path`` (none when there is no file)."""
    document = read_json(path)
    if document is None:
        return ()
    if not isinstance(document, Mapping) or document.get("format") != ADMISSION_FORMAT:
        found = document.get("format") if isinstance(document, Mapping) else None
        raise RegistryFileError(
            f"{path} has format {found!r}, but this streamdag reads format {ADMISSION_FORMAT}; "
            "move it away (submissions are then re-checked against their registry only)"
        )
    return tuple(AdmittedSubmission.from_dict(entry) for entry in document["submissions"])


def save_admitted(path: str | Path, admitted: Iterable[AdmittedSubmission]) -> None:
    """Persist ``admitted`` at ``path`` atomically."""
    write_json_atomically(path, {"format": ADMISSION_FORMAT,
                                 "submissions": [entry.to_dict() for entry in admitted]})


def admit_submission(
    state_dir: str | Path,
    limits: LimitSettings,
    registry: NodeRegistry,
    records: Iterable[SubmissionRecord],
    submission: str,
    graph: Graph,
    keys: Mapping[str, str],
    diff: GraphDiff,
) -> None:
    """Refuse ``submission`` of ``graph`` over a limit or onto another graph's topic; else note it.

    ``keys`` maps each node id to its registry key; ``diff`` is the submission's diff against
    ``registry``'s live nodes. Raises a LimitError or SharedTopicError before anything changes.
    """
    path = Path(state_dir) / ADMISSION_FILE
    # Step 1: what is remembered of the submissions that still hold nodes.
    holders = {record.id for record in records if record.holds_nodes}
    admitted = [entry for entry in load_admitted(path) if entry.submission in holders]
    # Step 2: the graph's own size, then what it adds to the running deployment.
    check_graph_size(graph, limits)
    live = registry.live_keys()  # actors: a sharded node has one per shard
    check_actors(graph, sum(graph.parallelism_of(n) for n in graph.nodes
                            if n.node_id in set(diff.new)), len(live), limits)
    new = estimate_graph(graph, limits.expected_keys, node_ids=set(diff.new))
    check_memory(new, limits, running_bytes(admitted, {
        entry.logical_key for entry in registry.entries.values() if entry.alive}))
    # Step 3: one writer per topic, unless every writer shares it.
    check_topic_claims(graph, (claim for entry in admitted for claim in entry.sinks))
    # Step 4: remember this submission.
    every = estimate_graph(graph, limits.expected_keys)
    admitted.append(AdmittedSubmission(
        submission, graph.name, {keys[n.node_id]: n.bytes for n in every.nodes},
        sink_claims(graph, submission),
    ))
    save_admitted(path, admitted)
