"""What a deployment does when node actors crash: nothing is dropped, the region stops whole.

A producer that dropped a crashed subscriber and went on would lose everything it read from
then on, so a crash stops the crashed node's region (the connected component of the graphs
that share nodes with its graph): every submission with a node in it ends FAILED with the
cause, and every live node of it holds (stops reading and sending; a source gives back to
Kafka what its subscribers did not take) until the failed submissions are removed, or a later
recovery restores the region. Held and dead nodes are not reused by new submissions.

The decisions are pure functions over the registry and the submission records, so they can
be checked without Ray; the controller carries them out (``hold_nodes``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runtime.deployment.lifecycle import SubmissionRecord, SubmissionState
from runtime.deployment.node_registry import NodeRegistry, retirement_order
from runtime.runners.ray_nodes import awaited

if TYPE_CHECKING:
    from runtime.deployment.node_actors import NodeActors

__all__ = ["CrashResponse", "held_keys", "hold_nodes", "respond_to_crashes", "reuse_refusal"]


@dataclass(frozen=True)
class CrashResponse:
    """What to do about nodes whose actors crashed."""

    #: Submission id -> the cause it fails with.
    failures: Mapping[str, str]
    #: ``(key, why)`` of the live nodes of the crashed nodes' regions, sources first: each
    #: of them holds.
    holds: tuple[tuple[str, str], ...]


def respond_to_crashes(
    registry: NodeRegistry, records: Iterable[SubmissionRecord], causes: Mapping[str, str]
) -> CrashResponse:
    """Which submissions fail (with what cause) and which nodes hold after ``causes`` crashed.

    ``causes`` maps the crashed nodes' keys to why their actors died. A submission with a
    crashed node says which; one that only shares its region says which node of it crashed.
    """
    entries = registry.entries
    first_crash: dict[str, str] = {}  # region -> the first crashed key in it
    for key in sorted(key for key in causes if key in entries):
        first_crash.setdefault(entries[key].region, key)
    region_cause = {
        region: (f"node {entries[key].name!r} of its region crashed: actor "
                 f"{entries[key].actor_name} died ({causes[key]})")
        for region, key in first_crash.items()
    }
    failures: dict[str, str] = {}
    for record in records:
        if record.terminal or not record.holds_nodes:
            continue
        hit = [node for node in record.nodes if node.key in causes]
        regions = [entries[n.key].region for n in record.nodes
                   if n.key in entries and entries[n.key].region in region_cause]
        if hit:
            dead = entries[hit[0].key]
            failures[record.id] = (f"node(s) {[node.name for node in hit]} crashed: actor "
                                   f"{dead.actor_name} died ({causes[dead.key]})")
        elif regions:
            failures[record.id] = (f"{region_cause[regions[0]]}; the graphs sharing nodes "
                                   "with it stop with it")
    in_regions = {key for key, entry in entries.items() if entry.region in region_cause}
    return CrashResponse(failures, tuple(
        (key, region_cause[entries[key].region]) for key in retirement_order(entries, in_regions)
        if entries[key].alive and key not in causes))


def held_keys(registry: NodeRegistry, records: Mapping[str, SubmissionRecord]) -> frozenset[str]:
    """Live nodes every one of whose submissions failed: they hold, and take nothing new."""
    def failed(submission: str) -> bool:
        record = records.get(submission)
        return record is not None and record.state is SubmissionState.FAILED

    return frozenset(key for key, entry in registry.entries.items()
                     if entry.alive and entry.graphs and all(map(failed, entry.graphs)))


def reuse_refusal(
    registry: NodeRegistry,
    records: Mapping[str, SubmissionRecord],
    graph: str,
    names: Mapping[str, str],
) -> str | None:
    """Why graph ``graph`` (node names by registry key) cannot reuse its nodes; None if it can.

    Nodes whose actor died, or that hold after their region failed, must be released first.
    """
    dead_keys = registry.dead_keys()
    held = held_keys(registry, records)
    for unusable, what in ((dead_keys, "run in actors that died"),
                           (held, "hold their input since their region failed")):
        hit = [name for key, name in names.items() if key in unusable]
        if hit:
            users = sorted(record.id for record in records.values() if record.holds_nodes
                           and any(n.key in unusable and n.key in names for n in record.nodes))
            return (f"node(s) {hit} of graph {graph!r} {what}; remove the failed submissions "
                    f"using them ({users}) and submit again")
    return None


async def hold_nodes(actors: NodeActors, holds: Iterable[tuple[str, str]]) -> None:
    """Let each node of ``holds`` (key, why) hold, in order; one not answering is stopped."""
    for key, cause in holds:
        handle = actors.handles.get(key)
        if handle is None:
            continue
        with contextlib.suppress(Exception):  # a dead or unreachable actor sends nothing
            await asyncio.wait_for(awaited(handle.hold.remote(cause)), actors.call_timeout_s)
