"""What the compiled record scanners share: token kinds, scan tables, name matching, gathering.

A scanner walks the concatenated values of one fetch and, for every record and every field
it was asked for, records the kind of the value found and where it lies (or its number).
Records it cannot take with certainty are marked for the exact per-record path, which either
accepts them with the same result or names what is wrong with them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = [
    "KIND_FALSE",
    "KIND_FLOAT",
    "KIND_INT",
    "KIND_MISSING",
    "KIND_NULL",
    "KIND_STRING",
    "KIND_TRUE",
    "ScanTables",
    "concatenate_values",
    "encode_names",
    "gather_bytes",
    "match_name",
]

KIND_MISSING = 0
KIND_INT = 1
KIND_FLOAT = 2
KIND_TRUE = 3
KIND_FALSE = 4
KIND_STRING = 5
KIND_NULL = 6


@dataclass
class ScanTables:
    """Per record and field: value kind, byte span, integer and float value, and fast/slow.

    ``slow[r]`` is True when record ``r`` must take the exact per-record path.
    """

    kind: npt.NDArray[np.int8]
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    integer: npt.NDArray[np.int64]
    real: npt.NDArray[np.float64]
    slow: npt.NDArray[np.bool_]

    @classmethod
    def allocate(cls, records: int, fields: int) -> ScanTables:
        """Empty tables for ``records`` records of ``fields`` fields (every kind missing)."""
        return cls(
            kind=np.zeros((records, fields), dtype=np.int8),
            start=np.zeros((records, fields), dtype=np.int64),
            end=np.zeros((records, fields), dtype=np.int64),
            integer=np.zeros((records, fields), dtype=np.int64),
            real=np.zeros((records, fields), dtype=np.float64),
            slow=np.zeros(records, dtype=np.bool_),
        )

    @classmethod
    def filled_by(
        cls,
        kernel: Callable[..., None],
        buffer: npt.NDArray[np.uint8],
        starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
        names: npt.NDArray[np.uint8],
        name_offsets: npt.NDArray[np.int64],
    ) -> ScanTables:
        """Tables for every record of a fetch, filled by a compiled scanner ``kernel``.

        ``kernel`` takes the fetch, the names, then every table in field order.
        """
        tables = cls.allocate(starts.shape[0], name_offsets.shape[0] - 1)
        kernel(
            buffer, starts, ends, names, name_offsets,
            tables.kind, tables.start, tables.end, tables.integer, tables.real, tables.slow,
        )
        return tables


def concatenate_values(
    values: Sequence[bytes | None],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """One byte buffer holding every value end to end, with each value's start and end.

    A missing value (a tombstone) is an empty span.
    """
    present: Sequence[bytes] = (
        [value or b"" for value in values] if None in values else cast(Sequence[bytes], values)
    )
    lengths = np.fromiter(map(len, present), dtype=np.int64, count=len(present))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    buffer = np.frombuffer(b"".join(present), dtype=np.uint8)
    return buffer, starts, ends


def encode_names(names: Sequence[str]) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Field names as one UTF-8 buffer plus offsets (``offsets[i]:offsets[i+1]`` is name i)."""
    encoded = [name.encode("utf-8") for name in names]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(item) for item in encoded])
    buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return buffer, offsets


@njit(cache=True)
def _gather(buffer: Any, starts: Any, ends: Any, rows: Any, out: Any) -> None:
    for i in range(rows.shape[0]):
        row = rows[i]
        length = ends[row] - starts[row]
        for j in range(length):
            out[i, j] = buffer[starts[row] + j]


def gather_bytes(
    buffer: npt.NDArray[np.uint8],
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
) -> npt.NDArray[np.bytes_]:
    """The spans ``buffer[starts[r]:ends[r]]`` of ``rows`` as a fixed-width bytes array."""
    if rows.shape[0] == 0:
        return np.empty(0, dtype="S1")
    width = max(int((ends[rows] - starts[rows]).max()), 1)
    out = np.zeros((rows.shape[0], width), dtype=np.uint8)
    _gather(buffer, starts, ends, rows, out)
    return out.view(f"S{width}").reshape(rows.shape[0])


@njit(cache=True)
def match_name(buffer: Any, first: int, stop: int, names: Any, name_offsets: Any) -> int:
    """Index of the name equal to ``buffer[first:stop]`` among ``encode_names``' output, or -1."""
    length = stop - first
    for field in range(name_offsets.shape[0] - 1):
        name_start = name_offsets[field]
        if name_offsets[field + 1] - name_start != length:
            continue
        same = True
        for j in range(length):
            if buffer[first + j] != names[name_start + j]:
                same = False
                break
        if same:
            return field
    return -1
