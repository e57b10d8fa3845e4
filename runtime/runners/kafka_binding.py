"""Binding graph endpoints to Kafka: picklable reader/writer factories for source and sink nodes."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from connectors.codecs import RecordDecoder
from connectors.compression import compression_problem
from connectors.errors import ConnectorConfigError
from connectors.fetched_batches import FetchedRecords, decode_fetch
from connectors.kafka_sink import KafkaSinkConfig, KafkaSinkWriter
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from connectors.partitioning import key_partitions
from connectors.watermarks import partition_runs
from runtime.runners.replay import TimeOrderedReader
from streamdag.connector import SourceReader
from streamdag.errors import GraphError
from streamdag.graph import Node
from streamdag.record_format import record_format_of

__all__ = ["KafkaBinding", "KafkaSinkFactory", "KafkaSourceFactory"]

#: A record of each codec that every decoder scans (and rejects): an empty map.
_EMPTY_RECORD = {"json": b"{}", "msgpack": b"\x80"}


def _warm_up_record(config: KafkaSourceConfig) -> bytes:
    """One record a source of ``config`` accepts: its key, event time and every field (encoded
    in plain Python: the sink's compiled encoders are no kernels of a source)."""
    schema = config.schema
    record = {config.key_field: "warm", config.time_field: 1,
              **{name: np.ones(1, dtype=schema.dtype(name))[0].item() for name in schema.names}}
    if config.codec == "msgpack":
        return bytes(msgpack.packb(record))
    return json.dumps(record).encode()


@dataclass(frozen=True)
class KafkaSourceFactory:
    """Builds a KafkaSourceReader inside the source node's actor.

    With ``time_ordered`` (bounded replays), partitions are merged by event time so the
    result does not depend on which partition a fetch happened to return first.
    """

    config: KafkaSourceConfig
    time_ordered: bool = False

    def __call__(self) -> SourceReader:
        """A new reader for this config."""
        reader = KafkaSourceReader(self.config)
        return TimeOrderedReader(reader) if self.time_ordered else reader

    def warm_up(self) -> None:
        """Load the fetch decoder's and the record scanner's kernels now (from the kernel
        cache), not on the first read.

        The node host calls it while it gets ready, so that cost is paid while the other
        nodes start, not between the first fetch and the first output. It reads a fetch as
        a fetch is read (``KafkaSourceReader``): a record batch of a record in the source's
        format and one it rejects, decoded, two fetches joined, their values scanned.
        """
        config = self.config
        decoder = RecordDecoder(config.schema, key_field=config.key_field,
                                time_field=config.time_field, time_unit=config.time_unit,
                                codec=config.codec, max_record_bytes=config.max_record_bytes)
        builder = DefaultRecordBatchBuilder(2, 0, False, -1, -1, -1, batch_size=1 << 16)
        for offset, value in enumerate([_warm_up_record(config), _EMPTY_RECORD[config.codec]]):
            builder.append(offset, 1_700_000_000_000, b"warm", value, [])
        fetched = decode_fetch(bytes(builder.build()), fetch_offset=0,
                               read_committed=config.isolation_level == "read_committed")
        if fetched is None:
            raise RuntimeError("the warm-up's record batch was declined")
        records = FetchedRecords.joined([fetched, fetched])
        starts = records.value_start
        decoded = decoder.decode_spans(records.buffer, starts,
                                       starts + np.maximum(records.value_length, 0),
                                       records.timestamps)
        partition_runs(decoded.ts, np.zeros(len(decoded.ts), dtype=np.int32), {0: 1}, 0)

    def shard(self, index: int, count: int) -> KafkaSourceFactory:
        """The factory of source shard ``index`` of ``count``: its group of the partitions.

        >>> from streamdag.schema import Schema
        >>> config = KafkaSourceConfig("127.0.0.1:9092", "ticks", Schema.of(p="float64"))
        >>> KafkaSourceFactory(config).shard(1, 3).config.partition_group
        (1, 3)
        """
        return dataclasses.replace(
            self, config=dataclasses.replace(self.config, partition_group=(index, count)))


@dataclass(frozen=True)
class KafkaSinkFactory:
    """Builds a KafkaSinkWriter inside the sink node's actor."""

    config: KafkaSinkConfig

    def __call__(self) -> KafkaSinkWriter:
        """A new writer for this config."""
        return KafkaSinkWriter(self.config)

    def warm_up(self) -> None:
        """Load the key partitioner's kernel now (from the kernel cache), not on the first write."""
        key_partitions(np.array([b"warm"]), 1)


@dataclass(frozen=True)
class KafkaBinding:
    """Default connectors of a run: every kafka_source/kafka_sink node talks to one cluster.

    >>> import streamdag as sd
    >>> ticks = sd.source("ticks", topic="market.ticks", key="symbol", schema={"p": "float64"})
    >>> factory = KafkaBinding("127.0.0.1:9092").source_for(ticks)
    >>> factory.config.topic, factory.config.key_field
    ('market.ticks', 'symbol')
    """

    bootstrap_servers: str
    fetch_max_wait_ms: int = 10
    #: A live read's idleness (``KafkaSettings.idle_timeout_s``; None or 0: off); a bounded
    #: read has none.
    idle_timeout_s: float | None = 10.0
    start: Any = "earliest"
    end: Any = None
    group_id: str | None = None
    #: Where a bounded replay's sinks write: None refuses (a replay never appends to the live
    #: graph's output topics unless asked), ``"backtest."`` writes ``backtest.<topic>``, and
    #: ``""`` appends to the live topics on purpose.
    replay_prefix: str | None = None
    #: Compression of every sink's record batches (``KafkaSinkConfig.compression_type``):
    #: None, ``"gzip"``, ``"snappy"``, ``"lz4"`` or ``"zstd"``; refused here when unknown or
    #: when its library is not installed.
    compression_type: str | None = None
    #: Bytes a source's fetch returns at most, per partition and per request. A source holds
    #: up to about two fetches per partition (one decoded, one in flight), each response read
    #: and copied by aiokafka first: with aiokafka's 1 MiB per partition, a source actor
    #: catching up on the issue workload (4 partitions) peaked 17 MiB higher (159 against 142
    #: MiB RSS), at the same rate; a live stream's fetches are far smaller anyway.
    max_partition_fetch_bytes: int = 256 << 10
    fetch_max_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        problem = compression_problem(self.compression_type)
        if problem is not None:
            raise ConnectorConfigError(f"KafkaBinding: {problem}")

    def source_for(self, node: Node) -> KafkaSourceFactory:
        """The reader factory of a ``kafka_source`` node (time-ordered if the range is bounded)."""
        return KafkaSourceFactory(
            KafkaSourceConfig.from_endpoint_params(
                node.params,
                self.bootstrap_servers,
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                max_partition_fetch_bytes=self.max_partition_fetch_bytes,
                fetch_max_bytes=self.fetch_max_bytes,
                start=self.start,
                end=self.end,
                group_id=self.group_id,
                # A bounded read knows where each partition ends: none is ever idle, so a
                # partition the broker is slow to serve cannot fall behind the watermark.
                idle_timeout_s=(self.idle_timeout_s or None) if self.end is None else None,
            ),
            time_ordered=self.end is not None,
        )

    def sink_for(self, node: Node) -> KafkaSinkFactory:
        """The writer factory of a ``kafka_sink`` node, writing records in its format (a bounded
        replay's: see ``replay_prefix``).

        >>> import streamdag as sd
        >>> ticks = sd.source("ticks", topic="market.ticks", key="symbol",
        ...                   schema={"p": "float64"})
        >>> sink = ticks.to_topic("signals", name="out")
        >>> KafkaBinding("127.0.0.1:9092", end=100, replay_prefix="bt.").sink_for(sink).config.topic
        'bt.signals'
        """
        topic = str(node.params["topic"])
        if self.end is not None:
            if self.replay_prefix is None:
                raise GraphError(
                    f"sink {node.name!r} would append a bounded replay's output to the live "
                    f"topic {topic!r}; bind it elsewhere (sinks={{{node.name!r}: ListSink}}), "
                    "give KafkaBinding(..., replay_prefix='backtest.') to write "
                    f"'backtest.{topic}', or replay_prefix='' to append to {topic!r} on purpose")
            topic = f"{self.replay_prefix}{topic}"
        return KafkaSinkFactory(
            KafkaSinkConfig(self.bootstrap_servers, topic, codec=node.params["codec"],
                            record_format=record_format_of(node),
                            compression_type=self.compression_type)
        )

    def defaults(self) -> tuple[Callable[[Node], KafkaSourceFactory],
                                Callable[[Node], KafkaSinkFactory]]:
        """``(default_source, default_sink)`` for the runners."""
        return self.source_for, self.sink_for
