"""Plan a graph spec and print it: generations as text, or the graph as Mermaid or DOT.

Loads FILE (a TOML or JSON graph spec), validates it, plans it in the chosen mode and prints
the result. Nothing is started and nothing is submitted.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import get_args

from runtime.planning.planner import PlanMode, plan_graph
from runtime.planning.render import render_dot, render_mermaid, render_text
from streamdag.spec import load_graph

__all__ = ["FORMATS", "add_arguments", "run"]

#: Output formats of ``streamdag plan``.
FORMATS = ("text", "mermaid", "dot")


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


def run(args: argparse.Namespace) -> int:
    """Load, validate, plan and print; returns 0 (errors raise StreamdagError, exit code 2)."""
    graph = load_graph(args.file)
    plan = plan_graph(graph, mode=args.mode)
    if args.format == "mermaid":
        output = render_mermaid(graph)
    elif args.format == "dot":
        output = render_dot(graph)
    else:
        output = render_text(plan, graph)
    print(output, end="")
    return 0
