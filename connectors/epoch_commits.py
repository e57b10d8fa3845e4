"""Epoch commits of an exactly-once Kafka sink, in a companion topic, and reading them back.

A sink that publishes epoch ``e`` of its output (see ``runtime.dataplane.sink_epochs``) then
writes one commit record to ``<topic>.commits`` (key: the sink's id; value: the epoch and, per
partition of the output topic, an offset at or before which the next epoch's records start).
Consumers of the output topic see only outputs. After a crash the sink reads its newest commit,
and from those offsets the records of later epochs that already reached the topic (their keys
and idempotence ids, ``connectors.record_ids``), so it publishes only the rest. No broker
transaction is involved: this works on Tansu, whose InitProducerId fails, as on any Kafka.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.topics import ensure_topics

__all__ = [
    "COMMITS_SUFFIX",
    "EpochCommit",
    "EpochLedger",
    "TaggedRecords",
    "commits_topic",
]

#: The companion topic of output topic ``t`` is ``t`` + this.
COMMITS_SUFFIX = ".commits"


#: Commit records read back per step when looking for a sink's newest one from the end.
_LOOK_BACK = 1000


def commits_topic(topic: str) -> str:
    """The companion topic holding the epoch commits of sinks writing ``topic``.

    >>> commits_topic("signals")
    'signals.commits'
    """
    return topic + COMMITS_SUFFIX


@dataclass(frozen=True)
class EpochCommit:
    """A sink's newest wholly published epoch, and where records of later epochs may start."""

    epoch: int
    resume_offsets: Mapping[int, int]


@dataclass(frozen=True)
class TaggedRecords:
    """Records read back with an id header: record ``i``'s key, header name and value."""

    keys: list[bytes]
    names: list[str]
    values: list[bytes]


class EpochLedger:
    """Reads and writes one output topic's epoch commits; also scans the topic for ids."""

    def __init__(self, bootstrap_servers: str, topic: str, *, timeout_s: float = 30.0) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = timeout_s
        self._ensured = False
        self._ends_reader: AIOKafkaConsumer | None = None

    async def close(self) -> None:
        """Stop the client ``commit`` keeps."""
        reader, self._ends_reader = self._ends_reader, None
        if reader is not None:
            await reader.stop()

    async def ensure(self) -> None:
        """Create the companion topic (one partition) unless it exists."""
        if not self._ensured:
            await ensure_topics(self.bootstrap_servers, {commits_topic(self.topic): 1},
                                strict=False)
            self._ensured = True

    async def prepare(self) -> None:
        """Create the companion topic and connect the client ``commit`` keeps (a sink does it
        as it opens, so that its first commit waits for neither)."""
        await self.ensure()
        if self._ends_reader is None:  # one client for every commit, not one each
            reader = self._consumer()
            try:
                await reader.start()
            except BaseException:
                await reader.stop()
                raise
            if self._ends_reader is None:
                self._ends_reader = reader
            else:  # another call got there first
                await reader.stop()

    async def commit(self, producer: AIOKafkaProducer, sink_id: str, epoch: int) -> None:
        """Record ``epoch`` of ``sink_id`` as published (call once its records are acknowledged).

        The offsets recorded are the output partitions' log ends as the broker reports them;
        a broker that under-reports (Tansu) only makes a later read-back start earlier.
        """
        await self.prepare()
        consumer = self._ends_reader
        assert consumer is not None
        tps = [TopicPartition(self.topic, p)
               for p in sorted(consumer.partitions_for_topic(self.topic) or ())]
        ends = await consumer.end_offsets(tps) if tps else {}
        value = json.dumps({"epoch": epoch,
                            "resume": {str(tp.partition): int(end) for tp, end in ends.items()}})
        await producer.send_and_wait(commits_topic(self.topic), value.encode(),
                                     key=sink_id.encode(), partition=0)

    async def last_commit(self, sink_id: str,
                          before_epoch: int | None = None) -> EpochCommit | None:
        """The newest commit of ``sink_id`` (of an epoch before ``before_epoch``, if given);
        None when there is none."""
        await self.ensure()
        tp = TopicPartition(commits_topic(self.topic), 0)
        key = sink_id.encode()
        consumer = self._consumer()
        await consumer.start()
        try:
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            upper = None
            while True:
                start = max(0, end - _LOOK_BACK)
                found: dict[str, Any] | None = None
                for record in await _read_range(consumer, {tp: start}, {tp: upper},
                                                self.timeout_s):
                    if record.key != key:
                        continue
                    document = json.loads(record.value)
                    if before_epoch is None or int(document["epoch"]) < before_epoch:
                        found = document
                if found is not None:
                    return EpochCommit(int(found["epoch"]),
                                       {int(p): int(o) for p, o in found["resume"].items()})
                if start == 0:
                    return None
                end, upper = start, start
        finally:
            await consumer.stop()

    async def tagged_records(self, headers: Sequence[str], tag: bytes,
                             resume_offsets: Mapping[int, int]) -> TaggedRecords:
        """The output topic's records from ``resume_offsets`` (offset 0 for partitions it does
        not name) to the end that carry a header named in ``headers`` whose value starts with
        ``tag``: their keys, and that header's name and value."""
        consumer = self._consumer()
        await consumer.start()
        try:
            partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            starts = {tp: int(resume_offsets.get(tp.partition, 0)) for tp in tps}
            found = TaggedRecords([], [], [])
            for record in await _read_range(consumer, starts, dict.fromkeys(tps), self.timeout_s):
                for name, value in record.headers or ():
                    if name in headers and value.startswith(tag):
                        found.keys.append(record.key or b"")
                        found.names.append(name)
                        found.values.append(bytes(value))
            return found
        finally:
            await consumer.stop()

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(bootstrap_servers=self.bootstrap_servers, group_id=None,
                                enable_auto_commit=False, fetch_max_wait_ms=10,
                                request_timeout_ms=int(self.timeout_s * 1000))


async def _read_range(consumer: AIOKafkaConsumer, starts: Mapping[TopicPartition, int],
                      stops: Mapping[TopicPartition, int | None], timeout_s: float) -> list[Any]:
    """Records of each partition from its start to its stop (None: the log end), in order.

    The log end is the high watermark of the fetch answers, which every broker reports
    truly (Tansu's ListOffsets does not).
    """
    if not starts:
        return []
    consumer.assign(list(starts))
    for tp, start in starts.items():
        consumer.seek(tp, start)
    records: list[Any] = []
    remaining = set(starts)
    deadline = time.monotonic() + timeout_s
    while remaining:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"reading back {sorted(tp.partition for tp in remaining)} of "
                f"{next(iter(starts)).topic} did not reach the end within {timeout_s} s")
        fetched = await consumer.getmany(*remaining, timeout_ms=200, max_records=10_000)
        for tp, batch in fetched.items():
            stop = stops.get(tp)
            records.extend(r for r in batch if stop is None or r.offset < stop)
        for tp in list(remaining):
            position = await consumer.position(tp)
            stop = stops.get(tp)
            highwater = consumer.highwater(tp)
            end = stop if stop is not None else highwater
            if end is not None and position >= end:
                remaining.discard(tp)
    return records
