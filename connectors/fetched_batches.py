"""Fetched Kafka record batches (message format v2) read into columns in one numba pass.

aiokafka turns a fetch response into one ``ConsumerRecord`` per record; at a source's rates that
was a quarter of the source's CPU. ``decode_fetch`` walks the raw bytes of a response instead,
batch by batch and record by record in compiled code, and returns ``FetchedRecords``: every
record's offset and timestamp, and where its key and value lie in the fetched buffer, so that
the value scanners read straight out of that buffer. It reads the batches aiokafka's
``MemoryRecords`` would (a truncated last batch is left for the next fetch), checks every
batch's CRC-32C, skips control batches, and takes a log-append-time batch's max timestamp.
What it does not take plainly (another magic, a compressed batch, transactional or control
batches under read_committed, a bad CRC or a malformed batch) it declines, and the caller reads
that whole fetch through aiokafka's per-record iteration (``from_consumer_records``).

>>> from aiokafka.record.default_records import DefaultRecordBatchBuilder
>>> builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, batch_size=1024)
>>> for offset, value in enumerate([b"a", b"bb"]):
...     _ = builder.append(offset, 1_700_000_000_000, b"k", value, [])
>>> fetched = decode_fetch(bytes(builder.build()), fetch_offset=0, read_committed=False)
>>> fetched.offsets.tolist(), fetched.next_offset, fetched.value_at(1), fetched.key_at(0)
([0, 1], 2, b'bb', b'k')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from numba import njit

__all__ = ["FetchedRecords", "decode_fetch"]

_I64 = npt.NDArray[np.int64]

# Status codes of the kernel: what made it decline a fetch.
_OK = 0
_DECLINED = 1

_LOG_OVERHEAD = 12  # base offset and batch length, before the length counts
_MIN_BATCH = _LOG_OVERHEAD + 14  # what MemoryRecords holds to be the least a batch can be
_HEADER = 61
_COMPRESSION = 0x07
_LOG_APPEND_TIME = 0x08
_TRANSACTIONAL = 0x10
_CONTROL = 0x20


def _crc32c_tables() -> _I64:
    """Slicing-by-8 tables of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    tables = np.zeros((8, 256), dtype=np.int64)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        tables[0, byte] = crc
    for byte in range(256):
        crc = int(tables[0, byte])
        for k in range(1, 8):
            crc = int(tables[0, crc & 0xFF]) ^ (crc >> 8)
            tables[k, byte] = crc
    return tables


_CRC_TABLES = _crc32c_tables().astype(np.uint32)


