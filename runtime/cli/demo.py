"""Run the main job: synthetic market data through the example graphs on Ray and Kafka."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamdag.config import add_setting_flags, settings_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `streamdag demo` (every setting has a flag; these are the common ones)."""
    parser.add_argument("--rate", type=float, default=None,
                        help="synthetic ticks per second (default 20000)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds to run before the summary; 0 runs until Ctrl-C (default 30)")
    parser.add_argument("--symbols", type=int, default=None, help="symbols (default 100)")
    parser.add_argument("--graph", action="append", default=None, metavar="FILE",
                        help="graph spec to run (repeatable; default: the example strategies)")
    parser.add_argument("--no-clear", action="store_true",
                        help="append console refreshes instead of redrawing the screen")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE.html",
                        help="also write an HTML report with plots of the run (offline page)")
    add_setting_flags(parser)
    # The repo's local config when run from a checkout; the same built-in defaults elsewhere
    # (an installed wheel), so the demo needs no file of the repo.
    parser.set_defaults(config="configs/local.toml" if Path("configs/local.toml").is_file()
                        else None)


def run(args: argparse.Namespace) -> int:
    """Run the demo, print its summary, and stop everything it started."""
    from runtime.demo import resolve_graph_path
    from runtime.demo.job import run_demo
    from streamdag.spec import load_graph

    overrides = list(args.set)
    if args.rate is not None:
        overrides.append(f"demo.rate={args.rate}")
    if args.duration is not None:
        overrides.append(f"demo.duration_s={args.duration}")
    if args.symbols is not None:
        overrides.append(f"demo.symbols={args.symbols}")
    if args.graph:
        overrides.append(f"demo.graphs={','.join(args.graph)}")
    args.set = overrides
    settings = settings_from_args(args)
    graphs = [load_graph(resolve_graph_path(path)) for path in settings.demo.graphs]
    try:
        report = run_demo(settings, graphs, clear=not args.no_clear and sys.stdout.isatty(),
                          html_report=args.report)
    except KeyboardInterrupt:
        print("\ninterrupted; everything the demo started has been stopped")
        return 130
    print(f"\nsummary: {report.produced:,} ticks in {report.seconds:.1f} s "
          f"({report.produced / max(report.seconds, 1e-9):,.0f}/s); shared nodes: "
          f"{', '.join(report.shared) or 'none'}")
    if report.settled:
        print("figures settled: every produced tick had gone through every node")
    else:
        print("figures NOT settled: ticks were still in flight 30 s after producing stopped "
              "(the graph could not keep up with --rate); the counts below are partial")
    for name, node in report.stats.items():
        print(f"  {name:<28} in {node.events_in:>10,}  out {node.events_out:>10,}")
    for topic, records in report.samples.items():
        read, fired = report.fired.get(topic, (0, 0))
        what = "the last signals that fired" if fired else "no signal fired; the last records"
        print(f"{topic}: {read:,} records, {fired:,} signals fired (+1/-1); {what}:")
        for record in records:
            print(f"  {record}")
    return 0
