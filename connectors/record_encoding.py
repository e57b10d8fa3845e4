"""Batches to record values: JSON objects and msgpack maps of ``ts``, ``key`` and the fields.

The event time and the key are written under ``time_label`` and ``key_label`` (``ts`` and
``key`` unless a sink's record format names them otherwise), in that order unless
``key_first``, then the fields.

JSON follows RFC 8259: a float that is NaN or infinite is written as ``null`` (JSON has no
such numbers), which a float64 field of our source reads back as NaN. Keys are written as
strings, so they must be UTF-8.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
from numba import njit

from connectors.errors import EncodeError
from connectors.json_writer import put_bytes, write_json_records
from streamdag.batch import Batch

__all__ = [
    "EncodedRecords",
    "encode_json_buffer",
    "encode_json_values",
    "encode_msgpack_buffer",
    "encode_msgpack_values",
    "split_records",
]

_FLOAT, _INTEGER, _BOOLEAN = 0, 1, 2


#: Encoded records back to back, and where each one starts and ends (``offsets[i]`` to
#: ``offsets[i + 1]``): what a sink builds its producer batches from, one buffer per batch.
EncodedRecords = tuple[bytes, npt.NDArray[np.int64]]


def split_records(encoded: EncodedRecords) -> list[bytes]:
    """The records of an encoded buffer, one ``bytes`` each."""
    data, offsets = encoded
    bounds = offsets.tolist()
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def encode_json_values(batch: Batch, time_label: str = "ts", key_label: str = "key",
                       key_first: bool = False) -> list[bytes]:
    """One compact JSON object per record, fields in column order.

    >>> encode_json_values(Batch.from_columns(ts=[7], key=["AAPL"], ok=[True], n=[float("nan")]))
    [b'{"ts":7,"key":"AAPL","ok":true,"n":null}']
    >>> encode_json_values(Batch.from_columns(ts=[7], key=["A"], n=[1]), "t", "symbol")
    [b'{"t":7,"symbol":"A","n":1}']
    >>> encode_json_values(Batch.from_columns(ts=[7], key=["A"], n=[1]), key_first=True)
    [b'{"key":"A","ts":7,"n":1}']
    """
    return split_records(encode_json_buffer(batch, time_label, key_label, key_first))


def encode_json_buffer(batch: Batch, time_label: str = "ts", key_label: str = "key",
                       key_first: bool = False) -> EncodedRecords:
    """The records' JSON objects back to back (written in numba), and their offsets.

    Floats are written as Python's ``repr`` writes them (the shortest text that reads back to
    the same float; ``connectors.json_writer``), keys as ``json.dumps`` writes them.

    >>> batch = Batch.from_columns(ts=[1, 2], key=["a", "b"], v=[0.5, 2])
    >>> data, offsets = encode_json_buffer(batch)
    >>> data, offsets.tolist()
    (b'{"ts":1,"key":"a","v":0.5}{"ts":2,"key":"b","v":2.0}', [0, 26, 52])
    """
    _check_names(batch, time_label, key_label)
    if len(batch) == 0:
        return b"", np.zeros(1, dtype=np.int64)
    _check_utf8_keys(batch.key)
    return write_json_records(batch, time_label, key_label, key_first)


def encode_msgpack_values(batch: Batch, time_label: str = "ts", key_label: str = "key",
                          key_first: bool = False) -> list[bytes]:
    """One msgpack map per record: ``ts`` and integers as int64, floats as float64.

    >>> encoded = encode_msgpack_values(Batch.from_columns(ts=[7], key=["AAPL"], price=[1.5]))
    >>> msgpack.unpackb(encoded[0])
    {'ts': 7, 'key': 'AAPL', 'price': 1.5}
    """
    return split_records(encode_msgpack_buffer(batch, time_label, key_label, key_first))


def encode_msgpack_buffer(batch: Batch, time_label: str = "ts", key_label: str = "key",
                          key_first: bool = False) -> EncodedRecords:
    """The records' msgpack maps back to back (written in numba), and their offsets."""
    _check_names(batch, time_label, key_label)
    count = len(batch)
    if count == 0:
        return b"", np.zeros(1, dtype=np.int64)
    _check_utf8_keys(batch.key)
    field_count = len(batch.columns)
    entries = 2 + field_count
    header = bytes([0x80 | entries]) if entries < 16 else b"\xde" + entries.to_bytes(2, "big")
    header_bytes = np.frombuffer(header, dtype=np.uint8)
    time_label_bytes = np.frombuffer(msgpack.packb(time_label), dtype=np.uint8)
    key_label_bytes = np.frombuffer(msgpack.packb(key_label), dtype=np.uint8)
    labels = [msgpack.packb(name) for name in batch.columns]
    label_bytes = np.frombuffer(b"".join(labels), dtype=np.uint8)
    label_offsets = np.zeros(field_count + 1, dtype=np.int64)
    label_offsets[1:] = np.cumsum([len(label) for label in labels])
    kinds = np.empty(field_count, dtype=np.int64)
    bits = np.empty((count, field_count), dtype=np.uint64)
    for i, (name, column) in enumerate(batch.columns.items()):
        kind = column.dtype.kind
        if kind == "f":
            kinds[i] = _FLOAT
            bits[:, i] = column.astype(np.float64, copy=False).view(np.uint64)
        elif kind in "iu":
            kinds[i] = _INTEGER
            bits[:, i] = column.astype(np.int64, copy=False).view(np.uint64)
        elif kind == "b":
            kinds[i] = _BOOLEAN
            bits[:, i] = column
        else:
            raise EncodeError.column_type(name, column.dtype)
    width = batch.key.dtype.itemsize
    key_bytes = np.ascontiguousarray(batch.key).view(np.uint8).reshape(count, width)
    key_lengths = np.char.str_len(batch.key).astype(np.int64)
    key_header = np.where(key_lengths < 32, 1, np.where(key_lengths < 256, 2,
                          np.where(key_lengths < 65536, 3, 5)))
    value_bytes = np.where(kinds == _BOOLEAN, 1, 9).sum()
    fixed = (header_bytes.shape[0] + time_label_bytes.shape[0] + 9 + key_label_bytes.shape[0]
             + label_bytes.shape[0] + int(value_bytes))
    ends = np.cumsum(fixed + key_header + key_lengths)
    starts = ends - (fixed + key_header + key_lengths)
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    _write_maps(out, starts, header_bytes, key_first, time_label_bytes, batch.ts,
                key_label_bytes, key_bytes, key_lengths,
                label_bytes, label_offsets, kinds, bits)
    offsets = np.zeros(count + 1, dtype=np.int64)
    offsets[1:] = ends
    return out.tobytes(), offsets


