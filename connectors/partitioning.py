"""Kafka's default key partitioner (murmur2), compiled, so every client agrees on partitions.

Java's producer, librdkafka with ``partitioner=murmur2`` and aiokafka all send a key to
``(murmur2(key) & 0x7fffffff) % partition_count``; so do we.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = ["key_partitions", "murmur2"]

@njit(cache=True)
def _murmur2_row(row: Any, length: int) -> np.uint32:
    h = np.uint32(0x9747B28C) ^ np.uint32(length)
    m = np.uint32(0x5BD1E995)
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = (
            np.uint32(row[i])
            | (np.uint32(row[i + 1]) << np.uint32(8))
            | (np.uint32(row[i + 2]) << np.uint32(16))
            | (np.uint32(row[i + 3]) << np.uint32(24))
        )
        k = np.uint32(k * m)
        k ^= k >> np.uint32(24)
        k = np.uint32(k * m)
        h = np.uint32(h * m)
        h ^= k
    tail = length % 4
    if tail == 3:
        h ^= np.uint32(row[whole + 2]) << np.uint32(16)
    if tail >= 2:
        h ^= np.uint32(row[whole + 1]) << np.uint32(8)
    if tail >= 1:
        h ^= np.uint32(row[whole])
        h = np.uint32(h * m)
    h ^= h >> np.uint32(13)
    h = np.uint32(h * m)
    h ^= h >> np.uint32(15)
    return h


@njit(cache=True)
def _partitions(key_bytes: Any, partition_count: int, out: Any) -> None:
    width = key_bytes.shape[1]
    for r in range(key_bytes.shape[0]):
        row = key_bytes[r]
        # Fixed-width bytes arrays pad with NUL; the key ends at its last non-NUL byte.
        length = width
        while length > 0 and row[length - 1] == 0:
            length -= 1
        positive = np.int64(_murmur2_row(row, length) & np.uint32(0x7FFFFFFF))
        out[r] = positive % partition_count


def key_partitions(keys: npt.NDArray[np.bytes_], partition_count: int) -> npt.NDArray[np.int32]:
    """The partition of each key, as Kafka's default partitioner chooses it.

    >>> key_partitions(np.array([b"AAPL", b"MSFT", b""]), 4).tolist()
    [1, 2, 1]
    """
    if partition_count < 1:
        raise ValueError(f"partition_count must be at least 1, got {partition_count}")
    out = np.empty(keys.shape[0], dtype=np.int32)
    if keys.shape[0] == 0:
        return out
    width = keys.dtype.itemsize
    key_bytes = np.ascontiguousarray(keys).view(np.uint8).reshape(keys.shape[0], width)
    _partitions(key_bytes, partition_count, out)
    return out


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of ``data`` as an unsigned 32-bit int (as aiokafka returns it).

    >>> murmur2(b"AAPL")
    1691292177
    """
    row = np.frombuffer(data, dtype=np.uint8)
    return int(_murmur2_row(row, len(data)))
