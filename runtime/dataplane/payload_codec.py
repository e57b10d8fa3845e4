"""A push's payloads as they travel on a data connection: packed with ``struct``, arrays raw.

What a node sends is nearly always a batch and a control message or two (a watermark, a
status, end of stream, a barrier). Pickle spends most of a small push's cost on numpy's
generic array and dtype reconstruction; here a batch is a fixed header, its dtypes and column
names, then its arrays' bytes, and the receiver's arrays are read-only views of what it read
(no copy), as Ray hands them over. Anything else (a payload of another type, an object array)
goes pickled, arrays out of band (``out_of_band``), so every payload still travels.

Layout (little-endian):

1. a kind byte: ``K`` (packed) or ``P`` (pickled: the ``out_of_band`` framing follows);
2. packed: the number of payloads (unsigned 16-bit), then each payload, a tag byte first:

   - ``W`` watermark, ``R`` barrier: a signed 64-bit timestamp or checkpoint id;
   - ``S`` watermark status: one byte, idle or not; ``E`` end of stream: nothing;
   - ``M`` partition marks: their number (unsigned 16-bit), then each partition (signed
     32-bit) and its timestamp (signed 64-bit);
   - ``B`` batch: records (unsigned 64-bit), columns, whether it has lineage (one byte each);
     then for each array (ts, key, the columns in order, then partition and offset when it
     has lineage): its dtype's string and, for a column, its name, each after its length in
     one byte; then the arrays' bytes in the same order.

>>> import numpy as np
>>> from runtime.dataplane.messages import Watermark
>>> sent = (Batch.from_columns(ts=[1, 2], key=["a", "bb"], price=[1.5, 2.5]), Watermark(3))
>>> data = encoded_payloads(sent)
>>> data[:1], len(data)
(b'K', 77)
>>> batch, watermark = decoded_payloads(memoryview(data))
>>> batch.to_records()
[{'ts': 1, 'key': 'a', 'price': 1.5}, {'ts': 2, 'key': 'bb', 'price': 2.5}]
>>> watermark, batch.ts.flags.writeable
(Watermark(timestamp=3), False)
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

import numpy as np

from runtime.dataplane.messages import (
    Barrier,
    EndOfStream,
    PartitionMarks,
    Payload,
    Watermark,
    WatermarkStatus,
)
from runtime.dataplane.out_of_band import framed, unframed
from streamdag.batch import Batch

__all__ = ["decoded_payloads", "encoded_payloads"]

_PACKED, _PICKLED = b"K", b"P"
#: The kind byte and the number of payloads.
_HEAD = struct.Struct("<cH")
#: A watermark's or a barrier's tag and number.
_NUMBERED = struct.Struct("<cq")
_STATUS = struct.Struct("<c?")
#: Partition marks' tag and number, then each mark.
_MARKS = struct.Struct("<cH")
_MARK = struct.Struct("<iq")
#: A batch's tag, records, columns and whether it has lineage.
_BATCH = struct.Struct("<cQBB")
#: Each tag's byte as ``memoryview`` indexing gives it.
_W, _R, _S, _E, _B, _M = b"W"[0], b"R"[0], b"S"[0], b"E"[0], b"B"[0], b"M"[0]
#: Dtypes and column names seen so far, by their encoded form (a node sees a few).
_DTYPES: dict[bytes, np.dtype[Any]] = {}
_NAMES: dict[bytes, str] = {}


def encoded_payloads(payloads: tuple[Payload, ...]) -> bytes:
    """The payloads as they travel (see the module's layout); pickled if one does not pack."""
    parts: list[Any] = [_HEAD.pack(_PACKED, len(payloads))]
    for payload in payloads:
        kind = type(payload)  # exactly these types: a subclass goes pickled, as it is
        if kind is Batch and isinstance(payload, Batch):
            if not _pack_batch(payload, parts):
                return _pickled(payloads)
        elif kind is Watermark and isinstance(payload, Watermark):
            parts.append(_NUMBERED.pack(b"W", payload.timestamp))
        elif kind is Barrier and isinstance(payload, Barrier):
            parts.append(_NUMBERED.pack(b"R", payload.checkpoint_id))
        elif kind is WatermarkStatus and isinstance(payload, WatermarkStatus):
            parts.append(_STATUS.pack(b"S", payload.idle))
        elif kind is EndOfStream:
            parts.append(b"E")
        elif kind is PartitionMarks and isinstance(payload, PartitionMarks):
            parts.append(_MARKS.pack(b"M", len(payload.marks)))
            parts.extend(_MARK.pack(partition, mark) for partition, mark in payload.marks)
        else:
            return _pickled(payloads)
    return b"".join(parts)


def decoded_payloads(data: memoryview) -> tuple[Payload, ...]:
    """The payloads of ``encoded_payloads``; a batch's arrays are read-only views of ``data``
    (when ``data`` is read-only)."""
    kind, count = _HEAD.unpack_from(data)
    if kind == _PICKLED:
        pickled, buffers = unframed(data[1:])
        payloads: tuple[Payload, ...] = pickle.loads(pickled, buffers=buffers)
        return payloads
    out: list[Payload] = []
    at = _HEAD.size
    for _ in range(count):
        tag = data[at]
        if tag == _B:
            batch, at = _unpack_batch(data, at)
            out.append(batch)
        elif tag in (_W, _R):
            _, number = _NUMBERED.unpack_from(data, at)
            out.append(Watermark(number) if tag == _W else Barrier(number))
            at += _NUMBERED.size
        elif tag == _S:
            _, idle = _STATUS.unpack_from(data, at)
            out.append(WatermarkStatus(idle))
            at += _STATUS.size
        elif tag == _E:
            out.append(EndOfStream())
            at += 1
        elif tag == _M:
            _, count = _MARKS.unpack_from(data, at)
            at += _MARKS.size
            out.append(PartitionMarks(tuple(_MARK.iter_unpack(data[at:at + count * _MARK.size]))))
            at += count * _MARK.size
        else:
            raise ValueError(f"a push's payloads carry an unknown tag {bytes([tag])!r}")
    return tuple(out)


def _pickled(payloads: tuple[Payload, ...]) -> bytes:
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(payloads, protocol=5, buffer_callback=buffers.append)
    return b"".join([_PICKLED, *framed(data, [buffer.raw() for buffer in buffers])])


def _pack_batch(batch: Batch, parts: list[Any]) -> bool:
    """Append the batch's header and arrays to ``parts``; False if it does not pack."""
    if (batch.partition is None) != (batch.offset is None):
        return False
    arrays = [batch.ts, batch.key, *batch.columns.values()]
    lineage = batch.partition is not None and batch.offset is not None
    if batch.partition is not None and batch.offset is not None:
        arrays += [batch.partition, batch.offset]
    names = list(batch.columns)
    if len(names) > 255:
        return False
    parts.append(_BATCH.pack(b"B", len(batch), len(names), lineage))
    described = []
    for index, array in enumerate(arrays):
        # A dtype's string names only its itemsize when it has fields or a subarray ('|V8'):
        # such a column goes pickled, which keeps its layout.
        if (array.dtype.hasobject or array.ndim != 1 or array.dtype.names is not None
                or array.dtype.subdtype is not None):
            return False
        dtype = array.dtype.str.encode()
        described.append(bytes((len(dtype),)) + dtype)
        if 2 <= index < 2 + len(names):
            name = names[index - 2].encode()
            if len(name) > 255:
                return False
            described.append(bytes((len(name),)) + name)
    parts.append(b"".join(described))
    parts.extend(array if array.flags.c_contiguous else np.ascontiguousarray(array)
                 for array in arrays)
    return True


def _unpack_batch(data: memoryview, at: int) -> tuple[Batch, int]:
    _, records, columns, lineage = _BATCH.unpack_from(data, at)
    at += _BATCH.size
    # Step 1: the dtypes (and column names), in the arrays' order.
    dtypes: list[np.dtype[Any]] = []
    names: list[str] = []
    for index in range(2 + columns + 2 * lineage):
        length = data[at]
        encoded = bytes(data[at + 1:at + 1 + length])
        at += 1 + length
        dtype = _DTYPES.get(encoded)
        if dtype is None:
            dtype = _DTYPES.setdefault(encoded, np.dtype(encoded.decode()))
        dtypes.append(dtype)
        if 2 <= index < 2 + columns:
            length = data[at]
            encoded = bytes(data[at + 1:at + 1 + length])
            at += 1 + length
            name = _NAMES.get(encoded)
            names.append(name if name is not None else _NAMES.setdefault(encoded,
                                                                         encoded.decode()))
    # Step 2: the arrays, views of ``data``.
    arrays = []
    for dtype in dtypes:
        arrays.append(np.frombuffer(data, dtype, records, at))
        at += records * dtype.itemsize
    # Step 3: the batch, as pickle would rebuild it (the sender's batch was checked already).
    batch = Batch.__new__(Batch)
    batch.__dict__.update(
        ts=arrays[0], key=arrays[1], columns=dict(zip(names, arrays[2:2 + columns], strict=True)),
        partition=arrays[2 + columns] if lineage else None,
        offset=arrays[3 + columns] if lineage else None)
    return batch, at
