"""Submission lifecycle: states, legal transitions, persisted records, and CloudEvents.

A submission moves ``submitted -> processing -> mapped -> executing -> completed``, and may end
``failed`` or ``stopped`` from any state before a terminal one. Each transition is recorded in
the submission's history (persisted in the state directory) and emitted as a CloudEvents 1.0
record to a Kafka topic, keyed by submission id, and to the log.

>>> record = SubmissionRecord.new("momentum-1a2b3c4d", "momentum", now=0.0)
>>> record = record.advance(SubmissionState.PROCESSING, now=1.0)
>>> record.state, [str(t.to_state) for t in record.history]
(<SubmissionState.PROCESSING: 'processing'>, ['submitted', 'processing'])
>>> record.advance(SubmissionState.COMPLETED)
Traceback (most recent call last):
...
runtime.deployment.lifecycle.IllegalTransitionError: submission 'momentum-1a2b3c4d' ...
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from runtime.dataplane.failures import failure_cause
from runtime.dataplane.stats import NodeStats
from runtime.deployment.node_registry import NodeRegistry, RegistryFileError, node_actor_name
from runtime.deployment.state_files import read_json, write_json_atomically
from streamdag.errors import StreamdagError

if TYPE_CHECKING:
    from runtime.planning.planner import GraphDiff
    from streamdag.graph import Node

__all__ = [
    "CLOUDEVENT_TYPE_PREFIX",
    "LEGAL_TRANSITIONS",
    "SUBMISSIONS_FORMAT",
    "TERMINAL_STATES",
    "DiffSummary",
    "IllegalTransitionError",
    "KafkaLifecycleEmitter",
    "LifecycleEmitter",
    "SubmissionNode",
    "SubmissionRecord",
    "SubmissionState",
    "Transition",
    "UnknownSubmissionError",
    "check_transition",
    "cloud_event",
    "cloud_event_of",
    "failure_cause",
    "load_submissions",
    "log_event",
    "log_to_file_inside_ray_actor",
    "new_submission_id",
    "save_submissions",
]

#: CloudEvents ``type`` of a transition is this prefix plus the state entered.
CLOUDEVENT_TYPE_PREFIX = "io.streamdag.submission."
#: Version of the submissions JSON document.
SUBMISSIONS_FORMAT = 1

_log = logging.getLogger("streamdag.lifecycle")


class SubmissionState(StrEnum):
    """Where a submission is in its life."""

    SUBMITTED = "submitted"
    PROCESSING = "processing"
    MAPPED = "mapped"
    EXECUTING = "executing"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


_S = SubmissionState
#: The states each state may move to; terminal states move nowhere.
LEGAL_TRANSITIONS: Mapping[SubmissionState, frozenset[SubmissionState]] = MappingProxyType({
    _S.SUBMITTED: frozenset({_S.PROCESSING, _S.FAILED, _S.STOPPED}),
    _S.PROCESSING: frozenset({_S.MAPPED, _S.FAILED, _S.STOPPED}),
    _S.MAPPED: frozenset({_S.EXECUTING, _S.FAILED, _S.STOPPED}),
    _S.EXECUTING: frozenset({_S.COMPLETED, _S.FAILED, _S.STOPPED}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset(),
    _S.STOPPED: frozenset(),
})
#: States a submission never leaves.
TERMINAL_STATES = frozenset(state for state, targets in LEGAL_TRANSITIONS.items() if not targets)


class IllegalTransitionError(StreamdagError):
    """A submission was asked to move to a state its current state cannot reach."""


class UnknownSubmissionError(StreamdagError):
    """No submission of this deployment has the given id."""


def check_transition(submission: str, current: SubmissionState, target: SubmissionState) -> None:
    """Raise IllegalTransitionError unless ``current -> target`` is in LEGAL_TRANSITIONS.

    >>> check_transition("s1", SubmissionState.EXECUTING, SubmissionState.STOPPED)
    """
    if target not in LEGAL_TRANSITIONS[current]:
        allowed = sorted(str(s) for s in LEGAL_TRANSITIONS[current]) or "none (terminal)"
        raise IllegalTransitionError(
            f"submission {submission!r} cannot move from {current} to {target}; from {current} "
            f"it may move to: {allowed}"
        )


@dataclass(frozen=True)
class Transition:
    """One step of a submission's history."""

    from_state: SubmissionState | None
    to_state: SubmissionState
    cause: str | None
    at: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"from": self.from_state and str(self.from_state), "to": str(self.to_state),
                "cause": self.cause, "at": self.at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transition:
        """The transition ``to_dict`` wrote."""
        origin = data.get("from")
        return cls(None if origin is None else SubmissionState(origin),
                   SubmissionState(data["to"]), data.get("cause"), float(data["at"]))


