"""A compiled JSON writer of a whole batch: ints, bools, keys, and floats as Python's ``repr``.

A float is written as the shortest decimal that reads back to the same float, the nearest one
to it where several are that short (and the even one on a tie), laid out as Python's ``repr``
lays it out: fixed notation for a decimal exponent from -4 to 15, else ``1.5e+16`` /
``5e-324``; ``NaN`` and infinities are ``null``. The digits come from Ulf Adams' Ryu
(PLDI 2018, ``d2s.c``): the float's interval of valid decimals is scaled by a 125-bit power of
five (tables computed exactly below) and digits are removed while the interval holds two
candidates. numba has no 128-bit integers, so the products are made of 32-bit halves.

>>> data, offsets = write_json_records(
...     Batch.from_columns(ts=[1, -2], key=["a", 'b"'], v=[0.1, 1e16], ok=[True, False]),
...     "ts", "key", False)
>>> data
b'{"ts":1,"key":"a","v":0.1,"ok":true}{"ts":-2,"key":"b\\\\"","v":1e+16,"ok":false}'
>>> offsets.tolist()
[0, 36, 78]
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

from connectors.errors import EncodeError
from streamdag.batch import Batch

__all__ = ["put_bytes", "write_json_records"]

_FLOAT, _INTEGER, _UNSIGNED, _BOOLEAN, _KEY = 0, 1, 2, 3, 4
#: The longest text of one value: a float (``-2.2250738585072014e-308``), an int, a bool.
_VALUE_BYTES = 24

# Ryu's tables: 5^i to 125 bits (for negative binary exponents), and 2^k / 5^q rounded up
# (for the others), each as a low and a high 64-bit word.
_POW5_BITCOUNT = 125
_POW5_INV_BITCOUNT = 125


def _split(values: list[int]) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    mask = (1 << 64) - 1
    return (np.array([v & mask for v in values], dtype=np.uint64),
            np.array([v >> 64 for v in values], dtype=np.uint64))


def _pow5_tables() -> tuple[npt.NDArray[np.uint64], ...]:
    powers = [5**i for i in range(342)]
    inverse = [(1 << (p.bit_length() - 1 + _POW5_INV_BITCOUNT)) // p + 1 for p in powers]
    direct = [p >> (p.bit_length() - _POW5_BITCOUNT) if p.bit_length() >= _POW5_BITCOUNT
              else p << (_POW5_BITCOUNT - p.bit_length()) for p in powers[:326]]
    return (*_split(inverse), *_split(direct))


_INV_LOW, _INV_HIGH, _POW_LOW, _POW_HIGH = _pow5_tables()

_U0, _U1, _U2, _U4, _U5, _U10 = (np.uint64(v) for v in (0, 1, 2, 4, 5, 10))
_LOW32 = np.uint64(0xFFFFFFFF)
_S32, _S52, _S63, _S64 = np.uint64(32), np.uint64(52), np.uint64(63), np.uint64(64)
_MANTISSA = np.uint64((1 << 52) - 1)
_ZERO, _DOT, _MINUS, _PLUS = ord("0"), ord("."), ord("-"), ord("+")
_NULL = np.frombuffer(b"null", dtype=np.uint8)
_TRUE = np.frombuffer(b"true", dtype=np.uint8)
_FALSE = np.frombuffer(b"false", dtype=np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@njit(cache=True)
def _high_product(a: Any, b: Any) -> tuple[Any, Any]:
    """The 128-bit product of two uint64 as (low, high) words."""
    a_low, a_high = a & _LOW32, a >> _S32
    b_low, b_high = b & _LOW32, b >> _S32
    low_low = a_low * b_low
    middle = a_high * b_low + (low_low >> _S32)
    middle_2 = a_low * b_high + (middle & _LOW32)
    high = a_high * b_high + (middle >> _S32) + (middle_2 >> _S32)
    return (middle_2 << _S32) | (low_low & _LOW32), high


@njit(cache=True)
def _mul_shift(m: Any, low: Any, high: Any, shift: int) -> Any:
    """``(m * (high:low)) >> shift`` for ``64 < shift < 128``."""
    low_1, high_1 = _high_product(m, high)
    _, high_0 = _high_product(m, low)
    total = high_0 + low_1
    if total < high_0:
        high_1 += _U1
    distance = np.uint64(shift - 64)
    return (high_1 << (_S64 - distance)) | (total >> distance)


@njit(cache=True)
def _pow5_factor(value: Any) -> int:
    count = 0
    while value > _U0:
        quotient = value // _U5
        if value - quotient * _U5 != _U0:
            break
        value = quotient
        count += 1
    return count


@njit(cache=True)
def _pow5_bits(e: int) -> int:
    return ((e * 1217359) >> 19) + 1


@njit(cache=True)
def _shortest(mantissa: Any, exponent: int) -> tuple[Any, int]:
    """The shortest, nearest decimal ``digits * 10**power`` of a finite nonzero float."""
    # Step 1: the float as m2 * 2**e2, and its interval's ends (4x, to keep them integers).
    if exponent == 0:
        e2 = 1 - 1023 - 52 - 2
        m2 = mantissa
    else:
        e2 = exponent - 1023 - 52 - 2
        m2 = mantissa | (_U1 << _S52)
    accept_bounds = (m2 & _U1) == _U0
    mv = _U4 * m2
    mm_shift = _U1 if (mantissa != _U0 or exponent <= 1) else _U0
    vm_zeros = False
    vr_zeros = False
    # Step 2: the value and both ends in a decimal base, and whether what the scaling cut off
    # was zeros (then the exact value may be a tie).
    if e2 >= 0:
        q = ((e2 * 78913) >> 18) - (1 if e2 > 3 else 0)
        power = q
        shift = -e2 + q + _POW5_INV_BITCOUNT + _pow5_bits(q) - 1
        low, high = _INV_LOW[q], _INV_HIGH[q]
        vr = _mul_shift(mv, low, high, shift)
        vp = _mul_shift(mv + _U2, low, high, shift)
        vm = _mul_shift(mv - _U1 - mm_shift, low, high, shift)
        if q <= 21:
            if mv % _U5 == _U0:
                vr_zeros = _pow5_factor(mv) >= q
            elif accept_bounds:
                vm_zeros = _pow5_factor(mv - _U1 - mm_shift) >= q
            elif _pow5_factor(mv + _U2) >= q:
                vp -= _U1
    else:
        q = ((-e2 * 732923) >> 20) - (1 if -e2 > 1 else 0)
        power = q + e2
        i = -e2 - q
        shift = q - (_pow5_bits(i) - _POW5_BITCOUNT)
        low, high = _POW_LOW[i], _POW_HIGH[i]
        vr = _mul_shift(mv, low, high, shift)
        vp = _mul_shift(mv + _U2, low, high, shift)
        vm = _mul_shift(mv - _U1 - mm_shift, low, high, shift)
        if q <= 1:
            vr_zeros = True
            if accept_bounds:
                vm_zeros = mm_shift == _U1
            else:
                vp -= _U1
        elif q < 63:
            vr_zeros = (mv & ((_U1 << np.uint64(q)) - _U1)) == _U0
    # Step 3: drop digits while the interval still holds a shorter decimal.
    removed = 0
    last_digit = _U0
    while vp // _U10 > vm // _U10:
        vm_zeros = vm_zeros and vm % _U10 == _U0
        vr_zeros = vr_zeros and last_digit == _U0
        last_digit = vr % _U10
        vr, vp, vm = vr // _U10, vp // _U10, vm // _U10
        removed += 1
    if vm_zeros:
        while vm % _U10 == _U0:
            vr_zeros = vr_zeros and last_digit == _U0
            last_digit = vr % _U10
            vr, vp, vm = vr // _U10, vp // _U10, vm // _U10
            removed += 1
    if vr_zeros and last_digit == _U5 and vr % _U2 == _U0:
        last_digit = _U4  # an exact tie: round to even
    # Step 4: the nearest of them (up when the value's own decimal is outside the interval).
    round_up = (vr == vm and (not accept_bounds or not vm_zeros)) or last_digit >= _U5
    return vr + (_U1 if round_up else _U0), power + removed


@njit(cache=True)
def _digit_count(value: Any) -> int:
    count = 1
    while value >= _U10:
        value //= _U10
        count += 1
    return count


@njit(cache=True)
def _put_digits(out: Any, at: int, value: Any, count: int) -> None:
    for j in range(count - 1, -1, -1):
        out[at + j] = _ZERO + np.uint8(value % _U10)
        value //= _U10


@njit(cache=True)
def put_bytes(out: Any, at: int, data: Any) -> int:
    """Copy ``data`` into ``out`` at ``at``; where it ends (a compiled writers' step)."""
    for j in range(data.shape[0]):
        out[at + j] = data[j]
    end: int = at + data.shape[0]
    return end


@njit(cache=True)
def _write_float(out: Any, at: int, bits: Any) -> int:
    """``repr`` of the float of ``bits`` (``null`` when not finite) at ``at``; the end."""
    exponent = int((bits >> _S52) & np.uint64(0x7FF))
    mantissa = bits & _MANTISSA
    if exponent == 0x7FF:
        return put_bytes(out, at, _NULL)
    if bits >> _S63:
        out[at] = _MINUS
        at += 1
    if exponent == 0 and mantissa == _U0:
        out[at], out[at + 1], out[at + 2] = _ZERO, _DOT, _ZERO
        return at + 3
    digits, power = _shortest(mantissa, exponent)
    count = _digit_count(digits)
    point = power + count  # the value is 0.DIGITS * 10**point
    if point <= -4 or point > 16:
        # d[.ddd]e+XX, with at least two exponent digits.
        _put_digits(out, at + 1, digits, count)
        out[at] = out[at + 1]
        if count > 1:
            out[at + 1] = _DOT
            at += count + 1
        else:
            at += 1
        out[at] = ord("e")
        scale = point - 1
        out[at + 1] = _MINUS if scale < 0 else _PLUS
        scale = abs(scale)
        width = 2 if scale < 100 else 3
        _put_digits(out, at + 2, np.uint64(scale), width)
        return at + 2 + width
    if point <= 0:
        # 0.000ddd
        out[at], out[at + 1] = _ZERO, _DOT
        for j in range(-point):
            out[at + 2 + j] = _ZERO
        _put_digits(out, at + 2 - point, digits, count)
        end: int = at + 2 - point + count
        return end
    if point < count:
        # ddd.ddd
        _put_digits(out, at + 1, digits, count)
        for j in range(point):
            out[at + j] = out[at + 1 + j]
        out[at + point] = _DOT
        return at + count + 1
    # ddd000.0
    _put_digits(out, at, digits, count)
    for j in range(count, point):
        out[at + j] = _ZERO
    out[at + point], out[at + point + 1] = _DOT, _ZERO
    return at + point + 2


@njit(cache=True)
def _write_integer(out: Any, at: int, bits: Any, signed: bool) -> int:
    magnitude = bits
    if signed and bits >> _S63:
        out[at] = _MINUS
        at += 1
        magnitude = (~bits) + _U1
    count = _digit_count(magnitude)
    _put_digits(out, at, magnitude, count)
    return at + count


@njit(cache=True)
def _write_key(out: Any, at: int, key: Any) -> int:
    """A key's bytes as a JSON string, escaped as ``json.dumps(..., ensure_ascii=False)``."""
    length = key.shape[0]
    while length > 0 and key[length - 1] == 0:  # numpy drops a bytes value's trailing NULs
        length -= 1
    out[at] = ord('"')
    at += 1
    for j in range(length):
        byte = key[j]
        if byte == ord('"') or byte == ord("\\"):
            out[at], out[at + 1] = ord("\\"), byte
            at += 2
        elif byte >= 0x20:
            out[at] = byte
            at += 1
        else:
            out[at] = ord("\\")
            if byte == 0x0A:
                out[at + 1] = ord("n")
            elif byte == 0x0D:
                out[at + 1] = ord("r")
            elif byte == 0x09:
                out[at + 1] = ord("t")
            elif byte == 0x08:
                out[at + 1] = ord("b")
            elif byte == 0x0C:
                out[at + 1] = ord("f")
            else:
                out[at + 1], out[at + 2], out[at + 3] = ord("u"), _ZERO, _ZERO
                out[at + 4], out[at + 5] = _HEX[byte >> 4], _HEX[byte & 15]
                at += 4
            at += 2
    out[at] = ord('"')
    end: int = at + 1
    return end


@njit(cache=True)
def _write_records(out: Any, offsets: Any, prefixes: Any, prefix_ends: Any, kinds: Any,
                   values: Any, keys: Any) -> int:
    """Every record's object into ``out`` and its end into ``offsets``; the bytes written."""
    at = 0
    for r in range(keys.shape[0]):
        start = 0
        for f in range(kinds.shape[0]):
            for j in range(start, prefix_ends[f]):
                out[at] = prefixes[j]
                at += 1
            start = prefix_ends[f]
            kind = kinds[f]
            if kind == _FLOAT:
                at = _write_float(out, at, values[f, r])
            elif kind == _BOOLEAN:
                at = put_bytes(out, at, _TRUE if values[f, r] != _U0 else _FALSE)
            elif kind == _KEY:
                at = _write_key(out, at, keys[r])
            else:
                at = _write_integer(out, at, values[f, r], kind == _INTEGER)
        out[at] = ord("}")
        at += 1
        offsets[r + 1] = at
    return at


#: Per record layout (labels, order, column kinds): the writer's prefixes and kinds.
_LAYOUTS: dict[tuple[Any, ...], tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64],
                                       npt.NDArray[np.int64], int]] = {}
