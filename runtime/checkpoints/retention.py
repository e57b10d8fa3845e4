"""Which checkpoint folders of a deployment can go: regions nothing can need any more.

The store keeps the last ``keep`` complete checkpoints of each region, but a region's name
lives only as long as its members: when its graphs are removed, or a graph attaching to a
shared node merges it into another region, its folder would stay forever. ``sweep`` deletes
such folders once nothing can need them:

* a live region (nodes are in it now, or its coordinator runs) is never deleted;
* a checkpoint a stop point resumes from (``streamdag stop``) keeps its region;
* a recovery (also a restarted controller's) restores each registered node from the newest
  complete checkpoint holding it written since the node's entry was created, falling back to
  older ones when that one is corrupt (``region_checkpoints.choose_snapshots``): the regions of
  the newest ``keep`` such checkpoints of every registered node are kept.

Every other region of the deployment is deleted, its highest checkpoint id recorded first so the
deployment's one id sequence never goes back (``CheckpointStore.remove_region``). In the regions
kept, folders without a manifest older than the newest complete checkpoint are half-written ones
that were abandoned, and are deleted too. Each deletion is logged.

>>> from runtime.checkpoints.store import CheckpointStore, Manifest
>>> store = CheckpointStore("memory://doctest-retention", keep=2)
>>> for region, cid in (("live.region-a", 1), ("live.region-b", 2), ("live.region-c", 3)):
...     ref = store.write_snapshot(region, cid, "n", b"state")
...     store.write_manifest(Manifest(region, cid, {"n": ref}, created_at=cid))
>>> _ = store.write_snapshot("live.region-c", 2, "n", b"late")  # abandoned, written late
>>> sweep(store, Retention("live", live=frozenset({"live.region-c"}), since={"n": 2.0}))
['/doctest-retention/live.region-a', '/doctest-retention/live.region-c/000000000002']
>>> store.regions(), store.retired_highest_id("live")
(['live.region-b', 'live.region-c'], 1)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from runtime.checkpoints.store import CheckpointStore, CorruptCheckpointError, Manifest

__all__ = ["Retention", "SweepPlan", "carry_out", "needed_regions", "plan_sweep", "sweep"]

_log = logging.getLogger("streamdag.checkpoints")


@dataclass(frozen=True)
class Retention:
    """What a deployment's checkpoints must serve now, read at one moment.

    Read the registry before the stop points, with nothing in between that lets the controller
    move on: a stop saves its point before its nodes leave the registry, and a resume dates its
    nodes back (``since``) before it drops its point, so one of the two always holds them.
    """

    #: The deployment: its store regions are named ``<deployment>.region-<key>``.
    deployment: str
    #: Store regions with nodes or a running coordinator now.
    live: frozenset[str] = frozenset()
    #: Every registered node key: when its entry was created (older checkpoints hold an
    #: earlier node of that key, never this one).
    since: Mapping[str, float] = field(default_factory=dict)
    #: ``(store region, checkpoint id)`` of every checkpoint a stop point resumes from.
    pinned: frozenset[tuple[str, int]] = frozenset()

    def owns(self, region: str) -> bool:
        """Whether store region ``region`` is one of this deployment's (stores are shared)."""
        return re.fullmatch(re.escape(self.deployment) + r"\.region-[0-9a-f]+", region) is not None


def needed_regions(retention: Retention, manifests: list[Manifest], keep: int) -> set[str]:
    """The store regions that must stay: live, pinned, or among the newest ``keep`` complete
    checkpoints a recovery of a registered node may restore from."""
    needed = set(retention.live) | {region for region, _ in retention.pinned}
    newest_first = sorted(manifests, key=lambda m: m.created_at, reverse=True)
    for key, since in retention.since.items():
        holding = [m for m in newest_first if key in m.snapshots and m.created_at >= since]
        needed.update(m.region for m in holding[:keep])
    return needed


@dataclass(frozen=True)
class SweepPlan:
    """What a sweep found it may delete, and the manifests it decided on."""

    #: Regions nothing needed: deleted whole.
    regions: tuple[str, ...]
    #: ``(region, checkpoint id, newest complete id)`` of half-written folders to delete.
    half_written: tuple[tuple[str, int, int], ...]
    #: Every readable manifest of the deployment's regions when the plan was made.
    manifests: tuple[Manifest, ...]
    keep: int

    def still(self, retention: Retention) -> SweepPlan:
        """The plan without what ``retention`` (read since) needs: a region that became live,
        or one a stop point or a resumed node needs now."""
        needed = needed_regions(retention, list(self.manifests), self.keep)
        return SweepPlan(tuple(r for r in self.regions if r not in needed), self.half_written,
                         self.manifests, self.keep)


def plan_sweep(store: CheckpointStore, retention: Retention) -> SweepPlan:
    """What of ``retention.deployment``'s folders nothing can need (reads the store only).

    Steps:
    1. The deployment's regions in the store, and their complete checkpoints' manifests.
    2. The regions that must stay (``needed_regions``); every other one goes.
    3. In the regions that stay, half-written folders (no manifest) older than the newest
       complete checkpoint go too.
    """
    # Step 1: what there is.
    regions = [region for region in store.regions() if retention.owns(region)]
    complete: dict[str, list[int]] = {region: store.checkpoint_ids(region) for region in regions}
    manifests: list[Manifest] = []
    for region, checkpoint_ids in complete.items():
        for checkpoint_id in checkpoint_ids:
            try:
                manifests.append(store.manifest(region, checkpoint_id))
            except CorruptCheckpointError:
                continue  # no recovery restores from it; it goes with its region
    # Step 2: what must stay.
    needed = needed_regions(retention, manifests, store.keep)
    # Step 3: abandoned half-written checkpoints of what stays.
    half_written: list[tuple[str, int, int]] = []
    for region in (r for r in regions if r in needed):
        newest = max(complete[region], default=0)
        half_written.extend((region, checkpoint_id, newest)
                            for checkpoint_id in store.checkpoint_folders(region)
                            if checkpoint_id < newest and checkpoint_id not in complete[region])
    return SweepPlan(tuple(r for r in regions if r not in needed), tuple(half_written),
                     tuple(manifests), store.keep)


def carry_out(store: CheckpointStore, plan: SweepPlan, deployment: str,
              log: logging.Logger = _log) -> list[str]:
    """Delete what ``plan`` names, logging each on ``log``; the folders deleted."""
    removed: list[str] = []
    for region in plan.regions:
        removed.append(store.remove_region(region, deployment))
        log.info("deleted checkpoint region %s: no registered node may restore from it and "
                  "no stop point resumes from it", region)
    for region, checkpoint_id, newest in plan.half_written:
        removed.append(store.remove_checkpoint(region, checkpoint_id))
        log.info("deleted checkpoint %d of region %s: half-written (no manifest) and older "
                  "than complete checkpoint %d", checkpoint_id, region, newest)
    return removed


def sweep(store: CheckpointStore, retention: Retention) -> list[str]:
    """Delete the folders of ``retention.deployment`` that nothing can need; the ones deleted."""
    return carry_out(store, plan_sweep(store, retention), retention.deployment)
