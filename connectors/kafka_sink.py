"""The Kafka sink: keyed records, Kafka's own key partitioning, batched and retried delivery.

``write`` encodes a batch and keeps it pending; ``flush`` publishes everything pending and
returns once the broker acknowledged it (``acks='all'``). That split leaves room for the
exactly-once publish protocol: the runtime decides when pending output may go out, and may
tag each record with an idempotence id (header ``sdi``, ``connectors.record_ids``) so that a
republish after a crash is recognisable. Nothing is dropped silently: records that could not be
delivered stay pending, ``ProduceError`` says so, and a later ``flush`` retries them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaProducer

from connectors.codecs import CODECS, TIME_UNIT_NANOS, CodecName, encode_values_buffer
from connectors.compression import compression_problem
from connectors.direct_produce import DirectProduce, direct_produce_for
from connectors.epoch_batches import EncodedBatch, EpochBatches
from connectors.epoch_commits import EpochLedger
from connectors.errors import ConnectorConfigError, ProduceError, TopicError
from connectors.partitioning import key_partitions
from connectors.producing import DeliveryStats, RetryPolicy, publish_partition
from connectors.record_batches import BuiltBatches, RecordColumns, partition_rows
from connectors.record_ids import ID_HEADER, LEGACY_ID_HEADER, highest_sequences, sink_tag
from streamdag.batch import Batch
from streamdag.record_format import DEFAULT_RECORD_FORMAT, RecordFormat

__all__ = ["ID_HEADER", "KafkaSinkConfig", "KafkaSinkWriter"]


@dataclass(frozen=True)
class KafkaSinkConfig:
    """Everything a Kafka sink writer is built from.

    Record timestamps are the event times (in ms) when ``event_time_stamps``; otherwise the
    producer's clock. ``max_batch_bytes`` bounds one producer batch (its records before
    compression). ``compression_type`` (None, ``"gzip"``, ``"snappy"``, ``"lz4"`` or
    ``"zstd"``) compresses every batch the sink sends, on each of its paths; a codec whose
    library is not installed is refused here (``connectors.compression``).

    >>> KafkaSinkConfig("127.0.0.1:9092", "means").retry_policy().max_attempts
    5
    """

    bootstrap_servers: str
    topic: str
    codec: CodecName = "json"
    event_time_stamps: bool = True
    max_batch_bytes: int = 512 * 1024
    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
    request_timeout_ms: int = 30_000
    compression_type: str | None = None
    #: Send built batches as Produce requests of our own on aiokafka's connections
    #: (``connectors.direct_produce``); False sends every batch through aiokafka's producer.
    direct_produce: bool = True
    client_id: str = "streamdag-sink"
    #: The shape of each record value (fields, names, event-time unit).
    record_format: RecordFormat = DEFAULT_RECORD_FORMAT

    def __post_init__(self) -> None:
        if not self.topic:
            raise ConnectorConfigError("a Kafka sink needs a topic; got an empty name")
        if self.codec not in CODECS:
            raise ConnectorConfigError(
                f"Kafka sink for {self.topic!r}: codec {self.codec!r} is unknown; expected one "
                f"of {CODECS}"
            )
        problem = compression_problem(self.compression_type)
        if problem is not None:
            raise ConnectorConfigError(f"Kafka sink for {self.topic!r}: {problem}")
        if self.max_batch_bytes < 1024:
            raise ConnectorConfigError(
                f"Kafka sink for {self.topic!r}: max_batch_bytes {self.max_batch_bytes} is too "
                "small; give at least 1024"
            )
        self.retry_policy()

    def retry_policy(self) -> RetryPolicy:
        """The delivery retry policy these settings describe."""
        return RetryPolicy(self.max_attempts, self.initial_backoff_s, self.max_backoff_s)


class KafkaSinkWriter:
    """Writes Batches to a topic; a ``SinkWriter``.

    ``producer_factory`` builds the (unstarted) producer from the config; tests inject one
    that fails on purpose.
    """

    def __init__(
        self,
        config: KafkaSinkConfig,
        *,
        producer_factory: Callable[[KafkaSinkConfig], Any] | None = None,
    ) -> None:
        self._config = config
        self._policy = config.retry_policy()
        self._producer_factory = producer_factory or _default_producer
        self._producer: Any = None
        self._direct: DirectProduce | None = None
        self._partition_count = 0
        #: Per partition, records to send in order: runs of records, and epochs built already.
        self._pending: dict[int, list[RecordColumns | BuiltBatches]] = {}
        self._closed = False
        self._ledger = EpochLedger(config.bootstrap_servers, config.topic)
        self.stats = DeliveryStats()

    async def open(self) -> None:
        """Start the producer and learn the topic's partition count."""
        producer = self._producer_factory(self._config)
        await producer.start()
        self._producer = producer
        partitions = await producer.partitions_for(self._config.topic)
        if not partitions:
            await self.close()
            raise TopicError(
                f"topic {self._config.topic!r} has no partitions on "
                f"{self._config.bootstrap_servers}; create it first (ensure_topics)"
            )
        self._partition_count = len(partitions)
        if self._config.direct_produce:
            self._direct = direct_produce_for(producer, self._config.topic,
                                              self._config.request_timeout_ms)
        _warm_up_kernels(self._config)

    async def write(
        self, batch: Batch, record_ids: Sequence[bytes] | npt.NDArray[np.uint8] | None = None
    ) -> None:
        """Encode ``batch`` and keep it pending until ``flush``; ``record_ids`` tag each record."""
        for partition, records in self.encode(batch, record_ids).items():
            parts = self._pending.setdefault(partition, [])
            last = parts[-1] if parts else None
            if isinstance(last, RecordColumns):  # one run of records packs into full batches
                parts[-1] = last.extend(records)
            else:
                parts.append(records)

    def encode(self, batch: Batch,
               record_ids: Sequence[bytes] | npt.NDArray[np.uint8] | None = None
               ) -> dict[int, RecordColumns]:
        """``batch``'s records as this sink sends them (values, timestamps, the id header
        from ``record_ids``, one id or one row of ids per record), per partition."""
        if self._producer is None:
            raise ConnectorConfigError(
                f"the Kafka sink for {self._config.topic!r} is not open; call open() first"
            )
        if record_ids is not None and len(record_ids) != len(batch):
            raise ConnectorConfigError(
                f"write got {len(record_ids)} record ids for {len(batch)} records; give one "
                "id per record, or none"
            )
        if len(batch) == 0:
            return {}
        values, offsets, stamps = self._values_and_stamps(batch)
        records = RecordColumns.from_buffer(
            batch.key, values, offsets, stamps, header_name=ID_HEADER.encode(),
            header_values=record_ids, max_batch_bytes=self._config.max_batch_bytes,
            compression_type=self._config.compression_type)
        partitions = key_partitions(batch.key, self._partition_count)
        return {partition: records.take(rows)
                for partition, rows in partition_rows(partitions).items()}

    def encode_batch(self, batch: Batch) -> EncodedBatch:
        """``batch``'s records as this sink sends them (values, timestamps, partitions)."""
        values, offsets, stamps = self._values_and_stamps(batch)
        return EncodedBatch.of(batch.key, values, stamps,
                               key_partitions(batch.key, self._partition_count), offsets)

    def _values_and_stamps(self, batch: Batch) -> tuple[bytes, npt.NDArray[np.int64],
                                                        npt.NDArray[np.int64]]:
        values, offsets = encode_values_buffer(batch, self._config.codec,
                                               self._config.record_format)
        if self._config.event_time_stamps:
            # Kafka has no negative timestamps: those records take the producer's clock (-1).
            stamps = np.where(batch.ts < 0, -1, batch.ts // TIME_UNIT_NANOS["ms"])
        else:
            stamps = np.full(len(batch), -1, dtype=np.int64)
        return values, offsets, stamps

    def epoch_batches(self, sink_id: str) -> EpochBatches:
        """An epoch's producer batches, its records tagged with ``sink_id``'s ids, written as
        they come (see ``write_encoded``)."""
        self._require_producer()
        return EpochBatches(self.encode_batch, self._config.max_batch_bytes,
                            ID_HEADER.encode(), sink_id, self._config.compression_type)

    def write_encoded(self, batches: Mapping[int, BuiltBatches]) -> None:
        """Keep an epoch's built batches pending until ``flush``, after what is pending."""
        for partition, built in batches.items():
            self._pending.setdefault(partition, []).append(built)

    async def flush(self) -> None:
        """Publish everything pending; return once acknowledged, or raise ProduceError."""
        if not self._pending:
            return
        if self._direct is not None:
            # Step 1: our own Produce requests; what they leave goes aiokafka's way (step 2).
            try:
                left = await self._direct.publish(self._pending, self.stats)
            finally:
                for partition in [p for p, parts in self._pending.items() if not parts]:
                    del self._pending[partition]
            if not left:
                return
        partitions = sorted(self._pending)
        outcomes = await asyncio.gather(*(self._publish(p) for p in partitions),
                                        return_exceptions=True)
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if errors:
            raise errors[0]

    async def _publish(self, partition: int) -> None:
        """Send a partition's pending records in order; what failed stays pending."""
        parts = self._pending[partition]
        while parts:
            part = parts[0]
            try:
                await publish_partition(self._require_producer(), self._config.topic,
                                        partition, part, self._policy_for(part), self.stats)
            except ProduceError as error:
                parts[0] = part.drop_first(len(part) - error.pending)
                raise
            parts.pop(0)
        del self._pending[partition]

    def _policy_for(self, records: RecordColumns | BuiltBatches) -> RetryPolicy:
        # A batch whose send timed out may have landed all the same: records with ids are not
        # sent again blindly (that would duplicate them); the epoch publisher reads back what
        # got out and sends only the rest (EpochOutput).
        if records.has_ids:
            return RetryPolicy(1, self._policy.initial_backoff_s, self._policy.max_backoff_s)
        return self._policy

    def discard_pending(self) -> None:
        """Forget every record not yet delivered (the caller resends what it must)."""
        self._pending.clear()

    # -- exactly-once epochs (runtime.dataplane.sink_epochs.EpochPublisher) ---------------
    async def published_sequences(self, sink_id: str, before_epoch: int) -> dict[int, int]:
        """Per key hash, the highest sequence of ``sink_id``'s records in the topic from its
        last epoch commit before ``before_epoch`` on (the whole topic when there is none);
        ids of both formats count (``connectors.record_ids``)."""
        commit = await self._ledger.last_commit(sink_id, before_epoch)
        tag = sink_tag(sink_id)
        found = await self._ledger.tagged_records(
            (ID_HEADER, LEGACY_ID_HEADER), tag, commit.resume_offsets if commit else {})
        return highest_sequences(tag, np.array(found.keys, dtype=np.bytes_), found.names,
                                 found.values)

    async def prepare_commits(self) -> None:
        """Get ``commit_epoch`` ready (its topic and client), so the first commit is quick."""
        await self._ledger.prepare()

    async def commit_epoch(self, sink_id: str, epoch: int) -> None:
        """Record in ``<topic>.commits`` that ``epoch`` of ``sink_id`` is wholly published."""
        await self._ledger.commit(self._require_producer(), sink_id, epoch)

    def _require_producer(self) -> Any:
        if self._producer is None:
            raise ConnectorConfigError(
                f"the Kafka sink for {self._config.topic!r} is not open; call open() first"
            )
        return self._producer

    async def close(self) -> None:
        """Flush what is pending, then stop the producer; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        producer = self._producer
        if producer is None:
            return
        try:
            await self.flush()
        finally:
            self._producer = None
            self._direct = None
            await producer.stop()
            await self._ledger.close()

    @property
    def pending_records(self) -> int:
        """Records written but not yet delivered."""
        return sum(len(part) for parts in self._pending.values() for part in parts)


def _warm_up_kernels(config: KafkaSinkConfig) -> None:
    """Compile (or load from numba's cache) what a write runs, before the first batch waits.

    The batch is read-only, as a sink node receives its batches, and goes through the writes
    of both deliveries (no id header, and ids), so that the first batch loads no other variant.
    """
    batch = Batch.from_columns(ts=[1, 2], key=["a", "b"], value=[1.0, 2.0]).read_only()
    values, offsets = encode_values_buffer(batch, config.codec)
    for header_values in (None, [b"1", b"2"]):
        records = RecordColumns.from_buffer(batch.key, values, offsets, batch.ts,
                                            header_name=ID_HEADER.encode(),
                                            header_values=header_values,
                                            max_batch_bytes=config.max_batch_bytes)
        records.take(np.arange(2)).batch_from(0)
    partitions = key_partitions(batch.key, 2)
    epoch = EpochBatches(lambda b: EncodedBatch.of(b.key, values, b.ts, partitions, offsets),
                         config.max_batch_bytes, ID_HEADER.encode(), "warm-up")
    epoch.add(batch, np.arange(2))
    epoch.finish()


def _default_producer(config: KafkaSinkConfig) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=config.bootstrap_servers,
        client_id=config.client_id,
        acks="all",
        max_batch_size=config.max_batch_bytes,
        max_request_size=max(config.max_batch_bytes * 2, 1 << 20),
        request_timeout_ms=config.request_timeout_ms,
        compression_type=config.compression_type,
    )