@dataclass(frozen=True)
class FetchedRecords:
    """The records of one partition's fetch as columns over the fetched bytes.

    Record ``i``'s key is ``buffer[key_start[i]:key_start[i] + key_length[i]]`` and its value
    likewise; a length of -1 is a null key or value. ``next_offset`` is where the next fetch
    starts (it can lie past the last record: control batches, compacted records).
    """

    buffer: npt.NDArray[np.uint8]
    offsets: _I64
    timestamps: _I64
    key_start: _I64
    key_length: _I64
    value_start: _I64
    value_length: _I64
    next_offset: int

    def __len__(self) -> int:
        """The number of records."""
        return int(self.offsets.shape[0])

    def slice(self, first: int, stop: int) -> FetchedRecords:
        """Records ``first:stop`` (views over the same buffer).

        Its ``next_offset`` is the offset of the record after them, or this one's at the end.
        All of them are this object itself (it is immutable).
        """
        if first == 0 and stop >= len(self):
            return self
        next_offset = self.next_offset if stop >= len(self) else int(self.offsets[stop])
        return FetchedRecords(
            self.buffer, self.offsets[first:stop], self.timestamps[first:stop],
            self.key_start[first:stop], self.key_length[first:stop],
            self.value_start[first:stop], self.value_length[first:stop], next_offset,
        )

    def key_at(self, index: int) -> bytes | None:
        """Record ``index``'s key bytes; None when it has none."""
        return self._cut(int(self.key_start[index]), int(self.key_length[index]))

    def value_at(self, index: int) -> bytes | None:
        """Record ``index``'s value bytes; None when it has none (a tombstone)."""
        return self._cut(int(self.value_start[index]), int(self.value_length[index]))

    def _cut(self, start: int, length: int) -> bytes | None:
        return None if length < 0 else self.buffer[start:start + length].tobytes()

    @classmethod
    def joined(cls, pieces: Sequence[FetchedRecords]) -> FetchedRecords:
        """The records of ``pieces`` in order, over one buffer (only their own bytes copied).

        >>> one = FetchedRecords.from_consumer_records([], 0)
        >>> FetchedRecords.joined([one]) is one
        True
        """
        if len(pieces) == 1:
            return pieces[0]
        # New arrays: the spans are moved onto the joined buffer in place, in one call.
        key_start = np.concatenate([piece.key_start for piece in pieces])
        value_start = np.concatenate([piece.value_start for piece in pieces])
        key_length = np.concatenate([piece.key_length for piece in pieces])
        value_length = np.concatenate([piece.value_length for piece in pieces])
        ends = np.cumsum(np.array([len(piece) for piece in pieces], dtype=np.int64))
        firsts, stops = _rebase_spans(key_start, key_length, value_start, value_length, ends)
        parts = [piece.buffer[first:stop] for piece, first, stop
                 in zip(pieces, firsts.tolist(), stops.tolist(), strict=True)]
        buffer = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint8)
        # Read-only like a single fetch's bytes: the scanners then run one kernel variant.
        buffer.flags.writeable = False
        return cls(
            buffer=buffer,
            offsets=np.concatenate([piece.offsets for piece in pieces]),
            timestamps=np.concatenate([piece.timestamps for piece in pieces]),
            key_start=key_start,
            key_length=key_length,
            value_start=value_start,
            value_length=value_length,
            next_offset=pieces[-1].next_offset,
        )

    @classmethod
    def from_consumer_records(cls, records: Sequence[Any], next_offset: int) -> FetchedRecords:
        """The columns of records aiokafka decoded one by one (keys and values copied)."""
        count = len(records)
        pieces: list[bytes] = []
        lengths = np.full(2 * count, -1, dtype=np.int64)
        for i, record in enumerate(records):
            for j, part in enumerate((record.key, record.value)):
                if part is not None:
                    pieces.append(part)
                    lengths[2 * i + j] = len(part)
        ends = np.cumsum(np.maximum(lengths, 0))
        starts = ends - np.maximum(lengths, 0)
        return cls(
            buffer=np.frombuffer(b"".join(pieces), dtype=np.uint8),
            offsets=np.fromiter((r.offset for r in records), dtype=np.int64, count=count),
            timestamps=np.fromiter((r.timestamp for r in records), dtype=np.int64, count=count),
            key_start=starts[0::2], key_length=lengths[0::2],
            value_start=starts[1::2], value_length=lengths[1::2],
            next_offset=next_offset,
        )


def decode_fetch(raw: bytes, *, fetch_offset: int, read_committed: bool) -> FetchedRecords | None:
    """The records of one partition's fetch response from ``fetch_offset`` on; None to decline.

    None means the fetch holds something this reader leaves to aiokafka (see the module).
    """
    buffer = np.frombuffer(raw, dtype=np.uint8)
    kept, next_offset, columns = _decode(buffer, fetch_offset, read_committed, _CRC_TABLES)
    if kept < 0:
        return None
    return FetchedRecords(buffer, columns[0, :kept], columns[1, :kept], columns[2, :kept],
                          columns[3, :kept], columns[4, :kept], columns[5, :kept], next_offset)


