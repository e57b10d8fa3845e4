"""The contracts between the runtime and connectors: source readers and sink writers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from streamdag.batch import Batch

__all__ = ["SinkFactory", "SinkWriter", "SourceChunk", "SourceFactory", "SourceReader"]


@dataclass(frozen=True)
class SourceChunk:
    """What one read of a source returns: records, the watermark after them, and whether done.

    ``finished`` is True once a bounded source has emitted everything up to its end; the
    runtime then sends EndOfStream downstream and stops reading. ``idle`` is True while the
    source has nothing to read (every partition quiet): the runtime marks it idle downstream,
    so that it holds back no other input's events, until its next record or watermark.
    ``partition_marks`` are per-partition watermarks ``((partition, timestamp), ...)``, from a
    source whose every key lives in one partition (``partitioned_by_key``; else empty), and
    ``late`` counts the records it dropped as behind their partition's watermark.
    """

    batch: Batch
    watermark: int | None = None
    finished: bool = False
    idle: bool = False
    partition_marks: tuple[tuple[int, int], ...] = ()
    late: int = 0


class SourceReader(Protocol):
    """A source's runtime object: reads micro-batches; the runtime calls it only with credit.

    Between two reads the reader holds at most a bounded prefetch, so a runtime that stops
    calling ``read`` (no downstream credit) stops consumption and lag grows at the broker.
    """

    async def open(self) -> None:
        """Connect and seek to the start position (or the offsets of a restored snapshot)."""
        ...

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """Return up to ``max_records``; wait at most ``linger_s`` once at least one arrived."""
        ...

    def position(self) -> dict[int, int]:
        """Per partition, the offset after the last record returned by ``read``."""
        ...

    async def close(self) -> None:
        """Release connections; safe to call twice."""
        ...


class SinkWriter(Protocol):
    """A sink's runtime object: writes batches to the outside world."""

    async def open(self) -> None:
        """Connect."""
        ...

    async def write(self, batch: Batch) -> None:
        """Hand a batch to the writer (it may buffer until ``flush``)."""
        ...

    async def flush(self) -> None:
        """Return once every written record is durably acknowledged; raise on failure."""
        ...

    async def close(self) -> None:
        """Flush and release connections; safe to call twice."""
        ...


#: Builds a source's reader inside the actor that hosts it (so it must be picklable).
SourceFactory = Callable[[], SourceReader]
#: Builds a sink's writer inside the actor that hosts it (so it must be picklable).
SinkFactory = Callable[[], SinkWriter]
