"""An exactly-once sink's epoch, built into producer batches while the epoch is still open.

An exactly-once sink publishes an epoch only once its checkpoint is complete, and the stream's
last epoch only once the stream ended: whatever its publish still has to do then is time the
stream's end waits for. So a Kafka sink encodes each batch of the open epoch as it arrives
(values, id headers, partitions) and builds every producer batch that is full at once; the
epoch's close builds the partly filled last batch of each partition. Publishing the epoch is
then sending those batches. They are packed exactly as ``write`` and ``flush`` would pack the
epoch's records, so the topic gets the same batches either way.

>>> import numpy as np
>>> from connectors.record_batches import RecordColumns
>>> from streamdag.batch import Batch
>>> def encode(batch, ids):
...     keys = batch.key
...     values = [str(v).encode() for v in batch.columns["v"].tolist()]
...     columns = RecordColumns.from_values(keys, values, batch.ts, max_batch_bytes=100)
...     return {0: columns}
>>> epoch = EpochBatches(encode, max_batch_bytes=100)
>>> for first in (0, 3):
...     epoch.add(Batch.from_columns(ts=[first, first + 1, first + 2], key=["a"] * 3,
...                                  v=[1.0, 2.0, 3.0]))
>>> built = epoch.finish()
>>> [len(built[0]), list(built[0].counts)]
[6, [3, 3]]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from connectors.record_batches import BuiltBatches, RecordColumns
from streamdag.batch import Batch

__all__ = ["Encoder", "EpochBatches"]

#: What an epoch's records are encoded with: a batch and its ids (a row each, or None) to
#: each partition's records.
Encoder = Callable[[Batch, npt.NDArray[np.uint8] | None], dict[int, RecordColumns]]


class EpochBatches:
    """The producer batches of one epoch of one sink, per partition, built as records come."""

    def __init__(self, encode: Encoder, max_batch_bytes: int) -> None:
        self._encode = encode
        self._max_batch_bytes = max_batch_bytes
        #: Per partition: the batches built so far, and the records not in one yet.
        self._built: dict[int, BuiltBatches] = {}
        self._open: dict[int, list[RecordColumns]] = {}
        self._open_bytes: dict[int, int] = {}

    def add(self, batch: Batch, record_ids: npt.NDArray[np.uint8] | None = None) -> None:
        """Encode ``batch`` (each record with its id) and build the batches it filled."""
        for partition, records in self._encode(batch, record_ids).items():
            self._open.setdefault(partition, []).append(records)
            size = self._open_bytes.get(partition, 0) + _bytes_of(records)
            self._open_bytes[partition] = size
            if size >= self._max_batch_bytes:  # a batch may be full: build what is
                self._build(partition, whole=False)

    def finish(self) -> dict[int, BuiltBatches]:
        """The epoch is closed: every partition's batches, its last one built too."""
        for partition in list(self._open):
            self._build(partition, whole=True)
        built, self._built = self._built, {}
        return built

    def _build(self, partition: int, *, whole: bool) -> None:
        records = RecordColumns.concat(self._open.pop(partition))
        built = BuiltBatches.of(records, whole=whole)
        if len(built):
            earlier = self._built.get(partition)
            self._built[partition] = built if earlier is None else earlier.extend(built)
        rest = records.drop_first(len(built))
        if len(rest):
            self._open[partition] = [rest]
            self._open_bytes[partition] = _bytes_of(rest)
        else:
            self._open_bytes.pop(partition, None)


def _bytes_of(records: RecordColumns) -> int:
    """About what ``records`` take in a producer batch (a little less: varints not counted)."""
    return int(records.values.nbytes + records.header_values.nbytes
               + records.key_lengths.sum() + len(records.header_name) * len(records))
