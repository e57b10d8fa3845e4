"""Plan a graph spec and print it: generations as text, or the graph as Mermaid or DOT.

Loads FILE (a TOML or JSON graph spec), validates it, plans it in the chosen mode and prints
the result, first saying what its generations mean in that mode; ``--both`` prints the
streaming order and the batch order. Nothing is started and nothing is submitted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from runtime.planning.planner import PlanMode, plan_graph
from runtime.planning.render import render_dot, render_mermaid, render_text
from streamdag.spec import load_graph

__all__ = ["FORMATS", "ORDER_LEGENDS", "add_arguments", "run"]

#: Output formats of ``streamdag plan``.
FORMATS = ("text", "mermaid", "dot")

#: What the generations of a plan mean, per mode: the first line of a text plan.
ORDER_LEGENDS: dict[str, str] = {
    "streaming": "streaming order (live runs and deployments): generation 0 is created first "
    "(the sinks), each node before the nodes feeding it; sources start reading last",
    "batch": "batch order (replays): generation 0 runs first (the sources), each node after "
    "the nodes feeding it; sinks run last",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``FILE``, ``--mode`` and ``--format``."""
    parser.add_argument("file", metavar="FILE", type=Path, help="graph spec (.toml or .json)")
    parser.add_argument(
        "--mode",
        choices=get_args(PlanMode),
        default="streaming",
        help="batch: sources first (replays); streaming: sinks first (deployment). "
        "Default: streaming",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text: the plan's generations; mermaid or dot: the graph. Default: text",
    )
    parser.add_argument("--both", action="store_true",
                        help="text: print the plan in both orders, streaming then batch")


def run(args: argparse.Namespace) -> int:
    """Load, validate, plan and print; returns 0 (errors raise StreamdagError, exit code 2)."""
    graph = load_graph(args.file)
    modes = get_args(PlanMode) if args.both else (args.mode,)
    plans = [plan_graph(graph, mode=mode) for mode in sorted(modes, reverse=True)]
    if args.format == "mermaid":
        output = render_mermaid(graph)
    elif args.format == "dot":
        output = render_dot(graph)
    else:
        output = "\n".join(f"{ORDER_LEGENDS[plan.mode]}\n{render_text(plan, graph)}"
                            for plan in plans)
    print(output, end="")
    return 0
