"""Replay a graph over a topic's records and write an HTML report with plots (no network).

Runs FILE (a graph spec) in this process over what its source topic holds, from ``--from``
(default: the beginning) to now, without writing to its sink topics, then writes ``--output``
(default ``report.html``): per key, the input's price with the moving averages and the
crossover signals that fired; per node, events, events/s and latency; the plan as a graph.
The page is self-contained: open it in any browser, offline. Kafka is found as ``tail`` finds
it. Exit codes: 0 written, 2 bad input or no Kafka.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from runtime.cli.kafka_flags import add_kafka_flags, kafka_answers, kafka_from_args
from runtime.cli.tail import parse_start
from streamdag.config import ConfigError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare FILE, ``--output``, ``--from``, ``--keys``, ``--timeout`` and where Kafka is."""
    parser.add_argument("file", metavar="FILE", type=Path, help="graph spec (.toml or .json)")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.html"),
                        help="the HTML file to write (default report.html)")
    parser.add_argument("--from", dest="start", default="earliest", metavar="WHERE",
                        help="earliest (default), an ISO-8601 time, or a time back from now: "
                        "30s, 5m, 2h")
    parser.add_argument("--keys", type=int, default=3,
                        help="how many keys get charts (the first, sorted; default 3)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds the replay may take (default 300)")
    add_kafka_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Replay, render, write; prints where the page is."""
    from connectors.source_bounds import Timestamp
    from runtime.report.page import ReportRun, render_report
    from runtime.runners.kafka_binding import KafkaBinding
    from runtime.runners.local_runner import LocalRunner
    from streamdag.graph import Graph
    from streamdag.spec import load_graph

    graph = load_graph(args.file)
    start = parse_start(args.start)
    if start == "latest":
        raise ConfigError("--from latest leaves nothing to replay; give earliest, an ISO-8601 "
                          "time, or a time back from now such as 5m")
    if args.keys < 1:
        raise ConfigError(f"--keys {args.keys}: give at least 1")
    bootstrap, _ = kafka_from_args(args)
    # Step 1: every node but the sinks is an output, so nothing is written to Kafka.
    shown = Graph(graph.name, outputs=[node for node in graph.nodes if node.role != "sink"])
    # Step 2: the replay, from the start to now.
    end = time.time_ns()
    binding = KafkaBinding(bootstrap, start=start if start == "earliest" else Timestamp(
        int(start)), end=Timestamp(end))
    began = time.perf_counter()
    with kafka_answers(bootstrap):
        result = LocalRunner(None, *binding.defaults()).run(shown, timeout_s=args.timeout)
    seconds = time.perf_counter() - began
    # Step 3: the page.
    topics = sorted({str(n.params["topic"]) for n in graph.nodes if n.role == "source"})
    described = (f"replay of {', '.join(topics)} on {bootstrap} from {args.start} to "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(end / 1e9))}")
    page = render_report(ReportRun(
        shown, {node.name: result.records(node.name) for node in shown.outputs},
        result.stats, seconds, described), keys=args.keys)
    args.output.write_text(page, encoding="utf-8")
    read = sum(result.stats[n.name].events_out for n in graph.nodes if n.role == "source")
    print(f"wrote {args.output} ({len(page):,} bytes): {read:,} input records replayed in "
          f"{seconds:.1f} s; open it in a browser")
    return 0
