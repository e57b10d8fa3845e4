"""Where each partition of a Kafka source starts and ends, how far it has been read, and how
far the log goes.

Robust to brokers whose offset lookups are approximate (Tansu: ListOffsets(latest) returns the
base offset of the last batch plus one, and a timestamp lookup may answer an earlier offset):
"latest" is settled by the high watermark of a real fetch, a timestamp start also skips any
record before it, a timestamp end is decided per record, never by a lookup alone, and the log
end behind the lag is measured with a fetch where the lookup falls short (``LogEnds``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

from connectors.errors import TopicError
from connectors.fetched_batches import FetchedRecords

__all__ = ["LogEnds", "PartitionBounds", "Timestamp"]

_NANOS_PER_MS = 1_000_000


@dataclass(frozen=True)
class Timestamp:
    """A point in time in nanoseconds since the epoch, to start or end a source at.

    >>> Timestamp.from_ms(1_700_000_000_000)
    Timestamp(ns=1700000000000000000)
    """

    ns: int

    @classmethod
    def from_ms(cls, ms: int) -> Timestamp:
        """The timestamp ``ms`` milliseconds after the epoch (Kafka's record time unit)."""
        return cls(ms * _NANOS_PER_MS)

    @property
    def first_ms(self) -> int:
        """The first whole millisecond at or after this time (records carry ms timestamps).

        >>> Timestamp(1_700_000_000_000_000_001).first_ms
        1700000000001
        """
        # Integer arithmetic: a float quotient of nanoseconds this large loses the remainder.
        return -(-self.ns // _NANOS_PER_MS)


class PartitionBounds:
    """One partition's read state: position, end (offset or time) and whether it is done."""

    def __init__(
        self,
        tp: TopicPartition,
        position: int,
        *,
        start: Timestamp | None = None,
        end_offset: int | None = None,
        end: Timestamp | None = None,
        end_in_past: bool = False,
    ) -> None:
        self.tp = tp
        #: The offset after the last record handed out (or consumed before the start time).
        self.position = position
        self._start_ms = None if start is None else start.first_ms
        self._end_offset = end_offset
        self._end_ms = None if end is None else end.first_ms
        self._end_in_past = end_in_past
        self.finished = end_offset is not None and position >= end_offset

    @classmethod
    async def resolve(
        cls,
        consumer: AIOKafkaConsumer,
        tps: Sequence[TopicPartition],
        start: Any,
        end: Any,
        resume_from: Mapping[int, int],
        now_ns: int,
        timeout_s: float,
    ) -> dict[int, PartitionBounds]:
        """Seek every assigned partition to its start (or resume offset); return its bounds."""
        resumed = [tp for tp in tps if tp.partition in resume_from]
        fresh = [tp for tp in tps if tp.partition not in resume_from]
        for tp in resumed:
            consumer.seek(tp, resume_from[tp.partition])
        start_time = start if isinstance(start, Timestamp) else None
        end_time = end if isinstance(end, Timestamp) else None
        if fresh:
            await _seek_to_start(consumer, fresh, start, timeout_s)
        bounds: dict[int, PartitionBounds] = {}
        for tp in tps:
            bounds[tp.partition] = cls(
                tp,
                await consumer.position(tp),
                start=start_time if tp in fresh else None,
                end_offset=end if isinstance(end, int) else None,
                end=end_time,
                end_in_past=end_time is not None and end_time.ns <= now_ns,
            )
        return bounds

    def admit(self, records: FetchedRecords) -> FetchedRecords:
        """The records of a fetch that lie within bounds; moves the position past them."""
        count = len(records)
        if not count:
            return records
        offsets, stamps = records.offsets, records.timestamps
        first = 0
        if self._start_ms is not None:
            started = np.flatnonzero(stamps >= self._start_ms)
            if not started.shape[0]:
                self.position = int(offsets[-1]) + 1
                return records.slice(0, 0)
            first = int(started[0])
            self._start_ms = None
        stop = count
        if self._end_offset is not None:
            stop = int(np.searchsorted(offsets, self._end_offset, side="left"))
        if self._end_ms is not None:
            ended = np.flatnonzero(stamps[first:stop] >= self._end_ms)
            if ended.shape[0]:
                stop = first + int(ended[0])
        if stop < count:
            self.finished = True
        if stop > 0:
            self.position = int(offsets[stop - 1]) + 1
        return records.slice(first, max(first, stop))

    @property
    def ends_by_log(self) -> bool:
        """Whether reading to the log's end can finish it (``caught_up`` may say True)."""
        return self._end_offset is not None or (self._end_ms is not None and self._end_in_past)

    async def caught_up(self, consumer: AIOKafkaConsumer) -> bool:
        """Whether a bounded partition has nothing more to give (read to its end)."""
        if self._end_offset is not None:
            return bool(await consumer.position(self.tp) >= self._end_offset)
        if self._end_ms is not None and self._end_in_past:
            highwater = consumer.highwater(self.tp)
            return highwater is not None and bool(await consumer.position(self.tp) >= highwater)
        return False

    def restart_at(self, offset: int) -> None:
        """Continue from ``offset`` (a checkpoint's): no start filter, end not yet reached."""
        self.position = offset
        self._start_ms = None
        self.finished = self._end_offset is not None and offset >= self._end_offset


class LogEnds:
    """Each partition's log end as far as is known, and a way to measure it afresh.

    A fetch answer's high watermark is the log end on every broker, but only as fresh as the
    fetch, and a reader held back by backpressure does not fetch; Kafka's ListOffsets(latest)
    answers the log end, Tansu's only the base offset of the last batch plus one. So the end is
    the largest of: the reading consumer's latest high watermark, the offset after the last
    record it fetched, and a measurement: ListOffsets, and wherever that answers more than is
    known, the high watermark of a one-record fetch at the answer's last offset, made by a
    probe consumer of its own (so the reader's position is never touched).
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        tps: Sequence[TopicPartition],
        probe_options: Mapping[str, Any],
        timeout_s: float,
    ) -> None:
        self._consumer = consumer
        self._tps = list(tps)
        self._probe_options = dict(probe_options)
        self._timeout_s = timeout_s
        self._probe: AIOKafkaConsumer | None = None
        self._ends: dict[TopicPartition, int] = {}

    def saw(self, tp: TopicPartition, records: FetchedRecords) -> None:
        """Note the records a fetch returned for ``tp`` (the log goes at least past them)."""
        if len(records):
            self._note(tp, int(records.offsets[-1]) + 1)

    def end(self, tp: TopicPartition) -> int | None:
        """The log end of ``tp`` as far as is known; None before any answer about it."""
        known = self._ends.get(tp)
        highwater = self._consumer.highwater(tp)
        if highwater is None:
            return known
        return int(highwater) if known is None else max(known, int(highwater))

    async def measure(self) -> None:
        """Learn every partition's log end now (one lookup; a probe fetch where it falls short)."""
        answers = await asyncio.wait_for(self._consumer.end_offsets(self._tps), self._timeout_s)
        for tp in self._tps:
            answer = int(answers[tp])
            known = self.end(tp)
            if known is not None and answer <= known:
                continue  # no batch began past what is known: the known end stands
            self._note(tp, answer)
            if answer > 0:
                self._note(tp, await self._probe_end(tp, answer - 1))

    async def close(self) -> None:
        """Stop the probe consumer, if one was started."""
        probe, self._probe = self._probe, None
        if probe is not None:
            await probe.stop()

    def _note(self, tp: TopicPartition, end: int) -> None:
        self._ends[tp] = max(end, self._ends.get(tp, end))

    async def _probe_end(self, tp: TopicPartition, offset: int) -> int:
        probe = await self._probe_consumer()
        probe.seek(tp, offset)
        probe.resume(tp)
        try:
            fetched = await probe.getmany(tp, timeout_ms=math.ceil(self._timeout_s * 1000),
                                          max_records=1)
        finally:
            probe.pause(tp)
        records = fetched.get(tp, [])
        return max([int(probe.highwater(tp) or 0), *(int(r.offset) + 1 for r in records)])

    async def _probe_consumer(self) -> AIOKafkaConsumer:
        if self._probe is None:
            probe = AIOKafkaConsumer(**self._probe_options, enable_auto_commit=False,
                                     group_id=None, auto_offset_reset="latest")
            await probe.start()
            probe.assign(self._tps)
            probe.pause(*self._tps)
            self._probe = probe
        return self._probe


async def _seek_to_start(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], start: Any, timeout_s: float
) -> None:
    if start == "earliest":
        await consumer.seek_to_beginning(*tps)
    elif start == "latest":
        await consumer.seek_to_end(*tps)
        await _settle_at_log_end(consumer, tps, timeout_s)
    elif isinstance(start, Timestamp):
        found = await consumer.offsets_for_times({tp: start.first_ms for tp in tps})
        past_the_end = [tp for tp in tps if found.get(tp) is None]
        for tp in tps:
            answer = found.get(tp)
            if answer is not None:
                consumer.seek(tp, answer.offset)
        if past_the_end:
            await consumer.seek_to_end(*past_the_end)
            await _settle_at_log_end(consumer, past_the_end, timeout_s)
    else:
        for tp in tps:
            consumer.seek(tp, int(start))


async def _settle_at_log_end(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], timeout_s: float
) -> None:
    # A fetch answer's high watermark is the true log end on every broker we know; what the
    # fetch returned on the way lies before the start, so it is dropped.
    deadline = time.monotonic() + timeout_s
    seen: dict[TopicPartition, int] = {}
    while any(consumer.highwater(tp) is None for tp in tps):
        if time.monotonic() > deadline:
            raise TopicError(
                f"no fetch answer for {[str(tp) for tp in tps]} within {timeout_s:.0f}s while "
                "looking for the log end; check that the broker is healthy"
            )
        fetched = await consumer.getmany(*tps, timeout_ms=50)
        for tp, records in fetched.items():
            if records:
                seen[tp] = records[-1].offset + 1
    for tp in tps:
        target = max(consumer.highwater(tp), seen.get(tp, 0))
        if target > await consumer.position(tp):
            consumer.seek(tp, target)
