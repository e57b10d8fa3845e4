"""Binding graph endpoints to Kafka: picklable reader/writer factories for source and sink nodes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connectors.kafka_sink import KafkaSinkConfig, KafkaSinkWriter
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from runtime.runners.replay import TimeOrderedReader
from streamdag.connector import SourceReader
from streamdag.graph import Node
from streamdag.record_format import record_format_of

__all__ = ["KafkaBinding", "KafkaSinkFactory", "KafkaSourceFactory"]


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


@dataclass(frozen=True)
class KafkaSinkFactory:
    """Builds a KafkaSinkWriter inside the sink node's actor."""

    config: KafkaSinkConfig

    def __call__(self) -> KafkaSinkWriter:
        """A new writer for this config."""
        return KafkaSinkWriter(self.config)


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
    start: Any = "earliest"
    end: Any = None
    group_id: str | None = None

    def source_for(self, node: Node) -> KafkaSourceFactory:
        """The reader factory of a ``kafka_source`` node (time-ordered if the range is bounded)."""
        return KafkaSourceFactory(
            KafkaSourceConfig.from_endpoint_params(
                node.params,
                self.bootstrap_servers,
                fetch_max_wait_ms=self.fetch_max_wait_ms,
                start=self.start,
                end=self.end,
                group_id=self.group_id,
            ),
            time_ordered=self.end is not None,
        )

    def sink_for(self, node: Node) -> KafkaSinkFactory:
        """The writer factory of a ``kafka_sink`` node, writing records in its format."""
        return KafkaSinkFactory(
            KafkaSinkConfig(self.bootstrap_servers, str(node.params["topic"]),
                            codec=node.params["codec"], record_format=record_format_of(node))
        )

    def defaults(self) -> tuple[Callable[[Node], KafkaSourceFactory],
                                Callable[[Node], KafkaSinkFactory]]:
        """``(default_source, default_sink)`` for the runners."""
        return self.source_for, self.sink_for
