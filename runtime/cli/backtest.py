"""Backtest a graph spec over a recorded range of its input topics (or dry-run it live).

Reads each source topic's records up to now, replays [--from, --to) with each stateful node
warmed up on the history before --from (outputs before --from are suppressed), and prints
each output's record count and digest. Nothing is written unless asked: --out-dir DIR writes
JSON lines, --out PREFIX writes each sink's output to PREFIX<its topic>, never the live topics.
--dryrun instead runs the graph on live input, its sinks printing (or writing to --out-dir).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from streamdag.config import add_setting_flags, settings_from_args

if TYPE_CHECKING:
    from runtime.backtest.results import BacktestResult
    from streamdag.graph import Graph

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare SPEC, the range, scenarios, the executor and where outputs go."""
    from runtime.backtest.backtest import Executor
    from runtime.backtest.warmup import WARM_UP_MODES

    parser.add_argument("spec", metavar="SPEC", type=Path, help="graph spec (.toml or .json)")
    parser.add_argument("--from", dest="start", metavar="T",
                        help="start of the range: ISO-8601 (2026-01-02T03:04:05Z) or epoch "
                        "(s, ms, us or ns); required unless --dryrun")
    parser.add_argument("--to", dest="end", metavar="T", help="end of the range (exclusive)")
    parser.add_argument("--scenario", action="append", default=[], metavar="NODE.PARAM=VALUE",
                        help="override a node's param (repeatable)")
    parser.add_argument("--sweep", action="append", default=[], metavar="NODE.PARAM=V1,V2",
                        help="run one variant per value, together (repeatable: combinations)")
    parser.add_argument("--pace", type=float, default=None, metavar="N",
                        help="replay at N x event-time speed (streaming executor)")
    parser.add_argument("--executor", choices=get_args(Executor), default="auto",
                        help="batch: whole ranges per node; streaming: micro-batches as live; "
                        "auto: batch unless paced (default)")
    parser.add_argument("--workers", choices=("threads", "ray"), default="threads",
                        help="where the batch executor runs a generation's independent nodes "
                        "(default threads; ray: one Ray task per node)")
    parser.add_argument("--warmup", choices=WARM_UP_MODES, default="auto",
                        help="history replayed before --from (default auto: what equals live)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="TOPIC_PREFIX",
                       help="write each sink's output to TOPIC_PREFIX<topic>")
    where.add_argument("--out-dir", type=Path, metavar="DIR",
                       help="write <output>.jsonl and digests.json under DIR")
    parser.add_argument("--verify-against", metavar="TOPIC",
                        help="compare an output with a live run's records in TOPIC; exit 1 and "
                        "print the first difference when they differ")
    parser.add_argument("--output", metavar="NAME",
                        help="the output --verify-against compares (default: the only sink)")
    parser.add_argument("--no-cache", action="store_true",
                        help="neither read nor fill the cache under the state dir")
    parser.add_argument("--dryrun", action="store_true",
                        help="run on live input instead; sinks print, or write under --out-dir")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds a --dryrun runs (default 10)")
    parser.add_argument("--cache-url", metavar="URL", default=None,
                        help="the cache's path or fsspec URL (default <state_dir>/backtest-cache)")
    add_setting_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Run the backtest (or dry run) and print its summary; 1 when a verification fails."""
    from runtime.backtest import (
        BacktestOptions,
        Scenario,
        SweepResult,
        apply_scenario,
        backtest,
        parse_sweeps,
    )
    from runtime.backtest.errors import BacktestError
    from runtime.backtest.locations import bootstrap_servers_of, open_cache
    from runtime.backtest.progress import ProgressBar
    from runtime.backtest.times import parse_time
    from streamdag.spec import load_graph

    settings = settings_from_args(args)
    graph = load_graph(args.spec)
    bootstrap = bootstrap_servers_of(settings)
    if args.dryrun:
        return _dry_run(args, graph, bootstrap)
    if args.start is None or args.end is None:
        raise BacktestError("a backtest needs --from and --to (or --dryrun for live input)")
    start_ns, end_ns = parse_time(args.start), parse_time(args.end)
    scenarios = (parse_sweeps(args.sweep, args.scenario) if args.sweep
                 else [Scenario.parse(args.scenario)] if args.scenario else [])
    result = backtest(
        graph, start_ns, end_ns, bootstrap_servers=bootstrap, scenarios=scenarios,
        options=BacktestOptions(executor=args.executor, pace=args.pace, warmup=args.warmup,
                                workers=args.workers),
        cache=None if args.no_cache else open_cache(settings, args.cache_url),
        progress=ProgressBar(sys.stderr))
    variants = result.variants if isinstance(result, SweepResult) else {"": result}
    by_name = {scenario.name: scenario for scenario in scenarios}
    figures = result.figures
    print(f"{figures['events']:,} events replayed ({figures['warm_up_events']:,} of warm-up) "
          f"in {figures['seconds']:.2f} s by the {figures['executor']} executor; "
          f"{len(figures['computed'])} node(s) computed, {len(figures['cached'])} from the cache"
          f"\nwarm-up: {figures['warm_up']}")
    status = 0
    for name, variant in variants.items():
        label = f"[{name}] " if name else ""
        for output, digest in variant.digests().items():
            print(f"{label}{output}: {len(variant.outputs[output]):,} records, sha256 {digest}")
        applied = graph if not name else apply_scenario(graph, by_name[name])
        status = max(status, _deliver(args, applied, variant, bootstrap, start_ns, end_ns, name))
    return status


def _deliver(args: argparse.Namespace, applied: Graph, result: BacktestResult, bootstrap: str,
             start_ns: int, end_ns: int, variant: str) -> int:
    """Write and verify one variant's outputs as the flags ask; 1 when verification fails."""
    from runtime.backtest.backtest import output_nodes
    from runtime.backtest.errors import BacktestError
    from runtime.backtest.outputs import verify_against, write_out_dir, write_topics

    # A variant's name ("sma20.window=30") made a legal topic name part.
    suffix = re.sub(r"[^A-Za-z0-9._-]", "_", variant) + "." if variant else ""
    if args.out_dir is not None:
        folder = args.out_dir / variant if variant else args.out_dir
        for path in write_out_dir(result, folder):
            print(f"wrote {path}")
    if args.out is not None:
        compression = settings_from_args(args).kafka.compression or None  # the sinks' setting
        for sink, topic in write_topics(result, applied, bootstrap, args.out + suffix,
                                        compression_type=compression).items():
            print(f"wrote {sink} to topic {topic!r}")
    if args.verify_against is None:
        return 0
    sinks = [node.name for node in output_nodes(applied) if node.role == "sink"]
    output = args.output or (sinks[0] if len(sinks) == 1 else None)
    if output is None:
        raise BacktestError(f"--verify-against needs --output NAME: the graph has outputs "
                            f"{sorted(result.outputs)}")
    difference = verify_against(result, applied, output, bootstrap, args.verify_against,
                                start_ns, end_ns)
    if difference is None:
        print(f"{output} equals {args.verify_against!r} over the range: verified")
        return 0
    print(difference)
    return 1


def _dry_run(args: argparse.Namespace, graph: Graph, bootstrap: str) -> int:
    from runtime.backtest.dryrun import dry_run

    result = dry_run(graph, bootstrap, args.duration, args.out_dir)
    ended = "the input ended" if result is not None else f"{args.duration:g} s are up"
    print(json.dumps({"dryrun": graph.name, "stopped": ended}))
    return 0
