"""Stable 64-bit key hashing and the key -> dense slot table that kernels index by."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.errors import SnapshotCorruptError
from streamdag.errors import KeyCollisionError

__all__ = ["KeySlots", "hash_keys"]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_EMPTY = -1
_OK, _GROW, _COLLISION = 0, 1, 2


@njit(cache=True, inline="always")
def _key_length(row: Any) -> int:
    # Fixed-width bytes arrays pad with NUL; the key ends at its last non-NUL byte.
    length = row.shape[0]
    while length > 0 and row[length - 1] == 0:
        length -= 1
    return int(length)


@njit(cache=True, inline="always")
def _fnv1a(row: Any, length: int) -> np.uint64:
    h = np.uint64(0xCBF29CE484222325)
    for j in range(length):
        h = (h ^ np.uint64(row[j])) * np.uint64(0x100000001B3)
    return h


@njit(cache=True)
def _hash_rows(key_bytes: Any, out: Any) -> None:
    for i in range(key_bytes.shape[0]):
        row = key_bytes[i]
        out[i] = _fnv1a(row, _key_length(row))


@njit(cache=True)
def _assign(
    key_bytes: Any,
    start: int,
    table_hash: Any,
    table_slot: Any,
    pool: Any,
    key_offset: Any,
    key_length: Any,
    state: Any,
    out: Any,
) -> tuple[int, int]:
    # state[0] = keys in use, state[1] = pool bytes in use. Returns (status, record index).
    mask = table_hash.shape[0] - 1
    last_hash = np.uint64(0)
    last_slot = -1
    last_row = -1
    for i in range(start, key_bytes.shape[0]):
        row = key_bytes[i]
        length = _key_length(row)
        h = _fnv1a(row, length)
        if last_slot >= 0 and h == last_hash:
            same = length == key_length[last_slot]
            if same:
                prev = key_bytes[last_row]
                for j in range(length):
                    if prev[j] != row[j]:
                        same = False
                        break
            if same:
                out[i] = last_slot
                continue
        position = np.int64(h & np.uint64(mask))
        while True:
            slot = table_slot[position]
            if slot == _EMPTY:
                n = state[0]
                if n >= key_offset.shape[0] or state[1] + length > pool.shape[0] or (
                    (n + 1) * 2 > table_slot.shape[0]
                ):
                    return _GROW, i
                table_slot[position] = n
                table_hash[position] = h
                key_offset[n] = state[1]
                key_length[n] = length
                for j in range(length):
                    pool[state[1] + j] = row[j]
                state[0] = n + 1
                state[1] += length
                break
            if table_hash[position] == h:
                if key_length[slot] != length:
                    return _COLLISION, i
                offset = key_offset[slot]
                for j in range(length):
                    if pool[offset + j] != row[j]:
                        return _COLLISION, i
                break
            position = (position + 1) & mask
        out[i] = table_slot[position]
        last_hash, last_slot, last_row = h, out[i], i
    return _OK, key_bytes.shape[0]


def _as_bytes_matrix(keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.uint8]:
    width = keys.dtype.itemsize
    contiguous = np.ascontiguousarray(keys)
    return contiguous.view(np.uint8).reshape(len(keys), width)


def hash_keys(keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.uint64]:
    """FNV-1a 64-bit hashes of keys; stable across processes, platforms and array widths.

    >>> int(hash_keys(np.array([b"a"]))[0]) == int(hash_keys(np.array([b"a"], dtype="S8"))[0])
    True
    """
    out = np.empty(len(keys), dtype=np.uint64)
    if len(keys):
        _hash_rows(_as_bytes_matrix(keys), out)
    return out


class KeySlots:
    """Maps keys to dense slots 0..n-1 in first-seen order; grows by doubling.

    Two different keys with the same 64-bit hash raise KeyCollisionError: never merged.

    >>> table = KeySlots()
    >>> table.slots(np.array([b"AAPL", b"MSFT", b"AAPL"])).tolist()
    [0, 1, 0]
    >>> table.key_of(1), len(table)
    (b'MSFT', 2)
    """

    def __init__(self, capacity: int = 64) -> None:
        capacity = max(8, 1 << (max(capacity, 1) - 1).bit_length())
        self._table_hash = np.zeros(capacity * 2, dtype=np.uint64)
        self._table_slot = np.full(capacity * 2, _EMPTY, dtype=np.int64)
        self._pool = np.zeros(capacity * 16, dtype=np.uint8)
        self._key_offset = np.zeros(capacity, dtype=np.int64)
        self._key_length = np.zeros(capacity, dtype=np.int64)
        self._state = np.zeros(2, dtype=np.int64)

    def __len__(self) -> int:
        return int(self._state[0])

    @property
    def capacity(self) -> int:
        """Keys that fit before the next doubling."""
        return len(self._key_offset)

    def slots(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """The slot of every key, assigning new slots to keys not seen before."""
        out = np.empty(len(keys), dtype=np.int64)
        if not len(keys):
            return out
        matrix = _as_bytes_matrix(keys)
        start = 0
        while True:
            status, index = _assign(
                matrix,
                start,
                self._table_hash,
                self._table_slot,
                self._pool,
                self._key_offset,
                self._key_length,
                self._state,
                out,
            )
            if status == _OK:
                return out
            if status == _COLLISION:
                raise KeyCollisionError(
                    f"key {bytes(keys[index])!r} has the same 64-bit hash as an existing key "
                    "but different bytes; it is not merged. Rename one of the keys."
                )
            self._grow(matrix.shape[1])
            start = index

    def key_of(self, slot: int) -> bytes:
        """The key bytes stored for ``slot``."""
        if not 0 <= slot < len(self):
            raise IndexError(f"slot {slot} is not assigned; {len(self)} keys are known")
        offset = int(self._key_offset[slot])
        return bytes(self._pool[offset : offset + int(self._key_length[slot])])

    def keys(self) -> npt.NDArray[np.bytes_]:
        """Every known key, in slot order."""
        return np.array([self.key_of(s) for s in range(len(self))], dtype=np.bytes_)

    def resident_bytes(self) -> int:
        """Bytes held by the table's arrays."""
        arrays = (self._table_hash, self._table_slot, self._pool, self._key_offset,
                  self._key_length, self._state)
        return int(sum(a.nbytes for a in arrays))

    def _grow(self, key_width: int) -> None:
        n = len(self)
        if n >= self.capacity or (n + 1) * 2 > len(self._table_slot):
            self._rehash(self.capacity * 2)
        used = int(self._state[1])
        if used + key_width > len(self._pool):
            pool = np.zeros(max(len(self._pool) * 2, used + key_width * 64), dtype=np.uint8)
            pool[:used] = self._pool[:used]
            self._pool = pool

    def _rehash(self, capacity: int) -> None:
        n = len(self)
        offsets = np.zeros(capacity, dtype=np.int64)
        lengths = np.zeros(capacity, dtype=np.int64)
        offsets[:n] = self._key_offset[:n]
        lengths[:n] = self._key_length[:n]
        table_hash = np.zeros(capacity * 2, dtype=np.uint64)
        table_slot = np.full(capacity * 2, _EMPTY, dtype=np.int64)
        _reinsert(self._table_hash, self._table_slot, table_hash, table_slot)
        self._key_offset, self._key_length = offsets, lengths
        self._table_hash, self._table_slot = table_hash, table_slot

    def snapshot(self) -> bytes:
        """The table as bytes; ``KeySlots.restore`` rebuilds it exactly."""
        buffer = io.BytesIO()
        n, used = len(self), int(self._state[1])
        np.savez(
            buffer,
            pool=self._pool[:used],
            offsets=self._key_offset[:n],
            lengths=self._key_length[:n],
        )
        return buffer.getvalue()

    @classmethod
    def restore(cls, data: bytes) -> KeySlots:
        """Rebuild a table from ``snapshot()`` bytes, with the same slots."""
        arrays = np.load(io.BytesIO(data))
        pool, offsets, lengths = arrays["pool"], arrays["offsets"], arrays["lengths"]
        table = cls(max(8, len(offsets)))
        keys = [bytes(pool[o : o + n]) for o, n in zip(offsets.tolist(), lengths.tolist(),
                                                      strict=True)]
        if keys:
            slots = table.slots(np.array(keys, dtype=np.bytes_))
            if slots.tolist() != list(range(len(keys))):
                raise SnapshotCorruptError(
                    "key-slot snapshot holds duplicate keys; it is corrupt. Restore from an "
                    "earlier checkpoint"
                )
        return table


@njit(cache=True)
def _reinsert(old_hash: Any, old_slot: Any, new_hash: Any, new_slot: Any) -> None:
    mask = new_slot.shape[0] - 1
    for i in range(old_slot.shape[0]):
        slot = old_slot[i]
        if slot == _EMPTY:
            continue
        h = old_hash[i]
        position = np.int64(h & np.uint64(mask))
        while new_slot[position] != _EMPTY:
            position = (position + 1) & mask
        new_slot[position] = slot
        new_hash[position] = h