_LAYOUTS_LIMIT = 256


def _layout(batch: Batch, time_label: str, key_label: str, key_first: bool
            ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.int64], int]:
    """Each value's prefix (``{"label":`` or ``,"label":``) and kind, and the bytes a record
    takes beyond its key; one per record shape, kept (shapes repeat batch after batch)."""
    shape = (time_label, key_label, key_first,
             *((name, column.dtype.kind) for name, column in batch.columns.items()))
    found = _LAYOUTS.get(shape)
    if found is not None:
        return found
    named = [(time_label, _INTEGER), (key_label, _KEY)]
    if key_first:
        named.reverse()
    for name, column in batch.columns.items():
        named.append((name, _column_kind(name, column)))
    prefixes = [("{" if i == 0 else ",") + json.dumps(label) + ":"
                for i, (label, _) in enumerate(named)]
    prefix_bytes = np.frombuffer("".join(prefixes).encode("ascii"), dtype=np.uint8)
    prefix_ends = np.cumsum([len(prefix) for prefix in prefixes]).astype(np.int64)
    kinds = np.array([kind for _, kind in named], dtype=np.int64)
    fixed = int(prefix_ends[-1]) + 1 + _VALUE_BYTES * (len(named) - 1)
    found = (prefix_bytes, prefix_ends, kinds, fixed)
    if len(_LAYOUTS) >= _LAYOUTS_LIMIT:
        _LAYOUTS.clear()
    _LAYOUTS[shape] = found
    return found


