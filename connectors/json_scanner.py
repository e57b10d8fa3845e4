"""A compiled scanner of flat JSON objects: one pass over a whole fetch, no per-record Python.

It takes exactly the records whose decoding it can be sure of (a flat object; plain ASCII
strings without escapes; numbers in strict JSON grammar; no duplicate fields) and marks every
other record for ``json.loads``, so what the fast path accepts equals what ``json.loads``
would give, and bad records are diagnosed by the exact path.
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
    gather_bytes,
    match_name,
)

__all__ = ["scan_json", "scan_json_records"]

_QUOTE = 34
_BACKSLASH = 92
_OPEN_BRACE = 123
_CLOSE_BRACE = 125
_COLON = 58
_COMMA = 44
_MINUS = 45
_PLUS = 43
_DOT = 46
_ZERO = 48
_NINE = 57
_LOWER_E = 101
_UPPER_E = 69
#: Number tokens longer than this go to the exact path instead of widening the text buffer.
_MAX_NUMBER_TEXT = 40
#: A float whose text the kernel could not convert exactly; ``scan_json`` converts it.
_KIND_FLOAT_TEXT = 8
#: Powers of ten that float64 holds exactly (Clinger's fast path uses them).
_EXACT_POWERS_OF_TEN = np.array([10.0**k for k in range(23)], dtype=np.float64)


@njit(cache=True, inline="always")
def _is_digit(byte: Any) -> bool:
    return bool(_ZERO <= byte <= _NINE)


@njit(cache=True)
def _skip_space(buffer: Any, i: int, stop: int) -> int:
    while i < stop:
        byte = buffer[i]
        if byte != 32 and byte != 9 and byte != 10 and byte != 13:
            break
        i += 1
    return i


@njit(cache=True)
def _plain_string_end(buffer: Any, i: int, stop: int) -> int:
    # Escapes, control bytes and non-ASCII (whose UTF-8 must be validated) go the exact way.
    while i < stop:
        byte = buffer[i]
        if byte == _QUOTE:
            return i
        if byte == _BACKSLASH or byte < 32 or byte >= 128:
            return -1
        i += 1
    return -1


@njit(cache=True)
def _number_end(buffer: Any, i: int, stop: int) -> tuple[int, bool]:
    j = i
    if j < stop and buffer[j] == _MINUS:
        j += 1
    if j >= stop:
        return -1, False
    if buffer[j] == _ZERO:
        j += 1
    elif _is_digit(buffer[j]):
        while j < stop and _is_digit(buffer[j]):
            j += 1
    else:
        return -1, False
    is_float = False
    if j < stop and buffer[j] == _DOT:
        j += 1
        is_float = True
        if j >= stop or not _is_digit(buffer[j]):
            return -1, False
        while j < stop and _is_digit(buffer[j]):
            j += 1
    if j < stop and (buffer[j] == _LOWER_E or buffer[j] == _UPPER_E):
        j += 1
        is_float = True
        if j < stop and (buffer[j] == _PLUS or buffer[j] == _MINUS):
            j += 1
        if j >= stop or not _is_digit(buffer[j]):
            return -1, False
        while j < stop and _is_digit(buffer[j]):
            j += 1
    return j, is_float


@njit(cache=True)
def _parse_int(buffer: Any, i: int, stop: int) -> tuple[bool, int]:
    negative = buffer[i] == _MINUS
    first = i + 1 if negative else i
    if stop - first > 19:
        return False, 0
    magnitude = np.uint64(0)
    for p in range(first, stop):
        magnitude = magnitude * np.uint64(10) + np.uint64(buffer[p] - _ZERO)
    if negative:
        if magnitude > np.uint64(9223372036854775808):
            return False, 0
        if magnitude == np.uint64(9223372036854775808):
            return True, -9223372036854775807 - 1
        return True, int(-np.int64(magnitude))
    if magnitude > np.uint64(9223372036854775807):
        return False, 0
    return True, int(np.int64(magnitude))


@njit(cache=True)
def _exact_float(buffer: Any, i: int, stop: int, powers: Any) -> tuple[bool, float]:
    # A decimal with at most 2**53 as its digits and a power of ten up to 1e22 converts with
    # one correctly rounded IEEE operation (Clinger), the same double float() gives.
    negative = buffer[i] == _MINUS
    j = i + 1 if negative else i
    mantissa = np.uint64(0)
    digits = 0
    exponent = 0
    while j < stop and _is_digit(buffer[j]):
        mantissa = mantissa * np.uint64(10) + np.uint64(buffer[j] - _ZERO)
        digits += 1
        j += 1
    if j < stop and buffer[j] == _DOT:
        j += 1
        while j < stop and _is_digit(buffer[j]):
            mantissa = mantissa * np.uint64(10) + np.uint64(buffer[j] - _ZERO)
            digits += 1
            exponent -= 1
            j += 1
    if digits > 19:
        return False, 0.0
    if j < stop:
        j += 1  # the e or E
        exponent_negative = False
        if buffer[j] == _PLUS or buffer[j] == _MINUS:
            exponent_negative = buffer[j] == _MINUS
            j += 1
        written = 0
        while j < stop:
            written = written * 10 + (buffer[j] - _ZERO)
            if written > 400:
                return False, 0.0
            j += 1
        exponent += -written if exponent_negative else written
    if mantissa > np.uint64(9007199254740992) or exponent < -22 or exponent > 22:
        return False, 0.0
    value = float(mantissa)
    value = value / powers[-exponent] if exponent < 0 else value * powers[exponent]
    return True, -value if negative else value


@njit(cache=True)
def _literal_end(buffer: Any, i: int, stop: int, literal: Any) -> int:
    if i + literal.shape[0] > stop:
        return -1
    for j in range(literal.shape[0]):
        if buffer[i + j] != literal[j]:
            return -1
    return i + int(literal.shape[0])


@njit(cache=True)
def _scan_record(
    buffer: Any,
    i: int,
    stop: int,
    names: Any,
    name_offsets: Any,
    row: int,
    kind: Any,
    start: Any,
    end: Any,
    integer: Any,
    real: Any,
    true_text: Any,
    false_text: Any,
    null_text: Any,
    powers: Any,
) -> bool:
    i = _skip_space(buffer, i, stop)
    if i >= stop or buffer[i] != _OPEN_BRACE:
        return False
    i = _skip_space(buffer, i + 1, stop)
    if i < stop and buffer[i] == _CLOSE_BRACE:
        return _skip_space(buffer, i + 1, stop) == stop
    while True:
        if i >= stop or buffer[i] != _QUOTE:
            return False
        name_end = _plain_string_end(buffer, i + 1, stop)
        if name_end < 0:
            return False
        field = match_name(buffer, i + 1, name_end, names, name_offsets)
        i = _skip_space(buffer, name_end + 1, stop)
        if i >= stop or buffer[i] != _COLON:
            return False
        i = _skip_space(buffer, i + 1, stop)
        if i >= stop:
            return False
        if field >= 0 and kind[row, field] != 0:
            return False  # a repeated field: json.loads keeps the last; let it decide
        byte = buffer[i]
        value_start = i
        value_end = i
        if byte == _QUOTE:
            value_end = _plain_string_end(buffer, i + 1, stop)
            if value_end < 0:
                return False
            value_kind = KIND_STRING
            value_start = i + 1
            i = value_end + 1
        elif byte == _MINUS or _is_digit(byte):
            value_end, is_float = _number_end(buffer, i, stop)
            if value_end < 0:
                return False
            i = value_end
            if is_float:
                value_kind = KIND_FLOAT
                if field >= 0:
                    if value_end - value_start > _MAX_NUMBER_TEXT:
                        return False
                    exact, number_value = _exact_float(buffer, value_start, value_end, powers)
                    if exact:
                        real[row, field] = number_value
                    else:
                        value_kind = _KIND_FLOAT_TEXT
            else:
                value_kind = KIND_INT
                if field >= 0:
                    fits, number = _parse_int(buffer, value_start, value_end)
                    if not fits:
                        return False
                    integer[row, field] = number
        elif byte == 116:
            i = _literal_end(buffer, i, stop, true_text)
            value_kind = KIND_TRUE
        elif byte == 102:
            i = _literal_end(buffer, i, stop, false_text)
            value_kind = KIND_FALSE
        elif byte == 110:
            i = _literal_end(buffer, i, stop, null_text)
            value_kind = KIND_NULL
        else:
            return False  # nested values, NaN, Infinity: the exact path decides
        if i < 0:
            return False
        if field >= 0:
            kind[row, field] = value_kind
            start[row, field] = value_start
            end[row, field] = value_end
        i = _skip_space(buffer, i, stop)
        if i >= stop:
            return False
        if buffer[i] == _COMMA:
            i = _skip_space(buffer, i + 1, stop)
            continue
        if buffer[i] == _CLOSE_BRACE:
            return _skip_space(buffer, i + 1, stop) == stop
        return False


@njit(cache=True)
def scan_json_records(
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
    true_text = np.array([116, 114, 117, 101], dtype=np.uint8)
    false_text = np.array([102, 97, 108, 115, 101], dtype=np.uint8)
    null_text = np.array([110, 117, 108, 108], dtype=np.uint8)
    powers = _EXACT_POWERS_OF_TEN
    for row in range(starts.shape[0]):
        taken = _scan_record(
            buffer, starts[row], ends[row], names, name_offsets, row,
            kind, start, end, integer, real, true_text, false_text, null_text, powers,
        )
        if not taken:
            slow[row] = True


def scan_json(
    buffer: npt.NDArray[np.uint8],
    starts: npt.NDArray[np.int64],
    ends: npt.NDArray[np.int64],
    names: npt.NDArray[np.uint8],
    name_offsets: npt.NDArray[np.int64],
) -> ScanTables:
    """Scan JSON records; every fraction/exponent number of a field ends up in ``real``.

    Short decimals are converted in the kernel; longer ones (e.g. 17-digit ``repr`` output)
    by numpy's correctly rounded parser. Both give the float64 ``json.loads`` gives.
    """
    tables = ScanTables.filled_by(scan_json_records, buffer, starts, ends, names, name_offsets)
    if not (tables.kind == _KIND_FLOAT_TEXT).any():
        return tables  # every float converted in the kernel: no field to look at
    for field in range(tables.kind.shape[1]):
        pending = tables.kind[:, field] == _KIND_FLOAT_TEXT
        rows = np.flatnonzero(pending & ~tables.slow)
        if rows.shape[0]:
            text = gather_bytes(buffer, tables.start[:, field], tables.end[:, field], rows)
            tables.real[rows, field] = text.astype(np.float64)
        tables.kind[pending, field] = KIND_FLOAT
    return tables
