"""Content-addressed result caches: in memory (LRU, TTL, byte budget) over a directory on disk.

Keys are sha256 hex strings a caller derives from everything that determines the value (for a
node's output: its Merkle node_id, the fingerprint of its input range and the scenario's input
overrides), so an entry can only ever be served for the computation that produced it. Values are
Batches. The memory tier evicts the least recently used entries past its byte budget and drops
entries older than the TTL; the disk tier keeps one ``.npz`` file per key under its directory,
a local path or any fsspec URL (``s3://bucket/cache``, ...).
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.checkpoints.store import write_file_durably
from streamdag.batch import Batch

__all__ = ["CacheStats", "ResultCache", "batch_from_bytes", "batch_to_bytes"]

#: The disk tier's counters, kept beside its entries.
_COUNTERS = "counters.json"


@dataclass
class CacheStats:
    """Counters of one cache tier."""

    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        """Hits over lookups (0.0 before the first lookup)."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        """The counters and the hit rate, for JSON and tables."""
        return {**asdict(self), "hit_rate": round(self.hit_rate, 4)}


class ResultCache:
    """Batches by content key: a memory tier, and optionally a disk tier under ``directory``.

    >>> cache = ResultCache(max_bytes=1 << 20)
    >>> batch = Batch.from_columns(ts=[1], key=["a"], value=[2.0])
    >>> cache.get("k") is None
    True
    >>> cache.put("k", batch)
    >>> cache.get("k").to_records(), cache.stats()["memory"]["hits"]
    ([{'ts': 1, 'key': 'a', 'value': 2.0}], 1)
    """

    def __init__(
        self,
        *,
        max_bytes: int = 1 << 30,
        ttl_s: float | None = 3600.0,
        directory: str | Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes cannot be negative, got {max_bytes}")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        #: Where the disk tier lives (a path or fsspec URL), or None for memory only.
        self.directory = str(directory) if directory is not None else None
        self._fs: Any = None
        self._root = ""
        if self.directory is not None:
            import fsspec  # here: only a cache with a disk tier needs it

            self._fs, root = fsspec.core.url_to_fs(self.directory)
            self._root = str(root).rstrip("/")
        self._clock = clock
        self._entries: OrderedDict[str, tuple[Batch, int, float]] = OrderedDict()
        self._memory = CacheStats()
        self._disk = CacheStats()
        self._lock = threading.Lock()
        if self._fs is not None:
            self._fs.makedirs(self._root, exist_ok=True)
            self._count_disk()
            self._load_counters()

    # -- lookups ---------------------------------------------------------------------------
    def get(self, key: str) -> Batch | None:
        """The batch stored under ``key`` (memory first, then disk), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self.ttl_s is not None and (
                    self._clock() - entry[2] > self.ttl_s):
                self._drop(key)
                self._memory.evictions += 1
                entry = None
            if entry is not None:
                self._entries.move_to_end(key)
                self._memory.hits += 1
                return entry[0]
            self._memory.misses += 1
        path = self._path(key)
        if path is None or not self._fs.exists(path):
            if path is not None:
                self._disk.misses += 1
            return None
        batch = batch_from_bytes(self._fs.cat_file(path))
        self._disk.hits += 1
        self._remember(key, batch)
        return batch

    def put(self, key: str, batch: Batch, *, memory_only: bool = False) -> None:
        """Store ``batch`` under ``key`` in memory and (with a directory, unless
        ``memory_only``) on disk."""
        self._remember(key, batch)
        path = None if memory_only else self._path(key)
        if path is not None and not self._fs.exists(path):
            data = batch_to_bytes(batch)
            self._write(path, data)
            with self._lock:
                self._disk.entries += 1
                self._disk.bytes += len(data)

    def persist(self) -> None:
        """Save the disk tier's hits, misses and evictions, so other processes' stats add up."""
        if self._fs is None:
            return
        with self._lock:
            counters = {"hits": self._disk.hits, "misses": self._disk.misses,
                        "evictions": self._disk.evictions}
        self._write(f"{self._root}/{_COUNTERS}", json.dumps(counters).encode())

    def clear(self) -> dict[str, int]:
        """Drop every entry of both tiers; how many of each were dropped."""
        with self._lock:
            dropped = {"memory": len(self._entries), "disk": 0}
            self._entries.clear()
            self._memory.entries = self._memory.bytes = 0
            if self._fs is not None:
                for path in self._entry_paths():
                    self._fs.rm(path)
                    dropped["disk"] += 1
                self._disk.entries = self._disk.bytes = 0
                self._disk.evictions += dropped["disk"]
        self.persist()
        return dropped

    def stats(self) -> dict[str, dict[str, float]]:
        """Per tier (``memory``, ``disk``): hits, misses, hit rate, entries, bytes, evictions."""
        with self._lock:
            tiers = {"memory": self._memory.as_dict()}
            if self.directory is not None:
                tiers["disk"] = self._disk.as_dict()
            return tiers

    def figures(self) -> dict[str, CacheStats]:
        """The counters themselves, by tier (for the Prometheus collector)."""
        with self._lock:
            tiers = {"memory": CacheStats(**asdict(self._memory))}
            if self.directory is not None:
                tiers["disk"] = CacheStats(**asdict(self._disk))
            return tiers

    # -- internals -------------------------------------------------------------------------
    def _remember(self, key: str, batch: Batch) -> None:
        size = batch.nbytes
        if size > self.max_bytes:
            return  # bigger than the whole budget: the disk tier (if any) keeps it
        with self._lock:
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (batch, size, self._clock())
            self._memory.entries += 1
            self._memory.bytes += size
            while self._memory.bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._drop(oldest)
                self._memory.evictions += 1

    def _drop(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self._memory.entries -= 1
        self._memory.bytes -= size

    def _path(self, key: str) -> str | None:
        if self._fs is None:
            return None
        if not key.isalnum():
            raise ValueError(f"cache key {key!r} must be a hex digest")
        return f"{self._root}/{key}.npz"

    def _entry_paths(self) -> list[str]:
        return [str(path) for path in self._fs.glob(f"{self._root}/*.npz")]

    def _write(self, path: str, data: bytes) -> None:
        from fsspec.implementations.local import LocalFileSystem

        # A reader sees the old file or the new one, never half of one.
        if isinstance(self._fs, LocalFileSystem):
            write_file_durably(Path(path), data)
        else:
            self._fs.pipe_file(path, data)  # one object, put whole

    def _load_counters(self) -> None:
        try:
            counters = json.loads(self._fs.cat_file(f"{self._root}/{_COUNTERS}"))
        except (OSError, ValueError):
            return  # none yet (or unreadable): count from zero
        self._disk.hits = int(counters.get("hits", 0))
        self._disk.misses = int(counters.get("misses", 0))
        self._disk.evictions = int(counters.get("evictions", 0))

    def _count_disk(self) -> None:
        for path in self._entry_paths():
            self._disk.entries += 1
            self._disk.bytes += int(self._fs.size(path))


def batch_to_bytes(batch: Batch) -> bytes:
    """A batch as ``.npz`` bytes (no pickles: numeric and bytes arrays only)."""
    arrays: dict[str, Any] = {"__ts": batch.ts, "__key": batch.key}
    arrays.update({f"c_{name}": column for name, column in batch.columns.items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def batch_from_bytes(data: bytes) -> Batch:
    """The batch ``batch_to_bytes`` wrote."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        columns = {name[2:]: arrays[name] for name in arrays.files if name.startswith("c_")}
        return Batch(arrays["__ts"], arrays["__key"], columns)
