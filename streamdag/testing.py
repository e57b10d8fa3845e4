"""Public testing helpers: a scripted source with markers, a list sink, a hand-advanced clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import numpy as np

from streamdag.batch import Batch
from streamdag.connector import SourceChunk
from streamdag.errors import StreamdagError
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic, Role
from streamdag.operator_registry import available, register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = [
    "ABORT",
    "END",
    "PAUSE",
    "ChunkScript",
    "ListSink",
    "ManualClock",
    "Marker",
    "SourceAbortedError",
    "TestingSource",
    "declaration_only_operator",
    "read_topic",
]


class Marker(Enum):
    """Scripted events of a TestingSource."""

    END = "end"
    ABORT = "abort"
    PAUSE = "pause"


END = Marker.END
ABORT = Marker.ABORT
PAUSE = Marker.PAUSE


class SourceAbortedError(StreamdagError):
    """A TestingSource reached an ABORT marker: a simulated crash."""


class TestingSource:
    """A SourceReader over a script of batches and markers, for tests and examples.

    Each ``read`` returns the next batch (split to ``max_records``) with a watermark equal to the
    newest event time so far minus ``lateness_ns`` (the disorder the script may have across
    batches; an event further behind is late). ``END`` finishes the stream (so does the end of
    the script); ``ABORT`` raises SourceAbortedError once (a simulated crash; a reader resumed
    past it goes on); ``PAUSE`` stops emitting until ``resume()``. ``position()`` is
    ``{0: items consumed}``.

    >>> import asyncio
    >>> src = TestingSource([Batch.from_columns(ts=[1, 2], key=["a", "b"], value=[1.0, 2.0])])
    >>> chunk = asyncio.run(src.read(10, 0.0))
    >>> len(chunk.batch), chunk.watermark, chunk.finished
    (2, 2, False)
    >>> asyncio.run(src.read(10, 0.0)).finished
    True
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        script: Sequence[Batch | Marker],
        *,
        resume_from: Mapping[int, int] | None = None,
        lateness_ns: int = 0,
    ) -> None:
        if lateness_ns < 0:
            raise ValueError(f"lateness_ns cannot be negative, got {lateness_ns}")
        self._script = list(script)
        self._lateness_ns = lateness_ns
        self._index = int(resume_from.get(0, 0)) if resume_from else 0
        self._offset = 0
        self._paused = asyncio.Event()
        self._paused.set()
        self._watermark: int | None = None
        self._aborted = False

    async def open(self) -> None:
        """Nothing to connect."""

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """The next scripted batch (or part of it), honouring the markers."""
        await self._paused.wait()
        while self._index < len(self._script):
            item = self._script[self._index]
            if item is Marker.END:
                return SourceChunk(_empty_like(self._script), self._watermark, finished=True)
            if item is Marker.ABORT:
                self._index += 1
                if not self._aborted:
                    self._aborted = True
                    raise SourceAbortedError(f"scripted abort at item {self._index - 1}")
                continue
            if item is Marker.PAUSE:
                self._index += 1
                self._paused.clear()
                await self._paused.wait()
                continue
            assert isinstance(item, Batch)
            part = item.slice(self._offset, self._offset + max_records)
            self._offset += len(part)
            if self._offset >= len(item):
                self._index += 1
                self._offset = 0
            if len(part):
                newest = int(part.ts.max()) - self._lateness_ns
                self._watermark = newest if self._watermark is None else max(
                    self._watermark, newest
                )
                return SourceChunk(part, self._watermark)
        return SourceChunk(_empty_like(self._script), self._watermark, finished=True)

    def resume(self) -> None:
        """Continue after a PAUSE marker."""
        self._paused.set()

    def position(self) -> dict[int, int]:
        """Items fully consumed so far (a partly read batch counts as not consumed)."""
        return {0: self._index}

    async def seek_to(self, positions: Mapping[int, int]) -> None:
        """Continue from item ``positions[0]`` (a checkpoint's ``position()``), at its start."""
        self._index = int(positions.get(0, self._index))
        self._offset = 0

    async def close(self) -> None:
        """Nothing to release."""


def _empty_like(script: Sequence[Batch | Marker]) -> Batch:
    for item in script:
        if isinstance(item, Batch):
            return item.slice(0, 0)
    return Batch(np.empty(0, dtype=np.int64), np.empty(0, dtype="S1"), {})