def _column_kind(name: str, column: npt.NDArray[Any]) -> int:
    kind = column.dtype.kind
    if kind == "f":
        return _FLOAT
    if kind == "i":
        return _INTEGER
    if kind == "u":
        return _UNSIGNED
    if kind == "b":
        return _BOOLEAN
    raise EncodeError.column_type(name, column.dtype)


def write_json_records(batch: Batch, time_label: str, key_label: str,
                       key_first: bool) -> tuple[bytes, npt.NDArray[np.int64]]:
    """The records' JSON objects back to back, and their offsets (``offsets[0]`` is 0).

    Keys are written as they are: the caller has checked that they are UTF-8.
    """
    count = len(batch)
    prefixes, prefix_ends, kinds, fixed = _layout(batch, time_label, key_label, key_first)
    # Step 1: every value as 64 bits, one row per value column (the key's row is unused).
    values = np.empty((kinds.shape[0], count), dtype=np.uint64)
    columns = iter(batch.columns.values())
    for f, kind in enumerate(kinds.tolist()):
        if kind == _KEY:
            continue
        column = batch.ts if f < 2 else next(columns)  # the key's is skipped above
        if kind == _FLOAT:
            values[f] = column.astype(np.float64, copy=False).view(np.uint64)
        elif kind == _INTEGER:
            values[f] = column.astype(np.int64, copy=False).view(np.uint64)
        else:
            values[f] = column
    # Step 2: the records, into a buffer as large as they can be.
    width = batch.key.dtype.itemsize
    keys = np.ascontiguousarray(batch.key).view(np.uint8).reshape(count, width)
    keys.flags.writeable = False  # one kernel variant, the warmed one, for every batch
    out = np.empty(count * (fixed + 2 + 6 * width), dtype=np.uint8)
    offsets = np.zeros(count + 1, dtype=np.int64)
    end = _write_records(out, offsets, prefixes, prefix_ends, kinds, values, keys)
    return out[:end].tobytes(), offsets
