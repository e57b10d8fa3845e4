"""Dry runs: a graph on live input whose sinks write to the console or a file, never Kafka."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

from connectors.record_encoding import encode_json_values
from runtime.dataplane.host import RuntimeSettings
from runtime.planning.wiring import RunResult
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.local_runner import LocalRunner
from streamdag.batch import Batch
from streamdag.graph import Graph

__all__ = ["DryRunSink", "dry_run"]


class DryRunSink:
    """A SinkWriter that prints each record as a JSON line (prefixed with the sink's name) to
    a stream, or appends it to a file.

    >>> import asyncio, io
    >>> out = io.StringIO()
    >>> asyncio.run(DryRunSink("out", stream=out).write(
    ...     Batch.from_columns(ts=[1], key=["a"], value=[0.5])))
    >>> out.getvalue()
    'out {"ts":1,"key":"a","value":0.5}\\n'
    """

    def __init__(self, name: str, *, stream: TextIO | None = None,
                 path: Path | None = None) -> None:
        self.name = name
        self._stream = stream
        self._path = path
        self.written = 0

    async def open(self) -> None:
        """Start the file afresh, if writing one."""
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._path.write_bytes(b"")

    async def write(self, batch: Batch, record_ids: object = None) -> None:
        """Print (or append) every record of ``batch``."""
        values = encode_json_values(batch)
        self.written += len(values)
        if self._path is not None:
            with self._path.open("ab") as out:
                out.write(b"".join(value + b"\n" for value in values))
        else:
            stream = self._stream if self._stream is not None else sys.stdout
            stream.write("".join(f"{self.name} {value.decode()}\n" for value in values))

    async def flush(self) -> None:
        """Everything is written at once."""

    async def close(self) -> None:
        """Nothing to release."""


def dry_run(graph: Graph, bootstrap_servers: str, duration_s: float,
            out_dir: Path | None = None, start: str = "latest") -> RunResult | None:
    """Run ``graph`` on its live topics (from ``start``) for ``duration_s``; sinks print
    (or write ``<out_dir>/<sink>.jsonl``). Returns the result if the input ended first."""
    sinks: Mapping[str, Callable[[], DryRunSink]] = {
        node.name: _sink_factory(node.name, out_dir)
        for node in graph.nodes if node.role == "sink"}
    binding = KafkaBinding(bootstrap_servers, start=start)
    runner = LocalRunner(RuntimeSettings(linger_s=0.005), binding.source_for)
    try:
        return runner.run(graph, sinks=sinks, timeout_s=duration_s)
    except TimeoutError:
        return None  # the duration is up: every host has been stopped


def _sink_factory(name: str, out_dir: Path | None) -> Callable[[], DryRunSink]:
    path = None if out_dir is None else out_dir / f"{name}.jsonl"
    return lambda: DryRunSink(name, path=path)
