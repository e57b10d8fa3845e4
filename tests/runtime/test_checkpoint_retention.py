"""Old checkpoint folders of a deployment go once nothing can need them: regions whose graphs
were removed, regions merged into another once it has checkpoints enough, half-written
folders; never a live region, nor one a stop point or a recovery may still restore from.
Over file:// and memory://, through ``RegionCheckpoints`` as the controller drives it."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest

from runtime.checkpoints.retention import Retention, plan_sweep
from runtime.checkpoints.store import CheckpointStore, Manifest
from runtime.dataplane.host import RuntimeSettings
from runtime.deployment.node_actors import NodeActors
from runtime.deployment.node_registry import (
    NodeRegistry,
    NodeRequest,
    acquire,
    release,
    with_since,
)
from runtime.deployment.region_checkpoints import RegionCheckpoints
from runtime.deployment.stop_resume import StopPoint, save_stop_point, stop_points
from streamdag.config import CheckpointSettings

DEPLOYMENT = "live"


def _store(tmp_path: Path, kind: str) -> CheckpointStore:
    if kind == "file":
        return CheckpointStore((tmp_path / "checkpoints").as_uri(), keep=2)
    return CheckpointStore(f"memory://retention-{uuid.uuid4().hex[:8]}", keep=2)


def _listing(store: CheckpointStore) -> dict[str, list[int]]:
    """Every region folder of the store, with its checkpoint folders (complete or not)."""
    return {region: store.checkpoint_folders(region) for region in store.regions()}


def _nodes(*specs: tuple[str, tuple[str, ...]]) -> list[NodeRequest]:
    return [NodeRequest(key, key, f"actor-{key}", f"n{key}", "op", "map", inputs)
            for key, inputs in specs]


def _checkpoint(store: CheckpointStore, region: str, cid: int, keys: Iterable[str],
                created_at: float | None = None) -> Manifest:
    refs = {key: store.write_snapshot(f"{DEPLOYMENT}.{region}", cid, key, f"{key}@{cid}".encode())
            for key in keys}
    manifest = Manifest(f"{DEPLOYMENT}.{region}", cid, refs)
    if created_at is not None:
        manifest = Manifest(manifest.region, cid, refs, created_at)
    store.write_manifest(manifest)
    return manifest


class _Deployment:
    """The registry and stop points a controller would hold, and its regions' checkpoints."""

    def __init__(self, store: CheckpointStore) -> None:
        self.registry = NodeRegistry()
        self.stop_points: list[tuple[str, int]] = []
        self.checkpoints = RegionCheckpoints(DEPLOYMENT, CheckpointSettings(enabled=True),
                                             store, NodeActors(DEPLOYMENT, RuntimeSettings()))
        self.checkpoints.sweep_with(lambda: (self.registry, self.stop_points))

    async def submit(self, graph: str, *specs: tuple[str, tuple[str, ...]]) -> None:
        self.registry = acquire(self.registry, graph, _nodes(*specs))
        await self.checkpoints.reconcile(self.registry)

    async def remove(self, graph: str) -> None:
        self.registry, _ = release(self.registry, graph)
        await self.checkpoints.reconcile(self.registry)


@pytest.mark.parametrize("kind", ["file", "memory"])
async def test_merged_then_removed_regions_go_once_newer_checkpoints_replace_them(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path, kind)
    store.write_manifest(Manifest("other.region-bb", 1, {}))  # another deployment's: untouched
    deployment = _Deployment(store)
    await deployment.submit("g1", ("bb", ()), ("cc", ("bb",)))
    await deployment.submit("g3", ("dd", ()), ("ee", ("dd",)))
    for cid, region, keys in ((2, "region-bb", "bc"), (3, "region-dd", "de"),
                              (4, "region-bb", "bc"), (5, "region-dd", "de")):
        _checkpoint(store, region, cid, [k * 2 for k in keys])
    assert _listing(store) == {"live.region-bb": [2, 4], "live.region-dd": [3, 5],
                               "other.region-bb": [1]}

    # g2 attaches to bb and dd: one region, named after its smallest key, aa.
    await deployment.submit("g2", ("bb", ()), ("dd", ()), ("aa", ("bb", "dd")))
    assert {e.region for e in deployment.registry.entries.values()} == {"region-aa"}
    # Until region-aa holds two checkpoints, a recovery may fall back to the old ones.
    assert _listing(store) == {"live.region-bb": [2, 4], "live.region-dd": [3, 5],
                               "other.region-bb": [1]}
    _checkpoint(store, "region-aa", 6, ["aa", "bb", "cc", "dd", "ee"])
    assert await deployment.checkpoints.sweep() == []
    _checkpoint(store, "region-aa", 7, ["aa", "bb", "cc", "dd", "ee"])
    with caplog.at_level(logging.INFO, logger="streamdag.controller"):  # the deployment log
        removed = await deployment.checkpoints.sweep()
    assert [path.rsplit("/", 1)[-1] for path in removed] == ["live.region-bb", "live.region-dd"]
    assert _listing(store) == {"live.region-aa": [6, 7], "other.region-bb": [1]}
    assert caplog.messages == [
        f"deleted checkpoint region live.region-{r}: no registered node may restore from it "
        "and no stop point resumes from it" for r in ("bb", "dd")]

    # g2 and g3 removed: g1 is region-bb again, restoring from region-aa until it has two.
    await deployment.remove("g2")
    await deployment.remove("g3")
    assert _listing(store) == {"live.region-aa": [6, 7], "other.region-bb": [1]}
    _checkpoint(store, "region-bb", 8, ["bb", "cc"])
    _checkpoint(store, "region-bb", 9, ["bb", "cc"])
    await deployment.checkpoints.sweep()
    assert _listing(store) == {"live.region-bb": [8, 9], "other.region-bb": [1]}
    # g1 removed: nothing needs its region. The id sequence goes on above what was deleted.
    await deployment.remove("g1")
    assert _listing(store) == {"other.region-bb": [1]}
    assert _Deployment(store).checkpoints.next_checkpoint_id() == 10