@njit(cache=True)
def _decode(buffer: Any, fetch_offset: int, read_committed: bool,
            tables: Any) -> tuple[int, int, Any]:
    """Both passes in one call (a fetch of a few records costs its calls more than its
    bytes): (records kept or -1 to decline, offset after the batches, their columns)."""
    status, count, next_offset = _frame(buffer, fetch_offset, read_committed, tables)
    # Rows: offset, timestamp, key start, key length, value start, value length.
    columns = np.empty((6, count if status == _OK else 0), dtype=np.int64)
    if status != _OK:
        return -1, next_offset, columns
    kept = _records(buffer, fetch_offset, columns[0], columns[1], columns[2:])
    return kept, next_offset, columns


@njit(cache=True)
def _rebase_spans(key_start: _I64, key_length: _I64, value_start: _I64, value_length: _I64,
                  ends: _I64) -> tuple[_I64, _I64]:
    """Where the keys and values of each piece (its rows end at ``ends``) start and end in its
    buffer (a null key or value counts as empty at its start), and their starts moved onto
    the pieces' bytes laid end to end."""
    firsts = np.zeros(ends.shape[0], dtype=np.int64)
    stops = np.zeros(ends.shape[0], dtype=np.int64)
    base = 0
    row = 0
    for piece in range(ends.shape[0]):
        end = ends[piece]
        if row == end:
            continue
        first, stop = key_start[row], key_start[row]
        for i in range(row, end):
            first = min(first, key_start[i], value_start[i])
            stop = max(stop, key_start[i] + max(key_length[i], 0),
                       value_start[i] + max(value_length[i], 0))
        for i in range(row, end):
            key_start[i] -= first - base
            value_start[i] -= first - base
        firsts[piece], stops[piece] = first, stop
        base += stop - first
        row = end
    return firsts, stops


@njit(cache=True)
def _int(buffer: Any, at: int, width: int) -> int:
    value = 0
    for i in range(width):
        value = (value << 8) | int(buffer[at + i])  # eight bytes wrap to their sign
    if width < 8 and buffer[at] & 0x80:
        value -= 1 << (8 * width)
    return value


@njit(cache=True)
def _crc32c(buffer: Any, first: int, stop: int, tables: Any) -> int:
    # uint32 state and uint8 table indexes: no sign handling in the loop (twice as fast).
    eight, sixteen, twenty_four = np.uint32(8), np.uint32(16), np.uint32(24)
    crc = np.uint32(0xFFFFFFFF)
    at = first
    while at + 8 <= stop:
        low = np.uint32(crc ^ (np.uint32(buffer[at]) | (np.uint32(buffer[at + 1]) << eight)
                               | (np.uint32(buffer[at + 2]) << sixteen)
                               | (np.uint32(buffer[at + 3]) << twenty_four)))
        crc = np.uint32(tables[7, np.uint8(low)] ^ tables[6, np.uint8(low >> eight)]
                        ^ tables[5, np.uint8(low >> sixteen)]
                        ^ tables[4, np.uint8(low >> twenty_four)]
                        ^ tables[3, buffer[at + 4]] ^ tables[2, buffer[at + 5]]
                        ^ tables[1, buffer[at + 6]] ^ tables[0, buffer[at + 7]])
        at += 8
    while at < stop:
        crc = np.uint32(tables[0, np.uint8(crc ^ np.uint32(buffer[at]))] ^ (crc >> eight))
        at += 1
    return int(np.int64(crc ^ np.uint32(0xFFFFFFFF)))


@njit(cache=True)
def _frame(buffer: Any, fetch_offset: int, read_committed: bool,
           tables: Any) -> tuple[int, int, int]:
    """Checks every whole batch; returns (status, records at most, offset after the batches)."""
    size = buffer.shape[0]
    at = 0
    count = 0
    next_offset = fetch_offset
    while size - at >= _LOG_OVERHEAD:
        stop = at + _LOG_OVERHEAD + _int(buffer, at + 8, 4)
        if stop > size:
            break  # a truncated last batch: the next fetch brings it whole
        if stop - at < _HEADER or buffer[at + 16] != 2:
            return _DECLINED, 0, next_offset
        attributes = _int(buffer, at + 21, 2)
        if attributes & _COMPRESSION or (
            read_committed and attributes & (_TRANSACTIONAL | _CONTROL)
        ):
            return _DECLINED, 0, next_offset
        if _crc32c(buffer, at + 21, stop, tables) != (_int(buffer, at + 17, 4) & 0xFFFFFFFF):
            return _DECLINED, 0, next_offset
        records = _int(buffer, at + 57, 4)
        if records < 0:
            return _DECLINED, 0, next_offset
        if not attributes & _CONTROL:
            count += records
        next_offset = _int(buffer, at, 8) + _int(buffer, at + 23, 4) + 1
        at = stop
    return _OK, count, next_offset