class ListSink:
    """A SinkWriter that keeps every batch it is given, in order.

    It also keeps records' idempotence ids and epoch commits, like a Kafka sink's topic and
    companion topic, so one instance shared by every incarnation of a sink (``sinks={"out":
    lambda: shared}``) gives exactly-once output across recoveries in one process.

    >>> import asyncio
    >>> sink = ListSink()
    >>> asyncio.run(sink.write(Batch.from_columns(ts=[1], key=["a"], value=[1.5])))
    >>> sink.records()
    [{'ts': 1, 'key': 'a', 'value': 1.5}]
    """

    def __init__(self) -> None:
        self.batches: list[Batch] = []
        self.flushes = 0
        #: Every record's id (b"" for records written without one), in write order.
        self.record_ids: list[bytes] = []
        #: ``(sink id, epoch, records written by then)`` of every epoch commit.
        self.commits: list[tuple[str, int, int]] = []

    async def open(self) -> None:
        """Nothing to connect."""

    async def write(self, batch: Batch, record_ids: Sequence[bytes] | None = None) -> None:
        """Keep the batch (and its records' ids)."""
        if len(batch):
            self.batches.append(batch)
            self.record_ids.extend(record_ids if record_ids is not None else [b""] * len(batch))

    async def published_sequences(self, sink_id: str, before_epoch: int) -> dict[int, int]:
        """Per key hash, the highest sequence of ``sink_id`` after its last commit of an epoch
        before ``before_epoch``."""
        from connectors.record_ids import ID_HEADER, highest_sequences, sink_tag

        start = max((written for sink, epoch, written in self.commits
                     if sink == sink_id and epoch < before_epoch), default=0)
        keys = np.concatenate([batch.key for batch in self.batches] or [np.array([], "S1")])
        ids = self.record_ids[start:]
        return highest_sequences(sink_tag(sink_id), keys[start:], [ID_HEADER] * len(ids), ids)

    async def commit_epoch(self, sink_id: str, epoch: int) -> None:
        """Record that ``epoch`` of ``sink_id`` is wholly written."""
        self.commits.append((sink_id, epoch, len(self.record_ids)))

    def discard_pending(self) -> None:
        """Nothing is ever left undelivered here."""

    async def flush(self) -> None:
        """Count the flush; everything is already kept."""
        self.flushes += 1

    async def close(self) -> None:
        """Nothing to release."""

    def records(self) -> list[dict[str, object]]:
        """Every record written, as dicts, in order."""
        return [record for batch in self.batches for record in batch.to_records()]


async def read_topic(bootstrap_servers: str, topic: str, count: int,
                     timeout_s: float = 60.0, *, stalled_s: float | None = None) -> list[Any]:
    """Every record of ``topic`` (aiokafka ConsumerRecords, all partitions from the start).

    Waits up to ``timeout_s`` for ``count`` records (with ``stalled_s``: for as long as new
    records keep coming, giving up once none came for ``stalled_s``), then a little longer
    for any more: what an exactly-once test compares with its oracle, duplicates included.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, fetch_max_wait_ms=10,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p)
               for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(records) < count and loop.time() < deadline:
            before = len(records)
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            if stalled_s is not None and len(records) > before:
                deadline = max(deadline, loop.time() + stalled_s)
        for batch in (await consumer.getmany(timeout_ms=1500)).values():
            records.extend(batch)  # anything more is a duplicate
        return records
    finally:
        await consumer.stop()


class ChunkScript:
    """A reader of partitions 0 and 1 handing out scripted chunks, as a Kafka reader would.

    >>> reader = ChunkScript([SourceChunk(Batch.empty(Schema.of()), None, True)])
    >>> asyncio.run(reader.read(10, 0.0)).finished
    True
    """

    partitions = (0, 1)

    def __init__(self, chunks: list[SourceChunk]) -> None:
        self._chunks = chunks

    async def open(self) -> None:
        """Nothing to connect."""

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """The next scripted chunk."""
        return self._chunks.pop(0)

    def position(self) -> dict[int, int]:
        """No offsets kept."""
        return {}

    async def close(self) -> None:
        """Nothing to release."""


@dataclass
class ManualClock:
    """A clock that moves only when told to, for timing logic under test.

    >>> clock = ManualClock(10.0)
    >>> clock.advance(2.5)
    >>> clock()
    12.5
    """

    now: float = 0.0

    def __call__(self) -> float:
        """The current time in seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back; got advance({seconds})")
        self.now += seconds


class _DeclarationOnly(OperatorDef):
    """An operator with a declaration and no logic: for planning, rendering and their benchmarks."""

    params: ClassVar[tuple[Param, ...]] = (Param("tag", "int"),)

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """One float64 ``value``."""
        return Schema.of(value="float64")

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Never called: planning builds no logic."""
        raise AssertionError(f"{cls.type_name} is declaration-only; nothing may run it")


def declaration_only_operator(
    type_name: str, *, role: Role = "operator", arity: int | None = None
) -> type[OperatorDef]:
    """Register (once) an operator that planning can use but nothing can run.

    It takes one int param ``tag`` (so generated nodes stay distinct) and outputs one float64
    ``value``.

    >>> declaration_only_operator("doc_source", role="source", arity=0).role
    'source'
    """
    existing = available().get(type_name)
    if existing is not None:
        return existing
    declaration = type(
        f"DeclarationOnly_{type_name}",
        (_DeclarationOnly,),
        {"type_name": type_name, "role": role, "arity": arity, "__module__": __name__},
    )
    return register(declaration)
