"""A hash index over rows keyed by (key slot, start), shared by window and bar tables.

A table keeps its rows packed in a 2-D int64 array whose column 0 is the row's key slot and
column 1 its start (a window's, a bar's, a pane's). The index is an open-addressing array of
row numbers (``EMPTY`` where free), twice the table's capacity and a power of two, probed
linearly from the splitmix64 hash of (slot, start).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = ["EMPTY", "empty_index", "find_row", "index_rows", "row_hash"]

#: A free place in the index.
EMPTY = -1


@njit(cache=True, inline="always")
def row_hash(slot: int, start: int) -> np.uint64:
    """splitmix64 over (slot, start): starts that differ only in high bits still spread."""
    x = np.uint64(start) ^ (np.uint64(slot) * np.uint64(0x9E3779B97F4A7C15))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True, inline="always")
def find_row(identity: Any, index: Any, slot: int, start: int) -> tuple[int, int]:
    """(row of (slot, start) or ``EMPTY``, its place in the index or the free place for it)."""
    mask = index.shape[0] - 1
    position = np.int64(row_hash(slot, start) & np.uint64(mask))
    while True:
        row = index[position]
        if row == EMPTY or (identity[row, 0] == slot and identity[row, 1] == start):
            return int(row), int(position)
        position = (position + 1) & mask


@njit(cache=True)
def index_rows(identity: Any, index: Any, first: int, last: int) -> None:
    """Enter rows ``first`` to ``last`` (exclusive) into the index; their keys are absent."""
    mask = index.shape[0] - 1
    for row in range(first, last):
        position = np.int64(row_hash(identity[row, 0], identity[row, 1]) & np.uint64(mask))
        while index[position] != EMPTY:
            position = (position + 1) & mask
        index[position] = row


def empty_index(capacity: int) -> npt.NDArray[np.int64]:
    """A free index for a table of ``capacity`` rows (a power of two)."""
    return np.full(capacity * 2, EMPTY, dtype=np.int64)
