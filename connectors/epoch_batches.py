"""An exactly-once sink's epoch, written into producer batches while the epoch is still open.

An exactly-once sink publishes an epoch only once its checkpoint is complete, and the stream's
last epoch only once the stream ended: whatever its publish still has to do then is time the
stream's end waits for. So a Kafka sink encodes each batch of the open epoch as it arrives and
appends its records, each with its idempotence id header, to the open producer batch of their
partition (``append_records``, one compiled pass per partition and push). The header's bytes
are written in place from the sink's tag and each record's sequence (``connectors.record_ids``);
a record is written once, into the batch that is sent. A full batch is sealed (its header and
CRC; its records compressed first with a ``compression_type``) at once; the epoch's close
seals each partition's last one. Publishing the epoch is then
sending those batches. They are packed exactly as ``write`` and ``flush`` would pack the
epoch's records with the same ids, so the topic gets the same bytes either way (compressed
with gzip: the same records, and bytes that differ at most in the gzip header's time stamp).

>>> from streamdag.batch import Batch
>>> def encode(batch):
...     values = [str(v).encode() for v in batch.columns["v"].tolist()]
...     return EncodedBatch.of(batch.key, values, batch.ts, np.zeros(len(batch), np.int32))
>>> epoch = EpochBatches(encode, max_batch_bytes=200, header_name=b"id", sink_id="s")
>>> for first in (0, 3):
...     batch = Batch.from_columns(ts=[first, first + 1, first + 2], key=["a"] * 3,
...                                v=[1.0, 2.0, 3.0])
...     epoch.add(batch, np.arange(first, first + 3))
>>> built = epoch.finish()
>>> [len(built[0]), list(built[0].counts)]
[6, [5, 1]]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from connectors.record_batches import (
    BATCH_HEADER_SIZE,
    BuiltBatches,
    append_records,
    key_lengths,
    key_rows,
    partition_rows,
    seal_batch,
)
from connectors.record_ids import sink_tag
from streamdag.batch import Batch

__all__ = ["EncodedBatch", "Encoder", "EpochBatches"]

_U8 = npt.NDArray[np.uint8]
_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class EncodedBatch:
    """A batch's records as a sink sends them, in batch order: keys (zero-padded rows cut to
    ``key_lengths``), values back to back (``values[value_offsets[i]:value_offsets[i + 1]]``),
    timestamps in ms (negative: the producer's clock) and each record's partition."""

    keys: _U8
    key_lengths: _I64
    values: _U8
    value_offsets: _I64
    timestamps_ms: _I64
    partitions: npt.NDArray[np.int32]

    @classmethod
    def of(cls, keys: npt.NDArray[np.bytes_], values: bytes | Sequence[bytes],
           timestamps_ms: _I64, partitions: npt.NDArray[np.int32],
           value_offsets: _I64 | None = None) -> EncodedBatch:
        """From a key array, the values (one ``bytes`` each, or back to back with
        ``value_offsets``), timestamps and partitions."""
        if isinstance(values, bytes):
            if value_offsets is None:
                raise ValueError("values given back to back need their value_offsets")
            data = values
        else:
            value_offsets = np.zeros(len(values) + 1, dtype=np.int64)
            np.cumsum([len(v) for v in values], out=value_offsets[1:])
            data = b"".join(values)
        rows = key_rows(keys)
        return cls(rows, key_lengths(rows), np.frombuffer(data, dtype=np.uint8),
                   np.asarray(value_offsets, dtype=np.int64),
                   np.asarray(timestamps_ms, dtype=np.int64),
                   np.asarray(partitions, dtype=np.int32))


#: What an epoch's records are encoded with: a batch to its records as the sink sends them.
Encoder = Callable[[Batch], EncodedBatch]


class EpochBatches:
    """The producer batches of one epoch of one sink, per partition, written as records come.

    ``max_batch_bytes`` bounds a batch's records before compression (``compression_type``).
    """

    def __init__(self, encode: Encoder, max_batch_bytes: int, header_name: bytes,
                 sink_id: str, compression_type: str | None = None) -> None:
        self._encode = encode
        self._max_batch_bytes = max_batch_bytes
        self._compression_type = compression_type
        self._name = np.frombuffer(header_name, dtype=np.uint8)
        self._prefix = np.frombuffer(sink_tag(sink_id), dtype=np.uint8)
        self._partitions: dict[int, _OpenBatches] = {}

    def add(self, batch: Batch, sequences: _I64) -> None:
        """Encode ``batch`` and append each record, with the id of its sequence in its key's
        output, to its partition's batches."""
        if not len(batch):
            return
        encoded = self._encode(batch)
        stamps = encoded.timestamps_ms
        if bool((stamps < 0).any()):  # the producer's clock, as a batch built now takes it
            stamps = np.where(stamps < 0, int(time.time() * 1000), stamps)
        for partition, rows in partition_rows(encoded.partitions).items():
            batches = self._partitions.get(partition)
            if batches is None:
                batches = self._partitions[partition] = _OpenBatches(self._max_batch_bytes,
                                                                     self._compression_type)
            batches.append(encoded, stamps, rows, self._name, self._prefix, sequences)

    def finish(self) -> dict[int, BuiltBatches]:
        """The epoch is closed: every partition's batches, its last one sealed too."""
        built = {partition: batches.finish() for partition, batches in self._partitions.items()}
        self._partitions = {}
        return built


class _OpenBatches:
    """One partition's batches of an epoch: those sealed, and the one being filled."""

    def __init__(self, max_batch_bytes: int, compression_type: str | None) -> None:
        self._budget = max_batch_bytes
        self._compression_type = compression_type
        self._out = np.empty(max_batch_bytes, dtype=np.uint8)  # reused batch after batch
        self._at, self._count, self._first, self._highest = BATCH_HEADER_SIZE, 0, 0, 0
        self._buffers: list[bytearray] = []
        self._counts: list[int] = []

    def append(self, encoded: EncodedBatch, stamps: _I64, rows: _I64, name: _U8,
               prefix: _U8, sequences: _I64) -> None:
        """Write the records ``rows`` of ``encoded``, sealing each batch that fills."""
        start = 0
        while start < len(rows):
            start, self._at, self._count, self._first, self._highest = append_records(
                self._out, self._at, self._count, self._first, self._highest, encoded.keys,
                encoded.key_lengths, encoded.values, encoded.value_offsets, stamps, rows,
                start, name, prefix, sequences, self._budget)
            if start == len(rows):
                break
            if self._count:
                self._seal()
            else:  # one record longer than a batch: it goes alone, as aiokafka sends it
                self._out = np.empty(2 * len(self._out), dtype=np.uint8)

    def finish(self) -> BuiltBatches:
        """Every batch of the partition, in order, the last one sealed too."""
        if self._count:
            self._seal()
        return BuiltBatches(tuple(self._buffers), tuple(self._counts), True)

    def _seal(self) -> None:
        buffer = bytearray(self._out[: self._at])
        sealed = seal_batch(buffer, self._count, self._first, self._highest,
                            self._compression_type)
        self._buffers.append(sealed.data)
        self._counts.append(self._count)
        self._at, self._count = BATCH_HEADER_SIZE, 0
        if len(self._out) > self._budget:  # grown for one long record: back to the budget
            self._out = np.empty(self._budget, dtype=np.uint8)
