"""The Kafka source: explicit partitions, start/end bounds, decoding, watermarks, dead letters.

``KafkaSourceConfig`` is the serializable spec; ``KafkaSourceReader`` is the runtime object
built from it (and from the offsets of a checkpoint, ``resume_from``). The reader fetches only
inside ``read``: aiokafka buffers at most one fetch response per partition
(``max_partition_fetch_bytes`` each, ``fetch_max_bytes`` per request), so a runtime that stops
reading stops consumption and the lag grows at the broker, not in memory.

Offsets live in checkpoints; a ``group_id`` only makes the reader commit its positions for
monitoring (lag dashboards), never to decide where to start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from connectors.codecs import (
    CodecName,
    RecordDecoder,
    TimeUnit,
    decoder_config_problems,
)
from connectors.dead_letters import DeadLetter, DeadLetterPublisher
from connectors.errors import ConnectorConfigError, TopicError
from connectors.fetch_drain import FetchDrain
from connectors.fetched_batches import FetchedRecords
from connectors.source_bounds import LogEnds, PartitionBounds, Timestamp
from connectors.watermarks import PartitionWatermarks, ReadingClock, partition_runs
from streamdag.batch import Batch
from streamdag.cancellation import cancel_and_wait
from streamdag.connector import SourceChunk
from streamdag.schema import Schema

__all__ = ["KafkaSourceConfig", "KafkaSourceReader", "Timestamp"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KafkaSourceConfig:
    """Everything a Kafka source reader is built from.

    ``start`` is ``'earliest'``, ``'latest'``, an offset (every partition) or a Timestamp
    (the first record at or after it, by record timestamp). ``end`` is None (unbounded), an
    offset (exclusive, every partition) or a Timestamp (records before it; a partition ends at
    its first record at or after it, or, when the timestamp had passed at open, once it has
    read everything that was in the partition). ``time_field == ''`` takes event time from the
    record timestamp. ``dead_letter_topic`` defaults to ``<topic>.dlq``.

    >>> config = KafkaSourceConfig("127.0.0.1:9092", "ticks", Schema.of(price="float64"))
    >>> config.dead_letter_topic, config.start, config.end
    ('ticks.dlq', 'earliest', None)
    """

    bootstrap_servers: str
    topic: str
    schema: Schema
    key_field: str = "key"
    time_field: str = "ts"
    time_unit: TimeUnit = "ns"
    codec: CodecName = "json"
    partitions: tuple[int, ...] | None = None
    start: Literal["earliest", "latest"] | int | Timestamp = "earliest"
    end: int | Timestamp | None = None
    dead_letter_topic: str = ""
    max_record_bytes: int = 1 << 20
    lateness_ns: int = 0
    idle_timeout_s: float | None = 10.0
    fetch_max_wait_ms: int = 10
    max_batch_records: int = 10_000
    max_partition_fetch_bytes: int = 1 << 20
    fetch_max_bytes: int = 16 << 20
    poll_timeout_s: float = 0.1
    group_id: str | None = None
    commit_interval_s: float = 5.0
    isolation_level: Literal["read_uncommitted", "read_committed"] = "read_uncommitted"
    client_id: str = "streamdag-source"
    request_timeout_ms: int = 30_000
    #: Seconds between two measurements of the log end behind ``lag()``; 0 measures only on
    #: ``measure_lag()``.
    lag_refresh_s: float = 1.0
    #: ``(index, count)``: read only group ``index`` of ``count`` (every count-th of the
    #: partitions, from the index-th on), as one shard of a sharded source does.
    partition_group: tuple[int, int] | None = None
    #: Every record of a key is in one partition (the producer partitions by this key): each
    #: partition's watermark travels on its own (``PartitionMarks``), so a keyed node releases
    #: a partition's events without waiting for the slowest partition, and a record more
    #: than ``lateness_ns`` behind an earlier one of its partition is dropped here as late.
    partitioned_by_key: bool = False

    def __post_init__(self) -> None:
        if not self.dead_letter_topic:
            object.__setattr__(self, "dead_letter_topic", f"{self.topic}.dlq")
        problems = _config_problems(self)
        if problems:
            raise ConnectorConfigError(
                f"Kafka source for topic {self.topic!r}: " + "; ".join(problems)
            )

    @classmethod
    def from_endpoint_params(
        cls, params: Mapping[str, Any], bootstrap_servers: str, **options: Any
    ) -> KafkaSourceConfig:
        """A config from a ``kafka_source`` node's params plus connection ``options``."""
        return cls(
            bootstrap_servers=bootstrap_servers,
            topic=params["topic"],
            schema=params["schema"],
            key_field=params.get("key", "key"),
            time_field=params.get("time", "ts"),
            time_unit=params.get("time_unit", "ns"),
            codec=params.get("codec", "json"),
            partitioned_by_key=bool(params.get("partitioned_by_key", False)),
            **options,
        )