@pytest.mark.parametrize("kind", ["file", "memory"])
async def test_a_stop_point_keeps_its_region_through_stop_and_resume_cycles(
    tmp_path: Path, kind: str
) -> None:
    store = _store(tmp_path, kind)
    deployment = _Deployment(store)
    await deployment.submit("g1", ("bb", ()), ("cc", ("bb",)))
    for cid in (1, 2):
        _checkpoint(store, "region-bb", cid, ["bb", "cc"])
    # streamdag stop: a final checkpoint, the stop point, then the nodes are released.
    final = _checkpoint(store, "region-bb", 3, ["bb", "cc"])
    store.write_snapshot("live.region-bb", 1, "bb", b"late")  # an abandoned one, written late
    deployment.stop_points = [("live.region-bb", 3)]
    await deployment.remove("g1")
    assert _listing(store) == {"live.region-bb": [2, 3]}  # the late half-written one is gone

    # streamdag resume: the nodes, dated back to the final checkpoint, then the point dropped.
    deployment.registry = with_since(
        acquire(deployment.registry, "g1-again", _nodes(("bb", ()), ("cc", ("bb",)))),
        dict.fromkeys(("bb", "cc"), final.created_at))
    deployment.stop_points = []
    await deployment.checkpoints.reconcile(deployment.registry)
    assert _listing(store) == {"live.region-bb": [2, 3]}
    _checkpoint(store, "region-bb", 4, ["bb", "cc"])
    _checkpoint(store, "region-bb", 5, ["bb", "cc"])
    assert _listing(store) == {"live.region-bb": [4, 5]}

    # Stopped again, then removed: the stop point still resumes a resubmission, so it stays.
    deployment.stop_points = [("live.region-bb", 5)]
    await deployment.remove("g1-again")
    assert _listing(store) == {"live.region-bb": [4, 5]}
    # Resubmitted: resumed (the point used); removed for good: its folder goes.
    await deployment.submit("g1-third", ("bb", ()), ("cc", ("bb",)))
    deployment.stop_points = []
    await deployment.remove("g1-third")
    assert _listing(store) == {}


async def test_a_graph_sharing_a_stopped_graphs_smallest_node_keeps_its_stop_point(
    tmp_path: Path
) -> None:
    store = _store(tmp_path, "memory")
    deployment = _Deployment(store)
    await deployment.submit("g", ("bb", ()), ("cc", ("bb",)))
    _checkpoint(store, "region-bb", 1, ["bb", "cc"])
    _checkpoint(store, "region-bb", 2, ["bb", "cc"])
    deployment.stop_points = [("live.region-bb", 2)]
    await deployment.remove("g")

    # h reads the same source bb: region-bb lives again, and checkpoints on past keep.
    await deployment.submit("h", ("bb", ()), ("dd", ("bb",)))
    for cid in (3, 4, 5):
        _checkpoint(store, "region-bb", cid, ["bb", "dd"])
    assert _listing(store) == {"live.region-bb": [2, 4, 5]}
    assert store.load("live.region-bb", 2).snapshots == {"bb": b"bb@2", "cc": b"cc@2"}

    # g resumed (the point used): the next checkpoint prunes it.
    deployment.stop_points = []
    await deployment.submit("g-resumed", ("bb", ()), ("cc", ("bb",)))
    _checkpoint(store, "region-bb", 6, ["bb", "cc", "dd"])
    assert _listing(store) == {"live.region-bb": [5, 6]}


async def test_nothing_is_deleted_before_the_controller_says_what_it_needs(
    tmp_path: Path
) -> None:
    store = _store(tmp_path, "file")
    _checkpoint(store, "region-bb", 1, ["bb"])
    checkpoints = RegionCheckpoints(DEPLOYMENT, CheckpointSettings(enabled=True), store,
                                    NodeActors(DEPLOYMENT, RuntimeSettings()))

    await checkpoints.reconcile(NodeRegistry())

    assert _listing(store) == {"live.region-bb": [1]}


def test_a_region_needed_again_between_plan_and_deletion_stays(tmp_path: Path) -> None:
    store = _store(tmp_path, "memory")
    _checkpoint(store, "region-bb", 1, ["bb"])
    _checkpoint(store, "region-dd", 2, ["dd"])
    plan = plan_sweep(store, Retention(DEPLOYMENT))
    assert plan.regions == ("live.region-bb", "live.region-dd")

    # Meanwhile region-bb became live again, and a stop point came to hold region-dd.
    again = plan.still(Retention(DEPLOYMENT, live=frozenset({"live.region-bb"}),
                                 pinned=frozenset({("live.region-dd", 2)})))
    assert again.regions == ()
    # A node resumed from region-dd's checkpoint (dated back to it) needs it too.
    resumed = plan.still(Retention(DEPLOYMENT, since={"dd": 0.0}))
    assert resumed.regions == ("live.region-bb",)


def test_the_controller_reads_every_stop_point_of_its_state_dir(tmp_path: Path) -> None:
    points = [StopPoint("s1", "g1", (("live.region-bb", 3, 1.5),)),
              StopPoint("s2", "g/2", (("live.region-dd", 5, 2.5), ("live.region-ee", 5, 2.5)))]
    for point in points:
        save_stop_point(tmp_path, point)

    assert stop_points(tmp_path) == sorted(points, key=lambda p: p.graph.replace("/", "-"))
    assert stop_points(tmp_path / "elsewhere") == []
