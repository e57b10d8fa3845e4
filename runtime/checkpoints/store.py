"""The checkpoint store: node snapshots and manifests under one fsspec URL.

Layout, per region (graphs that share a node checkpoint together)::

    <url>/<region>/<checkpoint id, 12 digits>/<node id>.snapshot
    <url>/<region>/<checkpoint id, 12 digits>/MANIFEST.json

A checkpoint exists only once its manifest does: the manifest is written last, atomically, and
names every snapshot with its size and SHA-256. Loading verifies both; a corrupt or truncated
checkpoint is skipped, with the reason logged, for the one before it. The last ``keep``
complete checkpoints are kept. ``file://`` writes are durable (temp file, fsync, rename, fsync
of the folder); other filesystems (``memory://``, object stores) put each object whole.

>>> store = CheckpointStore("memory://doctest-checkpoints", keep=2)
>>> for cid in (1, 2, 3):
...     ref = store.write_snapshot("r", cid, "node-a", b"state %d" % cid)
...     store.write_manifest(Manifest("r", cid, {"node-a": ref}))
>>> store.checkpoint_ids("r")
[2, 3]
>>> loaded = store.latest("r")
>>> loaded.checkpoint_id, loaded.snapshots["node-a"]
(3, b'state 3')
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamdag.errors import StreamdagError

__all__ = [
    "MANIFEST_FORMAT",
    "CheckpointStore",
    "CorruptCheckpointError",
    "LoadedCheckpoint",
    "Manifest",
    "SnapshotRef",
    "shared_store",
    "write_file_durably",
]

#: Version of the manifest document; another one is refused when loading.
MANIFEST_FORMAT = 1
_MANIFEST = "MANIFEST.json"

_log = logging.getLogger("streamdag.checkpoints")


class CorruptCheckpointError(StreamdagError):
    """A checkpoint's manifest or a snapshot it names is missing, truncated or altered."""


