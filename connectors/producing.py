"""Ordered, batched, retried delivery of records to one Kafka partition.

Shared by the sink and the dead-letter path of the source. Records go in producer batches
(``create_batch`` / ``send_batch``), one batch in flight per partition, so a batch that fails
and is retried is never overtaken by the next one: per-partition order holds. A retriable
error is retried with exponential backoff; after the last attempt, or at once for an error
that cannot heal, ``ProduceError`` is raised with the count of records still undelivered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError, KafkaTimeoutError

from connectors.errors import ConnectorConfigError, ProduceError
from connectors.record_batches import BuiltBatches, RecordColumns

__all__ = [
    "DeliveryStats",
    "Header",
    "OutgoingRecords",
    "RetryPolicy",
    "publish_partition",
]

#: A record header: name and raw value, as Kafka clients take it.
Header = tuple[str, bytes]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently delivery is retried.

    >>> RetryPolicy(max_attempts=4, initial_backoff_s=0.1, max_backoff_s=0.3).backoff_s(3)
    0.3
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ConnectorConfigError(
                f"retry policy {self} is invalid; max_attempts must be >= 1 and backoffs >= 0"
            )

    def backoff_s(self, failed_attempts: int) -> float:
        """Seconds to wait after ``failed_attempts`` failures: doubling, capped."""
        return float(min(self.max_backoff_s, self.initial_backoff_s * 2 ** (failed_attempts - 1)))


@dataclass
class DeliveryStats:
    """Counters of a producer's work: delivered records and batches, retries, failures."""

    records: int = 0
    batches: int = 0
    retries: int = 0
    failures: int = 0


@dataclass
class OutgoingRecords:
    """Records bound for one partition, in order; ``headers`` is per record, or None."""

    keys: list[bytes | None] = field(default_factory=list)
    values: list[bytes | None] = field(default_factory=list)
    timestamps_ms: list[int | None] = field(default_factory=list)
    headers: list[list[Header]] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def extend(self, other: OutgoingRecords) -> None:
        """Append ``other``'s records after these."""
        if self.headers is None and other.headers is not None:
            self.headers = [[] for _ in self.values]
        self.keys.extend(other.keys)
        self.values.extend(other.values)
        self.timestamps_ms.extend(other.timestamps_ms)
        if self.headers is not None:
            self.headers.extend(other.headers or [[] for _ in other.values])

    def drop_first(self, count: int) -> None:
        """Forget the first ``count`` records (they were delivered)."""
        del self.keys[:count], self.values[:count], self.timestamps_ms[:count]
        if self.headers is not None:
            del self.headers[:count]


def _is_retriable(error: BaseException) -> bool:
    return isinstance(error, KafkaTimeoutError) or bool(getattr(error, "retriable", False))


async def publish_partition(
    producer: Any,
    topic: str,
    partition: int,
    records: OutgoingRecords | RecordColumns | BuiltBatches,
    policy: RetryPolicy,
    stats: DeliveryStats,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> int:
    """Deliver ``records`` to ``topic[partition]`` in order; return how many were delivered.

    Raises ProduceError (its ``pending`` counts the undelivered tail) when a batch still fails
    after ``policy.max_attempts`` attempts, or at once for a non-retriable Kafka error.
    """
    total = len(records)
    position = 0
    while position < total:
        failures = 0
        while True:
            builder, end = _next_batch(producer, records, position)
            if end == position:
                stats.failures += 1
                too_big = ValueError(
                    f"record {position} to {topic}[{partition}] does not fit in one producer "
                    "batch; raise the sink's max_batch_bytes or shrink the record"
                )
                raise ProduceError(topic, partition, failures, total - position, too_big)
            try:
                delivery = await producer.send_batch(builder, topic, partition=partition)
                await delivery
                break
            except KafkaError as error:
                failures += 1
                if failures >= policy.max_attempts or not _is_retriable(error):
                    stats.failures += 1
                    pending = total - position
                    raise ProduceError(topic, partition, failures, pending, error) from error
                stats.retries += 1
                await sleep(policy.backoff_s(failures))
        stats.records += end - position
        stats.batches += 1
        position = end
    return total


def _next_batch(producer: Any, records: OutgoingRecords | RecordColumns | BuiltBatches,
                position: int) -> tuple[Any, int]:
    """The producer batch of the records from ``position`` that fit, and where it ends."""
    if isinstance(records, RecordColumns | BuiltBatches):
        return records.batch_from(position)
    builder = producer.create_batch()
    return builder, _fill(builder, records, position)


def _fill(builder: Any, records: OutgoingRecords, position: int) -> int:
    keys, values, stamps, headers = (
        records.keys, records.values, records.timestamps_ms, records.headers
    )
    for i in range(position, len(values)):
        metadata = builder.append(
            timestamp=stamps[i], key=keys[i], value=values[i],
            headers=headers[i] if headers is not None else [],
        )
        if metadata is None:
            return i
    return len(values)
