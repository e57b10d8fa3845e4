"""The dead-letter path: poison records go to a topic with why they were refused.

A dead letter keeps the original key and value bytes and carries headers naming the reason,
the detail, and where the record came from (``streamdag.reason``, ``streamdag.error``,
``streamdag.topic``, ``streamdag.partition``, ``streamdag.offset``). The topic is created on
first use if missing (one partition), and delivery is awaited, so a source never moves past a
poison record that is not safely in the dead-letter topic.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from connectors.producing import (
    DeliveryStats,
    OutgoingRecords,
    RetryPolicy,
    publish_partition,
)
from connectors.topics import ensure_topics

__all__ = ["DeadLetter", "DeadLetterPublisher"]


@dataclass(frozen=True)
class DeadLetter:
    """One refused record: where it came from, its original bytes, and why."""

    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str


class DeadLetterPublisher:
    """Publishes dead letters of one source topic to its dead-letter topic, counting them."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        source_topic: str,
        *,
        policy: RetryPolicy | None = None,
        client_id: str = "streamdag-dead-letters",
    ) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._topic = topic
        self._source_topic = source_topic
        self._policy = policy or RetryPolicy()
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._partition_count = 1
        self._by_reason: Counter[str] = Counter()
        self.stats = DeliveryStats()

    @property
    def count(self) -> int:
        """How many records were dead-lettered."""
        return sum(self._by_reason.values())

    @property
    def by_reason(self) -> dict[str, int]:
        """How many records were dead-lettered, per reason."""
        return dict(self._by_reason)

    async def publish(self, letters: Sequence[DeadLetter]) -> None:
        """Deliver ``letters`` (in order, per dead-letter partition) and count them."""
        if not letters:
            return
        producer = await self._started()
        grouped: dict[int, OutgoingRecords] = {}
        for letter in letters:
            records = grouped.setdefault(
                letter.partition % self._partition_count, OutgoingRecords(headers=[])
            )
            records.keys.append(letter.key)
            records.values.append(letter.value)
            records.timestamps_ms.append(letter.timestamp_ms)
            assert records.headers is not None
            records.headers.append([
                ("streamdag.reason", letter.reason.encode()),
                ("streamdag.error", letter.detail.encode("utf-8", "replace")),
                ("streamdag.topic", self._source_topic.encode()),
                ("streamdag.partition", str(letter.partition).encode()),
                ("streamdag.offset", str(letter.offset).encode()),
            ])
        for partition, records in grouped.items():
            await publish_partition(
                producer, self._topic, partition, records, self._policy, self.stats
            )
        self._by_reason.update(letter.reason for letter in letters)

    async def close(self) -> None:
        """Stop the producer if one was started; safe to call twice."""
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            counts = await ensure_topics(
                self._bootstrap_servers, {self._topic: 1}, strict=False
            )
            self._partition_count = counts[self._topic]
            producer = AIOKafkaProducer(
                bootstrap_servers=self._bootstrap_servers,
                client_id=self._client_id,
                acks="all",
            )
            await producer.start()
            self._producer = producer
        return self._producer
