"""Epoch commits of an exactly-once Kafka sink, in a companion topic, and reading them back.

A sink that publishes epoch ``e`` of its output (see ``runtime.dataplane.sink_epochs``) then
writes one commit record to ``<topic>.commits`` (key: the sink's id; value: the epoch and, per
partition of the output topic, an offset at or before which the next epoch's records start).
Consumers of the output topic see only outputs. After a crash the sink reads its newest commit,
and from those offsets the records of later epochs that already reached the topic (their
idempotence ids), so it publishes only the rest. No broker transaction is involved: this works
on Tansu, whose InitProducerId fails, as on any Kafka.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from connectors.topics import ensure_topics

__all__ = [
    "COMMITS_SUFFIX",
    "EpochCommit",
    "EpochLedger",
    "commits_topic",
    "parse_record_id",
    "record_id_rows",
    "record_ids",
    "sink_prefix",
]

#: The companion topic of output topic ``t`` is ``t`` + this.
COMMITS_SUFFIX = ".commits"
_ID = struct.Struct(">QQ")


def record_ids(sink_id: str, key_hashes: Sequence[int] | npt.NDArray[np.uint64],
               sequences: Sequence[int] | npt.NDArray[np.int64]) -> list[bytes]:
    """Idempotence ids: the sink, the record's key (its 64-bit hash) and its place in the
    sink's output of that key (built for the whole batch at once, no Python per record).

    >>> [parse_record_id(i) for i in record_ids("ab" * 32, [7], [3])]
    [('1f804f8530c770c0', 7, 3)]
    """
    rows = record_id_rows(sink_id, key_hashes, sequences)
    ids: list[bytes] = rows.view(f"V{rows.shape[1]}").ravel().tolist()  # void: no NUL stripped
    return ids


def record_id_rows(sink_id: str, key_hashes: Sequence[int] | npt.NDArray[np.uint64],
                   sequences: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.uint8]:
    """``record_ids`` as the rows of one ``uint8`` array, one id a row (what a Kafka sink
    writes into its record batches as is).

    >>> record_id_rows("ab" * 32, [7], [3]).shape
    (1, 24)
    """
    prefix = sink_prefix(sink_id)
    count, width = len(key_hashes), len(prefix) + _ID.size
    rows = np.empty((count, width), dtype=np.uint8)
    rows[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    for column, values in ((len(prefix), key_hashes), (len(prefix) + 8, sequences)):
        big_endian = np.asarray(values).astype(">u8")
        rows[:, column : column + 8] = big_endian.view(np.uint8).reshape(count, 8)
    return rows


def parse_record_id(value: bytes) -> tuple[str, int, int]:
    """``(sink prefix in hex, key hash, sequence)`` of an id ``record_ids`` made."""
    key, sequence = _ID.unpack(value[-_ID.size:])
    return value[:-_ID.size].hex(), key, sequence


def sink_prefix(sink_id: str) -> bytes:
    """What every id of ``sink_id``'s records starts with: 8 bytes of its BLAKE2b hash.

    Short, because every output record carries it; two sinks writing one topic (refused unless
    ``shared=True``) would have to collide on 64 bits to be confused.
    """
    return hashlib.blake2b(sink_id.encode(), digest_size=8).digest()


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

    async def published_ids(self, header: str, prefix: bytes,
                            resume_offsets: Mapping[int, int]) -> set[bytes]:
        """Ids (header ``header``) starting with ``prefix`` of the output topic's records from
        ``resume_offsets`` (offset 0 for partitions it does not name) to the end."""
        consumer = self._consumer()
        await consumer.start()
        try:
            partitions = sorted(consumer.partitions_for_topic(self.topic) or ())
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            starts = {tp: int(resume_offsets.get(tp.partition, 0)) for tp in tps}
            found: set[bytes] = set()
            for record in await _read_range(consumer, starts, dict.fromkeys(tps), self.timeout_s):
                for name, value in record.headers or ():
                    if name == header and value.startswith(prefix):
                        found.add(bytes(value))
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
