"""A compiled scanner of flat msgpack maps: one pass over a whole fetch, no per-record Python.

It takes the records whose decoding it can be sure of (a map with string keys; scalar values;
ASCII strings without NUL; integers within int64) and marks every other record for
``msgpack.unpackb``, which accepts it with the same result or says what is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from connectors.scanning import (
    KIND_FALSE,
    KIND_FLOAT,
    KIND_INT,
    KIND_NULL,
    KIND_STRING,
    KIND_TRUE,
    ScanTables,
    match_name,
)

__all__ = ["scan_msgpack", "scan_msgpack_records"]

_UNSUPPORTED = -1


@njit(cache=True)
def _big_endian(buffer: Any, i: int, width: int) -> int:
    # int64 throughout: eight bytes wrap into the sign bit, which callers read as such.
    value = 0
    for j in range(width):
        value = (value << 8) | buffer[i + j]
    return value


@njit(cache=True)
def _string_span(buffer: Any, i: int, stop: int) -> tuple[int, int]:
    # Returns (first byte, end) of a str at i, or (-1, -1) when i is not a str header.
    byte = buffer[i]
    if 0xA0 <= byte <= 0xBF:
        first, length = i + 1, int(byte & 0x1F)
    elif byte == 0xD9 and i + 1 < stop:
        first, length = i + 2, int(buffer[i + 1])
    elif byte == 0xDA and i + 2 < stop:
        first, length = i + 3, int(_big_endian(buffer, i + 1, 2))
    elif byte == 0xDB and i + 4 < stop:
        first, length = i + 5, int(_big_endian(buffer, i + 1, 4))
    else:
        return -1, -1
    if first + length > stop:
        return -1, -1
    return first, first + length


@njit(cache=True)
def _is_plain_ascii(buffer: Any, first: int, stop: int) -> bool:
    # Non-ASCII needs UTF-8 validation, and a NUL cannot live in a fixed-width bytes key.
    for j in range(first, stop):  # noqa: SIM110 - numba compiles loops, not generators
        if buffer[j] == 0 or buffer[j] >= 128:
            return False
    return True


@njit(cache=True)
def _scan_value(
    buffer: Any, i: int, stop: int, bits: Any
) -> tuple[int, int, int, int, int, float]:
    """Read the scalar at i: (kind, next i, span first, span end, integer, real)."""
    byte = buffer[i]
    if byte <= 0x7F:
        return KIND_INT, i + 1, 0, 0, int(byte), 0.0
    if byte >= 0xE0:
        return KIND_INT, i + 1, 0, 0, int(byte) - 256, 0.0
    if byte == 0xC0:
        return KIND_NULL, i + 1, 0, 0, 0, 0.0
    if byte == 0xC2:
        return KIND_FALSE, i + 1, 0, 0, 0, 0.0
    if byte == 0xC3:
        return KIND_TRUE, i + 1, 0, 0, 0, 0.0
    if byte == 0xCB and i + 9 <= stop:
        bits[0] = _big_endian(buffer, i + 1, 8)
        return KIND_FLOAT, i + 9, 0, 0, 0, bits.view(np.float64)[0]
    if byte == 0xCA and i + 5 <= stop:
        narrow = bits.view(np.int32)
        narrow[0] = _big_endian(buffer, i + 1, 4)
        return KIND_FLOAT, i + 5, 0, 0, 0, float(narrow.view(np.float32)[0])
    if 0xCC <= byte <= 0xCF:
        width = 1 << int(byte - 0xCC)
        if i + 1 + width > stop:
            return _UNSUPPORTED, 0, 0, 0, 0, 0.0
        magnitude = _big_endian(buffer, i + 1, width)
        if magnitude < 0:  # a uint64 beyond int64: the exact path says so
            return _UNSUPPORTED, 0, 0, 0, 0, 0.0
        return KIND_INT, i + 1 + width, 0, 0, magnitude, 0.0
    if 0xD0 <= byte <= 0xD3:
        width = 1 << int(byte - 0xD0)
        if i + 1 + width > stop:
            return _UNSUPPORTED, 0, 0, 0, 0, 0.0
        shift = 64 - 8 * width
        # Sign-extend the big-endian two's complement of the given width.
        signed = (_big_endian(buffer, i + 1, width) << shift) >> shift
        return KIND_INT, i + 1 + width, 0, 0, signed, 0.0
    first, end = _string_span(buffer, i, stop)
    if first >= 0:
        if not _is_plain_ascii(buffer, first, end):
            return _UNSUPPORTED, 0, 0, 0, 0, 0.0
        return KIND_STRING, end, first, end, 0, 0.0
    return _UNSUPPORTED, 0, 0, 0, 0, 0.0


@njit(cache=True)
def _skip_binary(buffer: Any, i: int, stop: int) -> int:
    # bin values of unknown fields are skipped; anything else unknown goes the exact way.
    byte = buffer[i]
    if byte == 0xC4 and i + 2 <= stop:
        end = i + 2 + int(buffer[i + 1])
    elif byte == 0xC5 and i + 3 <= stop:
        end = i + 3 + int(_big_endian(buffer, i + 1, 2))
    elif byte == 0xC6 and i + 5 <= stop:
        end = i + 5 + int(_big_endian(buffer, i + 1, 4))
    else:
        return -1
    return end if end <= stop else -1


@njit(cache=True)
def _scan_record(
    buffer: Any,
    i: int,
    stop: int,
    names: Any,
    name_offsets: Any,
    row: int,
    tables_kind: Any,
    tables_start: Any,
    tables_end: Any,
    tables_integer: Any,
    tables_real: Any,
    bits: Any,
) -> bool:
    if i >= stop:
        return False
    byte = buffer[i]
    if 0x80 <= byte <= 0x8F:
        count = int(byte & 0x0F)
        i += 1
    elif byte == 0xDE and i + 3 <= stop:
        count = int(_big_endian(buffer, i + 1, 2))
        i += 3
    elif byte == 0xDF and i + 5 <= stop:
        count = int(_big_endian(buffer, i + 1, 4))
        i += 5
    else:
        return False
    for _ in range(count):
        if i >= stop:
            return False
        name_first, name_end = _string_span(buffer, i, stop)
        if name_first < 0 or not _is_plain_ascii(buffer, name_first, name_end):
            return False
        field = match_name(buffer, name_first, name_end, names, name_offsets)
        i = name_end
        if i >= stop:
            return False
        if field < 0:
            skipped = _skip_binary(buffer, i, stop)
            if skipped >= 0:
                i = skipped
                continue
        elif tables_kind[row, field] != 0:
            return False  # a repeated key: unpackb keeps the last; let it decide
        kind, i, first, end, integer, real = _scan_value(buffer, i, stop, bits)
        if kind == _UNSUPPORTED:
            return False
        if field >= 0:
            tables_kind[row, field] = kind
            tables_start[row, field] = first
            tables_end[row, field] = end
            tables_integer[row, field] = integer
            tables_real[row, field] = real
    return i == stop


@njit(cache=True)
def scan_msgpack_records(
    buffer: Any,
    starts: Any,
    ends: Any,
    names: Any,
    name_offsets: Any,
    kind: Any,
    start: Any,
    end: Any,
    integer: Any,
    real: Any,
    slow: Any,
) -> None:
    """Fill the scan tables for every record; mark records the fast path cannot take."""
    bits = np.zeros(1, dtype=np.int64)
    for row in range(starts.shape[0]):
        taken = _scan_record(
            buffer, starts[row], ends[row], names, name_offsets, row,
            kind, start, end, integer, real, bits,
        )
        if not taken:
            slow[row] = True


def scan_msgpack(
    buffer: npt.NDArray[np.uint8],
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    names: npt.NDArray[np.uint8],
    name_offsets: npt.NDArray[np.int64],
) -> ScanTables:
    """Scan msgpack records into tables (floats, float32 widened, land in ``real``)."""
    return ScanTables.filled_by(scan_msgpack_records, buffer, starts, ends, names, name_offsets)
