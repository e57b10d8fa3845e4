"""Keyed exchange between sharded nodes: each record goes to the shard that owns its key.

A node run with ``parallelism=N`` is N actors, shard ``s`` owning the keys whose stable hash
(FNV-1a 64-bit over the key's bytes, ``operators.key_slots.hash_keys``, through murmur3's
64-bit finalizer so that short keys differing in one byte spread over the shards; never
Python's ``hash()``, which changes from process to process) modulo N is ``s``. A producer sends to a
sharded consumer through one channel per consumer shard, each behind a ``RoutedTarget`` that
keeps only the records of that shard's keys: a batch is split with numpy (one hash per
record, computed once per batch however many shards), never record by record in Python.
Watermarks, barriers and end-of-stream go to every shard.

A sharded source reads with ``ShardedSource``: its factory's own ``shard(index, count)``
when it has one (a Kafka source reads a group of partitions), else every shard reads the
whole source and keeps the records of its own keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.key_slots import hash_keys
from runtime.dataplane.channels import Target
from runtime.dataplane.messages import Envelope
from streamdag.batch import Batch
from streamdag.connector import SourceChunk, SourceFactory, SourceReader

__all__ = ["KeyRoute", "RoutedTarget", "ShardedSource", "key_shards", "shard_part"]


@dataclass(frozen=True)
class KeyRoute:
    """The keys a consumer shard owns: those whose hash modulo ``shards`` is ``shard``."""

    shard: int
    shards: int


#: The last key array hashed, its shard count and shards: every consumer shard of one
#: producer splits the same batch, so it is hashed once (the array is held, so its id
#: cannot be reused while it is cached).
_last: tuple[npt.NDArray[Any], int, npt.NDArray[np.int64]] | None = None


def key_shards(keys: npt.NDArray[np.bytes_], shards: int) -> npt.NDArray[np.int64]:
    """The shard owning each key: its FNV-1a hash modulo ``shards``; the same in every process.

    >>> key_shards(np.array([b"AAPL", b"AMZN", b"TSLA", b"AAPL"]), 4).tolist()
    [3, 0, 2, 3]
    """
    global _last
    cached = _last
    if cached is not None and cached[0] is keys and cached[1] == shards:
        return cached[2]
    owners = (_mixed(hash_keys(keys)) % np.uint64(shards)).astype(np.int64)
    _last = (keys, shards, owners)
    return owners


def _mixed(hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """murmur3's fmix64 over each hash (FNV-1a's low bits follow the key's last byte)."""
    mixed = hashes ^ (hashes >> np.uint64(33))
    mixed *= np.uint64(0xFF51AFD7ED558CCD)
    mixed ^= mixed >> np.uint64(33)
    mixed *= np.uint64(0xC4CEB9FE1A85EC53)
    mixed ^= mixed >> np.uint64(33)
    return mixed


def shard_part(batch: Batch, route: KeyRoute) -> Batch:
    """The records of ``batch`` whose keys ``route`` owns, in their order.

    >>> batch = Batch.from_columns(ts=[1, 2, 3], key=["AAPL", "AMZN", "AAPL"], v=[1.0, 2.0, 3.0])
    >>> shard_part(batch, KeyRoute(3, 4)).to_records()
    [{'ts': 1, 'key': 'AAPL', 'v': 1.0}, {'ts': 3, 'key': 'AAPL', 'v': 3.0}]
    """
    if route.shards == 1 or not len(batch):
        return batch
    mine = key_shards(batch.key, route.shards) == route.shard
    return batch if bool(mine.all()) else batch.take(mine)


class RoutedTarget:
    """A channel's receiver that is one consumer shard: batches carry only its keys."""

    def __init__(self, target: Target, route: KeyRoute) -> None:
        self.target = target
        self.route = route

    def deliver(self, envelope: Envelope) -> Awaitable[Any]:
        """Deliver ``envelope``, a batch cut down to the records of this shard's keys."""
        def part(payload: Any) -> Any:
            return shard_part(payload, self.route) if isinstance(payload, Batch) else payload

        # A push may carry more than one step's payloads (``Envelope.trailing``): cut each.
        envelope = dataclasses.replace(envelope, payload=part(envelope.payload),
                                       trailing=tuple(part(p) for p in envelope.trailing))
        return self.target.deliver(envelope)

    def close(self) -> None:
        """Close the shard's data connection, if its target has one."""
        close = getattr(self.target, "close", None)
        if callable(close):
            close()


@dataclass(frozen=True)
class ShardedSource:
    """The reader factory of source shard ``route.shard`` of ``route.shards``."""

    factory: SourceFactory
    route: KeyRoute

    def __call__(self) -> SourceReader:
        """The factory's own reader of a partition group, else a key-filtering reader."""
        own: Any = getattr(self.factory, "shard", None)
        if callable(own):
            reader: SourceReader = own(self.route.shard, self.route.shards)()
            return reader
        return _KeyShardReader(self.factory(), self.route)


class _KeyShardReader:
    """Reads the whole source and keeps the records of its shard's keys.

    Anything else the host asks of a reader (``seek_to``, ``pause``, ``lag``) is the inner
    reader's.
    """

    def __init__(self, reader: SourceReader, route: KeyRoute) -> None:
        self._reader = reader
        self._route = route

    async def open(self) -> None:
        """Open the inner reader."""
        await self._reader.open()

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """The inner reader's next chunk, with only this shard's records."""
        chunk = await self._reader.read(max_records, linger_s)
        return dataclasses.replace(chunk, batch=shard_part(chunk.batch, self._route))

    def position(self) -> dict[int, int]:
        """The inner reader's position."""
        return self._reader.position()

    async def close(self) -> None:
        """Close the inner reader."""
        await self._reader.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._reader, name)
