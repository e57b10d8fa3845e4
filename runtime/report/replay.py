"""Replay a graph over what its topics hold, in this process, and render the HTML report."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.dataplane.stats import NodeStats
from runtime.report.page import ReportRun, render_report
from streamdag.graph import Graph

__all__ = ["ReplayedReport", "replay_report"]


@dataclass(frozen=True)
class ReplayedReport:
    """The page, and how many input records the replay read in how many seconds."""

    page: str
    input_records: int
    seconds: float


def replay_report(
    graph: Graph,
    bootstrap_servers: str,
    *,
    start: str | int = "earliest",
    keys: int = 3,
    timeout_s: float = 300.0,
    live: tuple[Mapping[str, NodeStats], float] | None = None,
) -> ReplayedReport:
    """Replay ``graph`` from ``start`` ("earliest" or ns since the epoch) to now; its page.

    Steps: 1. every node but the sinks becomes an output, so nothing is written to Kafka;
    2. the bounded replay on the local runner; 3. the page. ``live`` (per-node figures and
    seconds of a live run over the same input, as the demo has) replaces the replay's own
    figures in the throughput and latency section.
    """
    from connectors.source_bounds import Timestamp
    from runtime.runners.kafka_binding import KafkaBinding
    from runtime.runners.local_runner import LocalRunner

    # Step 1: outputs, no sinks.
    shown = Graph(graph.name, outputs=[node for node in graph.nodes if node.role != "sink"])
    # Step 2: the replay, from the start to now.
    end = time.time_ns()
    binding = KafkaBinding(bootstrap_servers,
                           start="earliest" if start == "earliest" else Timestamp(int(start)),
                           end=Timestamp(end))
    began = time.perf_counter()
    result = LocalRunner(None, *binding.defaults()).run(shown, timeout_s=timeout_s)
    seconds = time.perf_counter() - began
    read = sum(result.stats[n.name].events_out for n in shown.nodes if n.role == "source")
    # Step 3: the page.
    topics = sorted({str(n.params["topic"]) for n in graph.nodes if n.role == "source"})
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(end / 1e9))
    if live is None:
        stats, run_seconds = result.stats, seconds
        described = f"replay of {', '.join(topics)} on {bootstrap_servers} up to {until}"
    else:
        stats, run_seconds = live
        described = (f"outputs: a replay of {', '.join(topics)} on {bootstrap_servers} up to "
                     f"{until}; figures: the live run")
    # Only the charted keys become dicts: a replay of the whole demo holds millions of records.
    source = next(node for node in shown.nodes if node.role == "source")
    read_batch = result.outputs.get(source.name)
    every_key = np.unique(read_batch.key) if read_batch is not None else np.empty(0, "S1")
    chosen = every_key[:keys]
    records: dict[str, list[dict[str, Any]]] = {}
    for node in shown.outputs:
        batch = result.outputs.get(node.name)
        records[node.name] = ([] if batch is None else
                              batch.take(np.flatnonzero(np.isin(batch.key, chosen))).to_records())
    page = render_report(ReportRun(shown, records, stats, run_seconds, described,
                                   keys_total=len(every_key)), keys=keys)
    return ReplayedReport(page, read, seconds)