@njit(cache=True)
def _put_big_endian(out: Any, at: int, value: np.uint64, width: int) -> int:
    for j in range(width):
        out[at + j] = np.uint8((value >> np.uint64(8 * (width - 1 - j))) & np.uint64(0xFF))
    return at + width


@njit(cache=True)
def _write_key(out: Any, at: int, key_label: Any, key_bytes: Any, key_lengths: Any,
               r: int) -> int:
    at = put_bytes(out, at, key_label)
    length = key_lengths[r]
    if length < 32:
        out[at] = np.uint8(0xA0 | length)
        at += 1
    elif length < 256:
        out[at] = 0xD9
        at = _put_big_endian(out, at + 1, np.uint64(length), 1)
    elif length < 65536:
        out[at] = 0xDA
        at = _put_big_endian(out, at + 1, np.uint64(length), 2)
    else:
        out[at] = 0xDB
        at = _put_big_endian(out, at + 1, np.uint64(length), 4)
    for j in range(length):
        out[at + j] = key_bytes[r, j]
    end: int = at + length
    return end


@njit(cache=True)
def _write_maps(
    out: Any,
    starts: Any,
    header: Any,
    key_first: bool,
    time_label: Any,
    ts: Any,
    key_label: Any,
    key_bytes: Any,
    key_lengths: Any,
    label_bytes: Any,
    label_offsets: Any,
    kinds: Any,
    bits: Any,
) -> None:
    for r in range(starts.shape[0]):
        at = put_bytes(out, starts[r], header)
        if key_first:
            at = _write_key(out, at, key_label, key_bytes, key_lengths, r)
        at = put_bytes(out, at, time_label)
        out[at] = 0xD3
        at = _put_big_endian(out, at + 1, np.uint64(ts[r]), 8)
        if not key_first:
            at = _write_key(out, at, key_label, key_bytes, key_lengths, r)
        for f in range(kinds.shape[0]):
            for j in range(label_offsets[f], label_offsets[f + 1]):
                out[at] = label_bytes[j]
                at += 1
            if kinds[f] == _BOOLEAN:
                out[at] = 0xC3 if bits[r, f] != 0 else 0xC2
                at += 1
            else:
                out[at] = 0xCB if kinds[f] == _FLOAT else 0xD3
                at = _put_big_endian(out, at + 1, bits[r, f], 8)


def _check_names(batch: Batch, time_label: str, key_label: str) -> None:
    for name in (time_label, key_label):
        if name in batch.columns:
            raise EncodeError(
                f"the batch has a column named {name!r}, which the record format reserves for "
                "the event time and the key; rename the column upstream, or name the key and "
                "time fields otherwise (the sink's key_field and time_field)"
            )


#: Keys found to be UTF-8 (keys repeat batch after batch); emptied when full.
_UTF8_KEYS: set[bytes] = set()
_UTF8_KEYS_LIMIT = 1 << 15


def _check_utf8_keys(keys: npt.NDArray[np.bytes_]) -> None:
    """``EncodeError`` when a key is not UTF-8 (a string key of JSON or msgpack must be).

    A batch of ASCII keys needs no look at each key; otherwise each distinct key is decoded
    once and kept for later batches.
    """
    if not bool((keys.view(np.uint8) >= 128).any()):
        return
    distinct = set(keys.tolist())
    if distinct <= _UTF8_KEYS:
        return
    for key in distinct - _UTF8_KEYS:
        try:
            key.decode("utf-8")
        except UnicodeDecodeError:
            raise EncodeError(
                f"key {key!r} is not UTF-8, so it cannot be written as a string; give the "
                "stream text keys, or use raw keys in a sink of your own"
            ) from None
    # Another thread (a backtest's scenarios) may empty the set meanwhile: it only forgets.
    if len(_UTF8_KEYS) + len(distinct) > _UTF8_KEYS_LIMIT:
        _UTF8_KEYS.clear()
    _UTF8_KEYS.update(distinct)