@njit(cache=True)
def _varint(buffer: Any, at: int, stop: int) -> tuple[int, int]:
    """A zigzag varint at ``at``; returns (value, position after it), position -1 if bad."""
    raw = 0
    shift = 0
    while at < stop and shift < 64:
        byte = int(buffer[at])
        raw |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return ((raw >> 1) & 0x7FFFFFFFFFFFFFFF) ^ -(raw & 1), at
        shift += 7
    return 0, -1


@njit(cache=True)
def _records(buffer: Any, fetch_offset: int, offsets: Any, timestamps: Any,
             spans: Any) -> int:
    """Fills the columns of every record at or after ``fetch_offset``; -1 if malformed."""
    size = buffer.shape[0]
    at = 0
    kept = 0
    next_fetch = fetch_offset  # moves as aiokafka's PartitionRecords.next_fetch_offset does
    while size - at >= _LOG_OVERHEAD:
        stop = at + _LOG_OVERHEAD + _int(buffer, at + 8, 4)
        if stop > size:
            break
        attributes = _int(buffer, at + 21, 2)
        base_offset = _int(buffer, at, 8)
        base_time = _int(buffer, at + 27, 8)
        max_time = _int(buffer, at + 35, 8)
        records = _int(buffer, at + 57, 4)
        pos = at + _HEADER
        batch_next = base_offset + _int(buffer, at + 23, 4) + 1
        if attributes & _CONTROL:
            next_fetch = batch_next
            at = stop
            continue
        for _ in range(records):
            length, pos = _varint(buffer, pos, stop)
            if pos < 0 or length < 0 or pos + length > stop:
                return -1
            end = pos + length
            pos += 1  # the record's attributes
            delta, pos = _varint(buffer, pos, end)
            if pos < 0:
                return -1
            offset_delta, pos = _varint(buffer, pos, end)
            if pos < 0:
                return -1
            key_length, pos = _varint(buffer, pos, end)
            if pos < 0 or pos + max(key_length, 0) > end:
                return -1
            key_start = pos
            pos += max(key_length, 0)
            value_length, pos = _varint(buffer, pos, end)
            if pos < 0 or pos + max(value_length, 0) > end:
                return -1
            value_start = pos
            pos += max(value_length, 0)
            headers, pos = _varint(buffer, pos, end)
            if pos < 0 or headers < 0:
                return -1
            for _header in range(headers):
                name_length, pos = _varint(buffer, pos, end)
                if pos < 0 or name_length < 0 or pos + name_length > end:
                    return -1
                header_length, pos = _varint(buffer, pos + name_length, end)
                if pos < 0 or pos + max(header_length, 0) > end:
                    return -1
                pos += max(header_length, 0)
            if pos != end:
                return -1
            offset = base_offset + offset_delta
            if offset < next_fetch:
                continue  # before the fetch position (the batch began earlier)
            next_fetch = offset + 1
            offsets[kept] = offset
            timestamps[kept] = max_time if attributes & _LOG_APPEND_TIME else base_time + delta
            spans[0, kept] = key_start
            spans[1, kept] = key_length if key_length >= 0 else -1
            spans[2, kept] = value_start
            spans[3, kept] = value_length if value_length >= 0 else -1
            kept += 1
        if pos != stop:
            return -1
        next_fetch = batch_next
        at = stop
    return kept