@dataclass(frozen=True)
class SubmissionNode:
    """A node as one submission sees it: its name in that graph and its registry key."""

    name: str
    key: str
    node_id: str
    operator: str
    role: str
    #: Whether the node is an output of the graph (finishing it finishes the graph).
    leaf: bool
    #: A sharded node is one of these per shard (``sharded_nodes``): shard ``shard`` of ``shards``.
    shard: int = 0
    shards: int = 1

    @classmethod
    def of(cls, node: Node, key: str, *, leaf: bool, shard: int = 0,
           shards: int = 1) -> SubmissionNode:
        """The submission's view of (shard ``shard`` of) graph node ``node``, under ``key``."""
        return cls(node.name, key, node.node_id, node.operator, node.role, leaf, shard, shards)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return {"name": self.name, "key": self.key, "node_id": self.node_id,
                "operator": self.operator, "role": self.role, "leaf": self.leaf,
                "shard": self.shard, "shards": self.shards}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubmissionNode:
        """The node ``to_dict`` wrote."""
        return cls(str(data["name"]), str(data["key"]), str(data["node_id"]),
                   str(data["operator"]), str(data["role"]), bool(data["leaf"]),
                   int(data.get("shard", 0)), int(data.get("shards", 1)))


@dataclass(frozen=True)
class DiffSummary:
    """What a submission's diff found, by node name: new nodes (in creation order) and reused."""

    new: tuple[str, ...] = ()
    reused: tuple[str, ...] = ()
    reuse_ratio: float = 0.0
    creation_order: tuple[tuple[str, ...], ...] = ()

    @classmethod
    def of(cls, diff: GraphDiff, names: Mapping[str, str]) -> DiffSummary:
        """The planner's ``diff`` (node ids) told with the node ``names`` of the graph."""
        return cls(tuple(names[n] for n in diff.new), tuple(names[n] for n in diff.reused),
                   diff.reuse_ratio,
                   tuple(tuple(names[n] for n in step) for step in diff.creation_order))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data, in the shape the controller's API returns."""
        return {"new": list(self.new), "reused": list(self.reused),
                "reuse_ratio": self.reuse_ratio,
                "creation_order": [list(generation) for generation in self.creation_order]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiffSummary:
        """The summary ``to_dict`` wrote."""
        return cls(tuple(data["new"]), tuple(data["reused"]), float(data["reuse_ratio"]),
                   tuple(tuple(g) for g in data["creation_order"]))


@dataclass(frozen=True)
class SubmissionRecord:
    """Everything the controller keeps about one submission; immutable, persisted as JSON."""

    id: str
    graph: str
    state: SubmissionState
    submitted_at: float
    cause: str | None = None
    nodes: tuple[SubmissionNode, ...] = ()
    diff: DiffSummary = field(default_factory=DiffSummary)
    history: tuple[Transition, ...] = ()
    #: Whether the submission still holds references on its nodes in the registry.
    holds_nodes: bool = False

    @classmethod
    def new(cls, submission: str, graph: str, *, now: float | None = None) -> SubmissionRecord:
        """A record that has just entered ``submitted``."""
        at = time.time() if now is None else now
        entered = Transition(None, SubmissionState.SUBMITTED, None, at)
        return cls(submission, graph, SubmissionState.SUBMITTED, at, history=(entered,))

    @property
    def terminal(self) -> bool:
        """Whether the submission has reached a state it never leaves."""
        return self.state in TERMINAL_STATES

    def advance(
        self, target: SubmissionState, cause: str | None = None, *, now: float | None = None
    ) -> SubmissionRecord:
        """The record after moving to ``target``; raises IllegalTransitionError if not allowed."""
        check_transition(self.id, self.state, target)
        step = Transition(self.state, target, cause, time.time() if now is None else now)
        return replace(self, state=target, cause=cause if cause is not None else self.cause,
                       history=(*self.history, step))

    def describe(
        self,
        deployment: str,
        registry: NodeRegistry | None = None,
        stats: Mapping[str, NodeStats] | None = None,
        *,
        retiring: Collection[str] = (),
        actor_names: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """What the controller's API returns for this submission.

        With the deployment's ``registry`` and latest ``stats`` (by registry key), each node
        also tells its region, the graphs sharing it, whether its actor is alive (a retiring
        one is not), and its NodeStats figures. Actor names come from ``actor_names`` or the
        registry (a node bound to a pool actor has its name), else from the node's key.
        """
        names = dict(actor_names if actor_names is not None else
                     registry.actor_names() if registry is not None else {})

        def actor(key: str) -> str:
            return names.get(key) or node_actor_name(deployment, key)

        from runtime.deployment.sharded_nodes import logical_stats

        logical: dict[str, list[SubmissionNode]] = {}  # a sharded node is one, of N shards
        for shard in self.nodes:
            logical.setdefault(shard.name, []).append(shard)
        nodes = []
        for node, shards in ((shards[0], shards) for shards in logical.values()):
            keys = [shard.key for shard in shards]
            described: dict[str, Any] = {
                "name": node.name, "node_id": node.node_id, "operator": node.operator,
                "role": node.role, "actor": actor(node.key),
                "shards": node.shards, "actors": [actor(k) for k in keys]}
            if registry is not None:
                entry = registry.entries.get(node.key)
                described.update(
                    region=entry.region if entry else None,
                    shared_by=sorted(entry.graphs) if entry else [],
                    alive=all(key in registry.entries and registry.entries[key].alive
                              and key not in retiring for key in keys),
                    stats=asdict(logical_stats(node.node_id, node.name, keys, stats or {})))
            nodes.append(described)
        return {
            "id": self.id, "graph": self.graph, "state": str(self.state), "cause": self.cause,
            "submitted_at": self.submitted_at, "diff": self.diff.to_dict(), "nodes": nodes,
            "history": [step.to_dict() for step in self.history],
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data, persisted and returned by the controller's API."""
        return {
            "id": self.id,
            "graph": self.graph,
            "state": str(self.state),
            "submitted_at": self.submitted_at,
            "cause": self.cause,
            "nodes": [node.to_dict() for node in self.nodes],
            "diff": self.diff.to_dict(),
            "history": [step.to_dict() for step in self.history],
            "holds_nodes": self.holds_nodes,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SubmissionRecord:
        """The record ``to_dict`` wrote."""
        return cls(
            id=str(data["id"]),
            graph=str(data["graph"]),
            state=SubmissionState(data["state"]),
            submitted_at=float(data["submitted_at"]),
            cause=data.get("cause"),
            nodes=tuple(SubmissionNode.from_dict(n) for n in data["nodes"]),
            diff=DiffSummary.from_dict(data["diff"]),
            history=tuple(Transition.from_dict(t) for t in data["history"]),
            holds_nodes=bool(data["holds_nodes"]),
        )


def new_submission_id(graph_name: str) -> str:
    """A fresh submission id: the graph's name (URL-safe) and 8 random hex digits.

    >>> new_submission_id("mean reversion/v2")[:-8]
    'mean-reversion-v2-'
    """
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", graph_name).strip("-")[:48] or "graph"
    return f"{stem}-{uuid.uuid4().hex[:8]}"


def cloud_event(
    deployment: str,
    record: SubmissionRecord,
    step: Transition,
    *,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The CloudEvents 1.0 record (structured JSON) of one transition of ``record``.

    >>> record = SubmissionRecord.new("s1", "g", now=0.0)
    >>> event = cloud_event("live", record, record.history[0], event_id="e1")
    >>> event["type"], event["source"], event["time"], event["data"]["from"]
    ('io.streamdag.submission.submitted', 'streamdag/live', '1970-01-01T00:00:00.000000Z', None)
    """
    return cloud_event_of(deployment, f"{CLOUDEVENT_TYPE_PREFIX}{step.to_state}", record.id,
                          step.at, {"submission": record.id, "graph": record.graph,
                                    "from": step.from_state and str(step.from_state),
                                    "to": str(step.to_state), "cause": step.cause},
                          event_id=event_id)


def cloud_event_of(deployment: str, event_type: str, subject: str, at: float,
                   data: Mapping[str, Any], *, event_id: str | None = None) -> dict[str, Any]:
    """A CloudEvents 1.0 record (structured JSON) of ``deployment`` about ``subject``.

    >>> cloud_event_of("live", "io.streamdag.checkpoint.completed", "region-a", 0.0,
    ...                {"checkpoint": 7}, event_id="e1")["time"]
    '1970-01-01T00:00:00.000000Z'
    """
    stamp = datetime.fromtimestamp(at, UTC).isoformat(timespec="microseconds")
    return {"specversion": "1.0", "id": event_id or str(uuid.uuid4()),
            "source": f"streamdag/{deployment}", "type": event_type, "subject": subject,
            "time": stamp.replace("+00:00", "Z"), "datacontenttype": "application/json",
            "data": dict(data)}


class LifecycleEmitter(Protocol):
    """Where lifecycle CloudEvents go besides the log."""

    async def emit(self, key: str, event: Mapping[str, Any]) -> None:
        """Publish one event, keyed by submission id."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class KafkaLifecycleEmitter:
    """Publishes lifecycle events to a Kafka topic (created if missing), keyed by submission id.

    Events travel in CloudEvents' structured mode (header ``content-type:
    application/cloudevents+json``). A broker that cannot be reached never blocks the
    controller for long: the failure is logged and counted, and the next event tries again.
    """

    def __init__(self, bootstrap_servers: str, topic: str, *, partitions: int = 1,
                 timeout_s: float = 10.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.timeout_s = timeout_s
        self.published = 0
        self.failures = 0
        self._producer: Any = None

    async def emit(self, key: str, event: Mapping[str, Any]) -> None:
        """Publish ``event``; log and count a failure instead of raising it."""
        try:
            await asyncio.wait_for(self._send(key, event), self.timeout_s)
            self.published += 1
        except Exception as exc:  # a lifecycle event must never fail the submission
            self.failures += 1
            _log.warning("lifecycle event for %s not published to %s: %r", key, self.topic, exc)
            await self.close()

    async def _send(self, key: str, event: Mapping[str, Any]) -> None:
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            from connectors.topics import ensure_topics

            await ensure_topics(self.bootstrap_servers, {self.topic: self.partitions},
                                strict=False)
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all")
            await producer.start()
            self._producer = producer
        await self._producer.send_and_wait(
            self.topic, json.dumps(event).encode(), key=key.encode(),
            headers=[("content-type", b"application/cloudevents+json")],
        )

    async def close(self) -> None:
        """Stop the producer, if one was started."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await producer.stop()
            except Exception as exc:  # closing a broken producer is best effort
                _log.debug("lifecycle producer did not stop cleanly: %r", exc)


def log_event(event: Mapping[str, Any]) -> None:
    """Write one lifecycle event to the ``streamdag.lifecycle`` log as a JSON line."""
    _log.info("%s", json.dumps(event, sort_keys=True))


def log_to_file_inside_ray_actor(path: str | os.PathLike[str], *logger_names: str) -> None:
    """Inside a Ray actor, append INFO logs of ``logger_names`` to the file ``path``.

    The deployment's log lives in its state directory rather than on Ray's stderr, which Ray
    forwards to every driver. Outside an actor nothing changes: the application configures
    its own logging.
    """
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in logger_names:
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def save_submissions(path: str | os.PathLike[str], records: Sequence[SubmissionRecord]) -> None:
    """Persist every submission record at ``path`` atomically."""
    write_json_atomically(path, {"format": SUBMISSIONS_FORMAT,
                                 "submissions": [record.to_dict() for record in records]})


def load_submissions(path: str | os.PathLike[str]) -> list[SubmissionRecord]:
    """The submission records persisted at ``path`` (none when there is no file)."""
    document = read_json(path)
    if document is None:
        return []
    if document.get("format") != SUBMISSIONS_FORMAT:
        raise RegistryFileError(
            f"{path} has format {document.get('format')!r}, expected {SUBMISSIONS_FORMAT}; it "
            "was written by another streamdag version: move the state directory away"
        )
    return [SubmissionRecord.from_dict(item) for item in document["submissions"]]
