"""Produce requests written in one piece and answers read minimally, on aiokafka's connections.

aiokafka sends a built record batch through its accumulator, its sender task, a ``ProduceRequest``
object encoded field by field (``aiokafka/protocol/types.py``), a response decoded into nested
tuples, and one delivery future per batch: about 1 ms of Python per request on a sink's thin
stream. ``ProduceCall`` is the same request made as one bytes object: the record batches are
already final (``connectors.record_batches``), so only the few fields around them are packed.
It goes through aiokafka's own client (``client.send``: the connection to the partition's leader,
its correlation ids and timeouts) at the Produce version aiokafka itself would pick from the
broker's ApiVersions (3 to 7; record batches v2 need 3), and the answer is read into one
``(error code, base offset)`` per partition.

>>> call = ProduceCall("out", {1: b"BATCH"}, acks=-1, timeout_ms=30_000)
>>> prepared = call.prepare({0: (0, 9)})
>>> prepared.API_VERSION, prepared.encode()[:8].hex()
(7, 'ffffffff00007530')
>>> answer = (b"\\x00\\x00\\x00\\x01\\x00\\x03out\\x00\\x00\\x00\\x01\\x00\\x00\\x00\\x01\\x00\\x06"
...           + (41).to_bytes(8, "big") + b"\\xff" * 16 + b"\\x00" * 4)
>>> ProduceAnswer.read(io.BytesIO(answer), 7).partitions
{1: (6, 41)}
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Any

from connectors.encoded_requests import INT16, INT32, EncodedRequest, shared_version
from connectors.errors import ConnectorConfigError

__all__ = ["PRODUCE_VERSIONS", "ProduceAnswer", "ProduceCall", "produce_version"]

#: The Produce versions written here: v3 is the first to carry record batches (message format
#: v2), v7 the last aiokafka 0.14 speaks (v8 adds per-record errors to the answer).
PRODUCE_VERSIONS = range(3, 8)
_PRODUCE = 0
_FIELDS = struct.Struct(">hhi")  # transactional id (null), acks, timeout
_PARTITION = struct.Struct(">ii")
_OUTCOME = struct.Struct(">ihq")


def produce_version(versions: dict[int, tuple[int, int]]) -> int:
    """The highest Produce version both the broker (its ApiVersions answer) and this module
    speak; ``ConnectorConfigError`` when there is none."""
    version = shared_version(versions, _PRODUCE, PRODUCE_VERSIONS)
    if version is None:
        low, high = versions.get(_PRODUCE, (0, -1))
        raise ConnectorConfigError(
            f"the broker speaks Produce v{low}..v{high}; streamdag writes record batches with "
            f"Produce v{PRODUCE_VERSIONS.start}..v{PRODUCE_VERSIONS.stop - 1} (Kafka 0.11 or "
            "later)"
        )
    return version


@dataclass(frozen=True)
class ProduceAnswer:
    """A Produce answer: per partition of the one topic sent, its error code and base offset."""

    partitions: dict[int, tuple[int, int]]

    @classmethod
    def read(cls, data: io.BytesIO, version: int) -> ProduceAnswer:
        """Read the answer to a Produce request of ``version`` from ``data``."""
        buffer = data.getbuffer()
        at = data.tell()
        outcomes: dict[int, tuple[int, int]] = {}
        # Step 1: topics (one, as sent): name, then its partitions.
        (topics,) = INT32.unpack_from(buffer, at)
        at += 4
        extra = 16 if version >= 5 else 8  # timestamp, and log start offset from v5
        for _ in range(topics):
            (name_length,) = INT16.unpack_from(buffer, at)
            (count,) = INT32.unpack_from(buffer, at + 2 + max(name_length, 0))
            at += 6 + max(name_length, 0)
            # Step 2: each partition's outcome.
            for _ in range(count):
                partition, error_code, base_offset = _OUTCOME.unpack_from(buffer, at)
                outcomes[partition] = (error_code, base_offset)
                at += _OUTCOME.size + extra
        del buffer
        return cls(outcomes)


class ProduceCall:
    """A Produce request for built record batches of one topic, one batch per partition, for
    aiokafka's ``client.send(node_id, call)``; acks ``-1`` is ``all``."""

    def __init__(self, topic: str, batches: dict[int, Any], *, acks: int,
                 timeout_ms: int) -> None:
        if acks == 0:
            raise ConnectorConfigError("a ProduceCall needs an answer; use acks 1 or -1 (all)")
        self.required_acks = acks
        name = topic.encode()
        parts = [_FIELDS.pack(-1, acks, timeout_ms), INT32.pack(1), INT16.pack(len(name)),
                 name, INT32.pack(len(batches))]
        for partition, batch in batches.items():
            parts += [_PARTITION.pack(partition, len(batch)), batch]
        self._body = b"".join(parts)

    def prepare(self, versions: dict[int, tuple[int, int]]) -> EncodedRequest:
        """This request at the version the connection's broker and this module share."""
        return EncodedRequest(_PRODUCE, produce_version(versions), self._body,
                              ProduceAnswer.read)
