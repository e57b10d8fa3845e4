"""Where a backtest's outputs go when asked: JSON-lines files, or topics under a prefix; and
the comparison of an output with what a live run recorded in a topic."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np

from connectors.kafka_sink import KafkaSinkConfig, KafkaSinkWriter
from connectors.kafka_source import KafkaSourceConfig
from connectors.record_encoding import encode_json_values
from connectors.source_bounds import Timestamp
from connectors.topics import ensure_topics
from runtime.backtest.digests import first_difference
from runtime.backtest.errors import BacktestError
from runtime.backtest.inputs import read_all
from runtime.backtest.results import BacktestResult
from streamdag.batch import Batch
from streamdag.graph import Graph

__all__ = ["verify_against", "write_out_dir", "write_topics"]


def write_out_dir(result: BacktestResult, directory: str | Path) -> list[Path]:
    """One ``<output>.jsonl`` per output (a sink's JSON records) and ``digests.json``."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, batch in sorted(result.outputs.items()):
        path = folder / f"{name}.jsonl"
        path.write_bytes(b"".join(value + b"\n" for value in encode_json_values(batch)))
        written.append(path)
    digests = folder / "digests.json"
    digests.write_text(json.dumps(result.digests(), indent=2, sort_keys=True) + "\n")
    return [*written, digests]


def write_topics(result: BacktestResult, graph: Graph, bootstrap_servers: str,
                 prefix: str, *, compression_type: str | None = None) -> dict[str, str]:
    """Each sink's output to ``<prefix><its topic>`` (its batches compressed with
    ``compression_type``, as ``kafka.compression`` asks); the topics written, by sink name.

    An empty prefix would append to the live graph's topics: refused.
    """
    if not prefix:
        raise BacktestError("--out needs a non-empty topic prefix (e.g. 'backtest.'): a "
                            "backtest never appends to the live graph's output topics")
    targets = {node.name: (f"{prefix}{node.params['topic']}", node.params["codec"])
               for node in graph.sinks if node.operator == "kafka_sink"}

    async def publish() -> None:
        await ensure_topics(bootstrap_servers, {topic: 1 for topic, _ in targets.values()})
        for name, (topic, codec) in targets.items():
            writer = KafkaSinkWriter(KafkaSinkConfig(bootstrap_servers, topic, codec=codec,
                                                     compression_type=compression_type))
            await writer.open()
            try:
                await writer.write(result.outputs[name])
                await writer.flush()
            finally:
                await writer.close()

    asyncio.run(publish())
    return {name: topic for name, (topic, _) in targets.items()}


def verify_against(result: BacktestResult, graph: Graph, output: str, bootstrap_servers: str,
                   topic: str, start_ns: int, end_ns: int) -> str | None:
    """None when ``topic`` holds, within the range, exactly the records of ``output``; else the
    first difference, in words (the topic's records are the expected ones)."""
    node = graph.node(output)
    config = KafkaSourceConfig(
        bootstrap_servers, topic, node.output_schema, key_field="key", time_field="ts",
        codec=node.params.get("codec", "json"), start="earliest",
        end=Timestamp(time.time_ns()), idle_timeout_s=None)
    batches = asyncio.run(read_all(config))
    recorded = Batch.concat(batches) if batches else Batch.empty(node.output_schema)
    inside = recorded.take(np.flatnonzero((recorded.ts >= start_ns) & (recorded.ts < end_ns)))
    difference = first_difference(inside, result.outputs[output])
    if difference is None:
        return None
    return f"{output} differs from topic {topic!r}: {difference}"
