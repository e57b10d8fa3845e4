"""The checkpoint store over file:// and memory://: complete only with a manifest, the last N
kept, corruption detected and fallen back from with the reason logged."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest

from runtime.checkpoints.store import CheckpointStore, Manifest


def _stores(tmp_path: Path) -> list[CheckpointStore]:
    return [CheckpointStore(tmp_path.as_uri(), keep=2),
            CheckpointStore(f"memory://store-test-{uuid.uuid4().hex[:8]}", keep=2)]


def _checkpoint(store: CheckpointStore, cid: int, *, complete: bool = True) -> None:
    refs = {node: store.write_snapshot("r", cid, node, f"{node}@{cid}".encode() * 10)
            for node in ("a", "b")}
    if complete:
        store.write_manifest(Manifest("r", cid, refs))


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_only_checkpoints_with_a_manifest_count_and_the_last_two_are_kept(
    tmp_path: Path, kind: str
) -> None:
    store = _stores(tmp_path)[kind == "memory"]
    for cid in (1, 2, 3):
        _checkpoint(store, cid)
    _checkpoint(store, 4, complete=False)  # its manifest was never written: not complete

    latest = store.latest("r")
    assert store.checkpoint_ids("r") == [2, 3]
    assert latest is not None and latest.checkpoint_id == 3
    assert latest.snapshots == {"a": b"a@3" * 10, "b": b"b@3" * 10}


@pytest.mark.parametrize("damage", ["truncated", "altered", "missing", "manifest"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_one_before(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path.as_uri(), keep=2)
    _checkpoint(store, 1)
    _checkpoint(store, 2)
    folder = tmp_path / "r" / f"{2:012d}"
    snapshot = folder / "b.snapshot"
    if damage == "truncated":
        snapshot.write_bytes(snapshot.read_bytes()[:-1])
    elif damage == "altered":
        snapshot.write_bytes(b"X" + snapshot.read_bytes()[1:])
    elif damage == "missing":
        snapshot.unlink()
    else:
        (folder / "MANIFEST.json").write_text("{not json")

    with caplog.at_level(logging.WARNING, logger="streamdag.checkpoints"):
        latest = store.latest("r")

    assert latest is not None and latest.checkpoint_id == 1
    reason = {"truncated": "has 29 bytes, the manifest says 30 (truncated)",
              "altered": "does not match its checksum",
              "missing": "cannot be read",
              "manifest": "its manifest cannot be read"}[damage]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert messages[0].startswith("checkpoint 2 of region r is corrupt (")
    assert reason in messages[0]


def test_no_checkpoint_is_none(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path.as_uri()).latest("never") is None