@dataclass(frozen=True)
class SnapshotRef:
    """Where one node's snapshot of a checkpoint lies, and what its bytes must hash to."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class Manifest:
    """A complete checkpoint: every participating node's snapshot, by node id."""

    region: str
    checkpoint_id: int
    snapshots: dict[str, SnapshotRef]
    created_at: float = field(default_factory=time.time)

    def to_document(self) -> dict[str, Any]:
        """The manifest as written."""
        return {"format": MANIFEST_FORMAT, "region": self.region,
                "checkpoint_id": self.checkpoint_id, "created_at": self.created_at,
                "snapshots": {node: ref.to_dict() for node, ref in self.snapshots.items()}}

    @classmethod
    def from_document(cls, document: Any) -> Manifest:
        """The manifest ``to_document`` wrote; CorruptCheckpointError on anything else."""
        try:
            if document["format"] != MANIFEST_FORMAT:
                raise CorruptCheckpointError(
                    f"manifest format {document['format']!r} is not {MANIFEST_FORMAT}")
            refs = {str(node): SnapshotRef(str(ref["path"]), int(ref["size"]),
                                           str(ref["sha256"]))
                    for node, ref in document["snapshots"].items()}
            return cls(str(document["region"]), int(document["checkpoint_id"]), refs,
                       float(document["created_at"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CorruptCheckpointError(f"manifest is malformed ({exc!r})") from None


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A verified checkpoint: its id and every node's snapshot bytes."""

    region: str
    checkpoint_id: int
    snapshots: dict[str, bytes]


class CheckpointStore:
    """Snapshots and manifests of every region under ``url``; picklable (actors write to it)."""

    def __init__(self, url: str, keep: int = 2) -> None:
        if keep < 1:
            raise StreamdagError(f"a checkpoint store keeps at least 1 checkpoint; got {keep}")
        self.url = url.rstrip("/")
        self.keep = keep
        # fsspec is imported where it is used: every node actor imports this module, and only
        # one whose graph takes checkpoints opens a store.
        import fsspec

        self._fs: Any = None
        #: ``url`` as a path of its filesystem (parsed once, not per path built).
        self.root = str(fsspec.core.url_to_fs(self.url)[1]).rstrip("/")
        #: ``(region, checkpoint id)`` of checkpoints kept whatever their age (stop points
        #: resume from them), set by whoever knows (``RegionCheckpoints``).
        self.pinned: frozenset[tuple[str, int]] = frozenset()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "keep": self.keep, "_fs": None, "root": self.root,
                "pinned": self.pinned}

    @property
    def fs(self) -> Any:
        """The fsspec filesystem behind ``url``."""
        if self._fs is None:
            import fsspec

            self._fs, _ = fsspec.core.url_to_fs(self.url)
        return self._fs

    # -- writing --------------------------------------------------------------------------
    def write_snapshot(self, region: str, checkpoint_id: int, node_id: str,
                       data: bytes | Sequence[bytes | memoryview]) -> SnapshotRef:
        """Store one node's snapshot of ``checkpoint_id`` (its bytes, or parts that follow
        one another in it, not joined in memory); returns what the manifest records."""
        path = f"{self._folder(region, checkpoint_id)}/{node_id}.snapshot"
        parts = [data] if isinstance(data, bytes) else list(data)
        self._put(path, parts)
        digest = hashlib.sha256()
        for part in parts:
            digest.update(part)
        return SnapshotRef(path, sum(memoryview(part).nbytes for part in parts),
                           digest.hexdigest())

    def write_manifest(self, manifest: Manifest) -> None:
        """Complete ``manifest``'s checkpoint, then drop all but the last ``keep`` complete ones.

        Steps:
        1. The manifest is written atomically, after every snapshot it names: only now is the
           checkpoint complete.
        2. Older checkpoints beyond ``keep``, and abandoned ones older than this, are removed;
           pinned ones stay.
        """
        folder = self._folder(manifest.region, manifest.checkpoint_id)
        # Step 1: complete.
        self._put(f"{folder}/{_MANIFEST}",
                  [json.dumps(manifest.to_document(), sort_keys=True).encode()])
        # Step 2: prune.
        complete = self.checkpoint_ids(manifest.region)
        kept = set(complete[-self.keep:])
        for checkpoint_id in self.checkpoint_folders(manifest.region):
            if (checkpoint_id not in kept and checkpoint_id < manifest.checkpoint_id
                    and (manifest.region, checkpoint_id) not in self.pinned):
                self.fs.rm(self._folder(manifest.region, checkpoint_id), recursive=True)

    # -- removing -------------------------------------------------------------------------
    def remove_checkpoint(self, region: str, checkpoint_id: int) -> str:
        """Delete one checkpoint folder of ``region`` (complete or not); the folder removed."""
        folder = self._folder(region, checkpoint_id)
        self._remove(folder)
        return folder

    def remove_region(self, region: str, sequence: str) -> str:
        """Delete every checkpoint of ``region``; the folder removed.

        Its highest checkpoint id is recorded first under ``sequence`` (``retired_highest_id``):
        the ids of a sequence come from the folders there are, and must never be used twice.
        """
        highest = self.highest_id(region)
        if highest > self.retired_highest_id(sequence):
            self._put(self._retired_path(sequence), [str(highest).encode()])
        folder = f"{self.root}/{region}"
        self._remove(folder)
        return folder

    def retired_highest_id(self, sequence: str) -> int:
        """The highest checkpoint id of the regions of ``sequence`` removed so far; 0: none."""
        try:
            return int(self.fs.cat_file(self._retired_path(sequence)))
        except FileNotFoundError:
            return 0

    # -- reading --------------------------------------------------------------------------
    def checkpoint_ids(self, region: str) -> list[int]:
        """Ids of the checkpoints of ``region`` that have a manifest, oldest first."""
        return [cid for cid in self.checkpoint_folders(region)
                if self.fs.exists(f"{self._folder(region, cid)}/{_MANIFEST}")]

    def highest_id(self, region: str) -> int:
        """The highest checkpoint id ``region`` has a folder of, complete or not; 0: none."""
        return max(self.checkpoint_folders(region), default=0)

    def regions(self) -> list[str]:
        """Every region that has a folder in the store, sorted."""
        if not self.fs.exists(self.root):
            return []
        return sorted(str(entry).rstrip("/").rsplit("/", 1)[-1]
                      for entry in self.fs.ls(self.root, detail=False)
                      if self.fs.isdir(entry))

    def manifest(self, region: str, checkpoint_id: int) -> Manifest:
        """The manifest of one checkpoint (not verified against its snapshots)."""
        path = f"{self._folder(region, checkpoint_id)}/{_MANIFEST}"
        try:
            return Manifest.from_document(json.loads(self.fs.cat_file(path)))
        except (OSError, ValueError) as exc:
            raise CorruptCheckpointError(f"its manifest cannot be read ({exc!r})") from None

    def latest(self, region: str) -> LoadedCheckpoint | None:
        """The newest complete checkpoint that verifies; None when there is none.

        A corrupt one (manifest unreadable, a snapshot missing, truncated or altered) is
        skipped with a logged reason, and the one before it tried.
        """
        for checkpoint_id in reversed(self.checkpoint_ids(region)):
            try:
                return self.load(region, checkpoint_id)
            except CorruptCheckpointError as exc:
                _log.warning("checkpoint %d of region %s is corrupt (%s); falling back to the "
                             "one before it", checkpoint_id, region, exc)
        return None

    def load(self, region: str, checkpoint_id: int) -> LoadedCheckpoint:
        """Checkpoint ``checkpoint_id`` of ``region``, verified; CorruptCheckpointError if not."""
        manifest = self.manifest(region, checkpoint_id)
        snapshots: dict[str, bytes] = {}
        for node_id, ref in manifest.snapshots.items():
            try:
                data = self.fs.cat_file(ref.path)
            except OSError as exc:
                raise CorruptCheckpointError(
                    f"the snapshot of node {node_id[:12]} cannot be read ({exc!r})") from None
            if len(data) != ref.size:
                raise CorruptCheckpointError(
                    f"the snapshot of node {node_id[:12]} has {len(data)} bytes, the manifest "
                    f"says {ref.size} (truncated)")
            if hashlib.sha256(data).hexdigest() != ref.sha256:
                raise CorruptCheckpointError(
                    f"the snapshot of node {node_id[:12]} does not match its checksum")
            snapshots[node_id] = data
        return LoadedCheckpoint(region, checkpoint_id, snapshots)

    # -- internals ------------------------------------------------------------------------
    def _folder(self, region: str, checkpoint_id: int) -> str:
        return f"{self.root}/{region}/{checkpoint_id:012d}"

    def checkpoint_folders(self, region: str) -> list[int]:
        """Ids of every checkpoint folder of ``region``, complete or not, oldest first."""
        base = f"{self.root}/{region}"
        if not self.fs.exists(base):
            return []
        names = [str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(base,
                                                                                   detail=False)]
        return sorted(int(name) for name in names if name.isdigit())

    def _retired_path(self, sequence: str) -> str:
        # A file beside the region folders: ``regions`` lists folders only.
        return f"{self.root}/{sequence}.retired-highest-id"

    def _remove(self, path: str) -> None:
        # Removed already: two sweeps, or a sweep and a prune, got there first.
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)

    def _put(self, path: str, parts: Sequence[bytes | memoryview]) -> None:
        from fsspec.implementations.local import LocalFileSystem

        if isinstance(self.fs, LocalFileSystem):
            write_file_durably(Path(path), parts)
        else:  # one object, put whole
            self.fs.pipe_file(path, parts[0] if len(parts) == 1 else b"".join(parts))


def shared_store(url: str, keep: int, whose_nodes: str) -> CheckpointStore:
    """The store at ``url`` for nodes that run as processes of their own (``whose_nodes``
    says whose, in the refusal): a ``memory://`` one is refused, it lives in one process."""
    if url.startswith("memory://"):
        raise StreamdagError(
            f"checkpoint url {url!r} is memory of one process, and {whose_nodes} nodes are "
            "processes of their own; give a file:// URL (or shared storage)")
    return CheckpointStore(url, keep=keep)


def write_file_durably(target: Path, data: bytes | Sequence[bytes | memoryview]) -> None:
    """Write ``data`` (bytes, or parts one after another) to ``target`` so a reader sees the
    old file or the new one, even after a power cut.

    Steps:
    1. The bytes go to a temp file beside the target, and are fsynced.
    2. The temp file is renamed over the target: the atomic switch.
    3. The folder is fsynced, so the rename itself survives.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    # Step 1: the bytes are on disk before the name points at them.
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as temp:
            for part in [data] if isinstance(data, bytes) else data:
                temp.write(part)
            temp.flush()
            os.fsync(temp.fileno())
        # Step 2: the switch.
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # Step 3: the directory entry.
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
