"""What travels on a channel: envelopes carrying a batch or an in-band control message."""

from __future__ import annotations

from dataclasses import dataclass

from streamdag.batch import Batch

__all__ = [
    "ACTIVE",
    "IDLE",
    "Barrier",
    "EndOfStream",
    "Envelope",
    "PartitionMarks",
    "Payload",
    "Watermark",
    "WatermarkStatus",
    "edge_id",
]


@dataclass(frozen=True)
class Watermark:
    """Every event with ``ts < timestamp`` has arrived on this channel."""

    timestamp: int


@dataclass(frozen=True)
class PartitionMarks:
    """Per partition of a source declared ``partitioned_by_key``, a watermark of its own.

    ``marks`` is ``((partition, timestamp), ...)``: no more events of that partition below
    its timestamp. Every record of a key comes from one partition, so a node whose operator
    keeps its keys apart (``OperatorDef.keys_apart``) may release a partition's events by that
    partition's mark instead of waiting for the slowest partition (see
    ``runtime.dataplane.partition_release``). Only a source sends them, and only to the nodes
    that read it directly; every other node ignores them.
    """

    marks: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class WatermarkStatus:
    """Whether this channel's producer is idle, as Flink's ``WatermarkStatus``.

    An idle producer (a source whose partitions all went quiet, or a node all of whose inputs
    are idle) holds no watermark back: a node leaves its idle inputs out of the combined
    watermark and of what it releases, and goes by the highest of their watermarks once every
    input is idle. An idle producer repeats IDLE while it stays idle (at most every
    ``IDLE_REPEAT_S`` along a path). A resume (``ACTIVE``, sent before the events it brings,
    or a record on an idle input) makes every idle input of the node hold the watermark again
    until its producer repeats IDLE: two inputs may come from one source over paths of
    different speeds, and the slower one's events are still on their way. Events behind what
    the node already released are late. Barriers and end-of-stream are aligned over idle
    inputs as over any other.
    """

    idle: bool


#: The producer went idle.
IDLE = WatermarkStatus(idle=True)
#: The producer is active again.
ACTIVE = WatermarkStatus(idle=False)


@dataclass(frozen=True)
class EndOfStream:
    """No more messages will follow on this channel."""


@dataclass(frozen=True)
class Barrier:
    """Checkpoint ``checkpoint_id`` cuts the stream here (aligned-barrier snapshotting)."""

    checkpoint_id: int


Payload = Batch | Watermark | WatermarkStatus | EndOfStream | Barrier | PartitionMarks


@dataclass(frozen=True)
class Envelope:
    """One push on one edge: ordered by ``seq`` within ``(edge, incarnation)``.

    What one step of the sender produced travels in one push: ``payload`` first, then
    ``trailing`` (typically the watermark, barrier or end of stream after a batch), so that
    control messages cost no call of their own.

    >>> Envelope("e", 0, 7, Watermark(5), trailing=(EndOfStream(),)).payloads
    (Watermark(timestamp=5), EndOfStream())
    """

    edge: str
    incarnation: int
    seq: int
    payload: Payload
    #: Wall-clock time (time.time()) when the sender let it go, for per-hop latency.
    sent_at: float = 0.0
    #: Payloads that follow ``payload`` in order, in the same push.
    trailing: tuple[Payload, ...] = ()

    @property
    def payloads(self) -> tuple[Payload, ...]:
        """Everything this push carries, in order."""
        return (self.payload, *self.trailing)


def edge_id(upstream: str, downstream: str, input_index: int) -> str:
    """The name of the edge from node ``upstream`` into input ``input_index`` of ``downstream``."""
    return f"{upstream[:16]}->{downstream[:16]}#{input_index}"