def _config_problems(config: KafkaSourceConfig) -> list[str]:
    problems = ["topic is empty"] if not config.topic else []
    problems += decoder_config_problems(config.key_field, config.time_unit, config.codec)
    start = config.start
    if not (start in ("earliest", "latest") or isinstance(start, Timestamp)
            or (isinstance(start, int) and not isinstance(start, bool) and start >= 0)):
        problems.append(f"start {start!r} is invalid; expected 'earliest', 'latest', an offset "
                        ">= 0 or a Timestamp")
    end = config.end
    if not (end is None or isinstance(end, Timestamp)
            or (isinstance(end, int) and not isinstance(end, bool) and end >= 0)):
        problems.append(f"end {end!r} is invalid; expected None, an offset >= 0 or a Timestamp")
    if config.partitions is not None and (
        not config.partitions or len(set(config.partitions)) != len(config.partitions)
        or min(config.partitions) < 0
    ):
        problems.append(f"partitions {config.partitions!r} must be distinct ids >= 0, or None "
                        "for all")
    for name in ("max_record_bytes", "max_batch_records", "max_partition_fetch_bytes",
                 "fetch_max_bytes", "request_timeout_ms"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be at least 1, got {getattr(config, name)}")
    if (config.fetch_max_wait_ms < 0 or config.lateness_ns < 0 or config.poll_timeout_s < 0
            or config.lag_refresh_s < 0):
        problems.append("fetch_max_wait_ms, lateness_ns, poll_timeout_s and lag_refresh_s "
                        "cannot be negative")
    group = config.partition_group
    if group is not None and not (len(group) == 2 and 0 <= group[0] < group[1]):
        problems.append(f"partition_group {group!r} must be (index, count) with "
                        "0 <= index < count, or None for every partition")
    if config.idle_timeout_s is not None and not config.idle_timeout_s > 0:
        problems.append(f"idle_timeout_s must be > 0 or None, got {config.idle_timeout_s}")
    return problems


@dataclass
class _Counters:
    records: int = 0
    exact_path: int = 0
    #: Records dropped as behind their partition's watermark since the last read.
    late: int = 0
    last_commit: float = field(default_factory=time.monotonic)


class KafkaSourceReader:
    """Reads a topic's partitions into Batches with lineage; a ``SourceReader``.

    ``resume_from`` (partition -> offset, from a checkpoint) overrides ``start`` for the
    partitions it names. ``clock`` drives partition idleness (inject one in tests).
    ``compiled_fetch=False`` reads fetches through aiokafka's per-record path (``FetchDrain``;
    a reference for tests and benchmarks); ``fast_requests=False`` keeps aiokafka's own Fetch
    request objects (``connectors.fetch_requests``; a reference for benchmarks).
    """

    def __init__(
        self,
        config: KafkaSourceConfig,
        *,
        resume_from: Mapping[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ns: Callable[[], int] = time.time_ns,
        compiled_fetch: bool = True,
        fast_requests: bool = True,
    ) -> None:
        self._config = config
        self._compiled_fetch = compiled_fetch
        self._fast_requests = fast_requests
        self._drain: FetchDrain | None = None
        self._resume_from = dict(resume_from or {})
        # Partitions go idle on the time spent reading them, not on time held back.
        self._reading_clock = ReadingClock(clock)
        self._wall_clock_ns = wall_clock_ns
        self._consumer: AIOKafkaConsumer | None = None
        self._bounds: dict[int, PartitionBounds] = {}
        self._marks: PartitionWatermarks | None = None
        #: The partitions of the last read's batch, ascending.
        self._read_partitions: list[int] = []
        self._decoder = RecordDecoder(
            config.schema,
            key_field=config.key_field,
            time_field=config.time_field,
            time_unit=config.time_unit,
            codec=config.codec,
            max_record_bytes=config.max_record_bytes,
        )
        self._dead_letters = DeadLetterPublisher(
            config.bootstrap_servers, config.dead_letter_topic, config.topic,
            client_id=f"{config.client_id}-dead-letters",
        )
        self._counters = _Counters()
        self._log_ends: LogEnds | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, assign the partitions and seek each to its start (or resume) offset."""
        config = self._config
        consumer = AIOKafkaConsumer(
            bootstrap_servers=config.bootstrap_servers,
            client_id=config.client_id,
            group_id=config.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=config.fetch_max_wait_ms,
            fetch_max_bytes=config.fetch_max_bytes,
            max_partition_fetch_bytes=config.max_partition_fetch_bytes,
            isolation_level=config.isolation_level,
            request_timeout_ms=config.request_timeout_ms,
        )
        await consumer.start()
        self._consumer = consumer
        self._drain = FetchDrain(consumer, compiled=self._compiled_fetch,
                                 fast_requests=self._fast_requests)
        try:
            partitions = await self._resolve_partitions(consumer)
            tps = [TopicPartition(config.topic, p) for p in partitions]
            consumer.assign(tps)
            self._bounds = await PartitionBounds.resolve(
                consumer, tps, config.start, config.end, self._resume_from,
                self._wall_clock_ns(), config.request_timeout_ms / 1000,
            )
        except BaseException:
            await self.close()
            raise
        self._marks = PartitionWatermarks(
            partitions, lateness_ns=config.lateness_ns,
            idle_timeout_s=config.idle_timeout_s, clock=self._reading_clock,
        )
        for partition, bounds in self._bounds.items():
            if bounds.finished:
                self._finish(partition)
        self._log_ends = LogEnds(
            consumer, tps,
            {"bootstrap_servers": config.bootstrap_servers,
             "client_id": f"{config.client_id}-log-end",
             "fetch_max_wait_ms": config.fetch_max_wait_ms,
             "isolation_level": config.isolation_level,
             "request_timeout_ms": config.request_timeout_ms},
            timeout_s=min(5.0, config.request_timeout_ms / 1000),
        )
        if config.lag_refresh_s > 0:
            self._lag_task = asyncio.create_task(self._refresh_lag())

    async def close(self) -> None:
        """Commit positions (when monitored), stop the consumers and the dead-letter producer."""
        if self._closed:
            return
        self._closed = True
        consumer, self._consumer = self._consumer, None
        try:
            await cancel_and_wait(self._lag_task)
            if self._log_ends is not None:
                await self._log_ends.close()
            if consumer is not None:
                if self._config.group_id is not None and self._bounds:
                    await self._commit(consumer)
                await consumer.stop()
        finally:
            await self._dead_letters.close()

    # -- reading ---------------------------------------------------------------------------
    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """Up to ``max_records`` decoded records, the watermark after them, and whether done.

        Waits up to ``max(linger_s, poll_timeout_s)`` for a first record, then at most
        ``linger_s`` for more; returns an empty chunk when nothing came.
        """
        consumer = self._require_open()
        marks = self._marks
        assert marks is not None
        limit = max(1, min(max_records, self._config.max_batch_records))
        with self._reading_clock.reading():
            fetched = await self._fetch(consumer, limit, linger_s)
        for partition, bounds in self._bounds.items():
            if (not bounds.finished and bounds.ends_by_log
                    and not self._require_drain().holds(bounds.tp)
                    and await bounds.caught_up(consumer)):
                self._finish(partition)
        batch = await self._decode(fetched)
        self._counters.records += len(batch)
        if self._config.group_id is not None and (
            time.monotonic() - self._counters.last_commit >= self._config.commit_interval_s
        ):
            await self._commit(consumer)
        lags = self.lag()
        for partition in self._bounds:
            behind = lags.get(partition)
            # Records wait in the log (or in a held fetch), or the partition's log end is not
            # known yet while its first measurement is under way: it is not quiet. (Else a
            # partition the reader has not looked at, as after a restore, could go idle and
            # let the watermark pass its records before they were read: they would be late.)
            if (behind is None and self._lag_task is not None) or (behind or 0) > 0:
                marks.observe(partition, None)
        finished = all(bounds.finished for bounds in self._bounds.values())
        partition_marks: tuple[tuple[int, int], ...] = ()
        if self._config.partitioned_by_key and len(batch):
            newest = marks.event_times()
            partition_marks = tuple(
                (partition, stamp - self._config.lateness_ns)
                for partition in self._read_partitions  # the batch's, ascending
                if (stamp := newest.get(partition)) is not None)
        late, self._counters.late = self._counters.late, 0
        return SourceChunk(batch=batch, watermark=marks.current(), finished=finished,
                           idle=marks.idle(), partition_marks=partition_marks, late=late)

    def position(self) -> dict[int, int]:
        """Per partition, the offset after the last record returned by ``read``."""
        return {partition: bounds.position for partition, bounds in self._bounds.items()}

    def event_times(self) -> dict[int, int | None]:
        """Per partition, the newest event time read (a checkpoint keeps it with the offsets)."""
        return self._marks.event_times() if self._marks is not None else {}

    def restore_event_times(self, event_times: dict[int, int | None]) -> None:
        """Continue the watermark from a checkpoint's ``event_times`` (after ``seek_to``)."""
        if self._marks is not None:
            self._marks.restore_event_times(event_times)

    async def seek_to(self, positions: Mapping[int, int]) -> None:
        """Continue each named partition from the given offset (e.g. a checkpoint's)."""
        consumer = self._require_open()
        marks = self._marks
        assert marks is not None
        for partition, offset in positions.items():
            bounds = self._bounds.get(partition)
            if bounds is None:
                raise ConnectorConfigError(
                    f"cannot seek partition {partition} of {self._config.topic!r}: this reader "
                    f"reads partitions {sorted(self._bounds)}"
                )
            tp = TopicPartition(self._config.topic, partition)
            consumer.seek(tp, offset)
            self._require_drain().forget(tp)
            bounds.restart_at(offset)
            if bounds.finished:
                self._finish(partition)
            else:
                consumer.resume(tp)
                marks.reopen(partition)

    def pause(self) -> None:
        """Fetch nothing more (the runtime holds this source) until ``seek_to`` resumes."""
        consumer = self._require_open()
        consumer.pause(*(bounds.tp for bounds in self._bounds.values()))
        for bounds in self._bounds.values():
            self._require_drain().forget(bounds.tp)

    def lag(self) -> dict[int, int]:
        """Per partition, records in the log past our position (read, not merely fetched).

        The log end is the largest known of: the latest fetch answer's high watermark, the
        offset after the last record fetched, and the latest measurement (every
        ``lag_refresh_s``, or ``measure_lag``), which stays right while the reader is held
        back and on brokers whose ListOffsets answer falls short (see ``LogEnds``).
        Partitions nothing is known of yet are left out.
        """
        self._require_open()
        assert self._log_ends is not None
        lags: dict[int, int] = {}
        for partition, bounds in self._bounds.items():
            end = self._log_ends.end(bounds.tp)
            if end is not None:
                lags[partition] = max(0, end - bounds.position)
        return lags

    async def measure_lag(self) -> dict[int, int]:
        """Measure every partition's log end now; then ``lag()``."""
        self._require_open()
        assert self._log_ends is not None
        await self._log_ends.measure()
        return self.lag()

    # -- counters --------------------------------------------------------------------------
    @property
    def partitions(self) -> tuple[int, ...]:
        """The partitions this reader reads (known after ``open``)."""
        return tuple(sorted(self._bounds))

    @property
    def records_read(self) -> int:
        """Decoded records returned by ``read`` so far."""
        return self._counters.records

    @property
    def dead_lettered(self) -> int:
        """Records sent to the dead-letter topic so far."""
        return self._dead_letters.count

    @property
    def dead_lettered_by_reason(self) -> dict[str, int]:
        """Records sent to the dead-letter topic so far, per reason."""
        return self._dead_letters.by_reason

    @property
    def per_record_fetched(self) -> int:
        """Records fetched through aiokafka's per-record path (declined, or not compiled)."""
        return self._drain.per_record_count if self._drain is not None else 0

    @property
    def exact_path_records(self) -> int:
        """Records decoded one by one because the compiled scanner could not take them."""
        return self._counters.exact_path

    # -- internals -------------------------------------------------------------------------
    def _require_open(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            state = "closed" if self._closed else "not open yet"
            raise ConnectorConfigError(
                f"the Kafka source for {self._config.topic!r} is {state}; call open() first"
            )
        return self._consumer

    def _require_drain(self) -> FetchDrain:
        assert self._drain is not None
        return self._drain

    async def _resolve_partitions(self, consumer: AIOKafkaConsumer) -> list[int]:
        topic = self._config.topic
        if topic not in await consumer.topics():
            raise TopicError(
                f"topic {topic!r} does not exist on {self._config.bootstrap_servers}; create it "
                "(e.g. with connectors.topics.ensure_topics) or fix the name"
            )
        available = sorted(consumer.partitions_for_topic(topic) or ())
        wanted = list(self._config.partitions or available)
        missing = sorted(set(wanted) - set(available))
        if missing:
            raise TopicError(
                f"topic {topic!r} has partitions {available}, so {missing} cannot be read; "
                "fix the source's partitions or leave them None for all"
            )
        if self._config.partition_group is None:
            return sorted(wanted)
        index, count = self._config.partition_group
        if len(wanted) < count:
            raise TopicError(
                f"topic {topic!r} has {len(wanted)} partition(s) to read, fewer than the "
                f"{count} shards of its source, so shard {index} would read none; give the "
                f"source a parallelism of at most {len(wanted)}, or the topic more partitions")
        return sorted(wanted)[index::count]

    async def _fetch(
        self, consumer: AIOKafkaConsumer, limit: int, linger_s: float
    ) -> dict[int, list[FetchedRecords]]:
        loop = asyncio.get_running_loop()
        drain = self._require_drain()
        assert self._log_ends is not None and self._marks is not None
        collected: dict[int, list[FetchedRecords]] = {}
        count = 0
        deadline = loop.time() + max(linger_s, self._config.poll_timeout_s)
        lingering = False
        while count < limit:
            active = [bounds.tp for bounds in self._bounds.values() if not bounds.finished]
            if not active:
                break
            fetched = await drain.take(active, limit - count, max(0.0, deadline - loop.time()))
            if not fetched:
                break
            for tp, records in fetched.items():
                self._log_ends.saw(tp, records)
                bounds = self._bounds[tp.partition]
                kept = bounds.admit(records)
                self._marks.observe(tp.partition, None)
                if bounds.finished:
                    self._finish(tp.partition)
                if len(kept):
                    collected.setdefault(tp.partition, []).append(kept)
                    count += len(kept)
            if not lingering:
                lingering = True
                deadline = loop.time() + linger_s
            if loop.time() >= deadline:
                break
        return collected

    async def _decode(self, fetched: dict[int, list[FetchedRecords]]) -> Batch:
        order = sorted(fetched)
        pieces = [piece for partition in order for piece in fetched[partition]]
        if not pieces:
            empty = Batch.empty(self._config.schema)
            return Batch(empty.ts, empty.key, empty.columns,
                         np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64))
        # The values stay in the fetched record batches; no Python of ours runs per record.
        records = FetchedRecords.joined(pieces)
        stamps, offsets = records.timestamps, records.offsets
        partitions = np.repeat(np.array(order, dtype=np.int32),
                               [sum(map(len, fetched[partition])) for partition in order])
        starts = records.value_start
        decoded = self._decoder.decode_spans(
            records.buffer, starts, starts + np.maximum(records.value_length, 0), stamps)
        self._counters.exact_path += decoded.exact_path
        await self._dead_letters.publish([
            DeadLetter(
                partition=int(partitions[r.index]),
                offset=int(offsets[r.index]),
                timestamp_ms=int(stamps[r.index]) if stamps[r.index] >= 0 else None,
                key=records.key_at(r.index),
                value=records.value_at(r.index),
                reason=r.reason,
                detail=r.detail,
            )
            for r in decoded.rejections
        ])
        batch = Batch(decoded.ts, decoded.key, decoded.columns, partitions[decoded.accepted],
                      offsets[decoded.accepted])
        assert self._marks is not None and batch.partition is not None
        self._read_partitions = []
        if len(batch):
            # Rows are grouped by partition, in order: one pass judges them and finds each
            # partition's newest event time.
            runs = partition_runs(batch.ts, batch.partition, self._marks.event_times(),
                                  self._config.lateness_ns,
                                  drop_late=self._config.partitioned_by_key)
            if runs.late_count:
                self._counters.late += runs.late_count
                batch = batch.take(np.flatnonzero(~runs.late))
            for partition, stamp in zip(runs.partitions, runs.newest, strict=True):
                self._marks.observe(partition, stamp)
            # Runs come in the order the partitions' fetches came; marks go out ascending.
            self._read_partitions = sorted(runs.partitions)
        return batch

    async def _refresh_lag(self) -> None:
        assert self._log_ends is not None
        while not self._closed:  # and close() cancels it, again if a cancellation is lost
            try:
                await self._log_ends.measure()
            except Exception as error:  # lag is monitoring: the loop outlives a failed round
                _log.debug("log end of %s not measured: %s", self._config.topic, error)
            await asyncio.sleep(self._config.lag_refresh_s)

    def _finish(self, partition: int) -> None:
        assert self._consumer is not None and self._marks is not None
        self._bounds[partition].finished = True
        tp = TopicPartition(self._config.topic, partition)
        self._consumer.pause(tp)
        self._require_drain().forget(tp)
        self._marks.finish(partition)

    async def _commit(self, consumer: AIOKafkaConsumer) -> None:
        self._counters.last_commit = time.monotonic()
        offsets = {
            TopicPartition(self._config.topic, partition): bounds.position
            for partition, bounds in self._bounds.items()
        }
        try:
            await consumer.commit(offsets)
        except KafkaError as error:
            # Commits only feed lag monitoring; a failed one must not stop the stream.
            _log.warning("monitoring commit for %s failed: %s", self._config.topic, error)
