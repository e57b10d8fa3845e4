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
    from runtime.report.replay import replay_report
    from streamdag.spec import load_graph

    graph = load_graph(args.file)
    start = parse_start(args.start)
    if start == "latest":
        raise ConfigError("--from latest leaves nothing to replay; give earliest, an ISO-8601 "
                          "time, or a time back from now such as 5m")
    if args.keys < 1:
        raise ConfigError(f"--keys {args.keys}: give at least 1")
    bootstrap, _ = kafka_from_args(args)
    with kafka_answers(bootstrap):
        report = replay_report(graph, bootstrap, start=start, keys=args.keys,
                               timeout_s=args.timeout)
    args.output.write_text(report.page, encoding="utf-8")
    print(f"wrote {args.output} ({len(report.page):,} bytes): {report.input_records:,} input "
          f"records replayed in {report.seconds:.1f} s; open it in a browser")
    return 0
