"""Submit a graph spec file (TOML or JSON) to the running deployment through its gateway.

Prints the submission's id, its state and the diff: which nodes are new (created sinks first)
and which were already running and are now shared. Exit code 1 when the submission failed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runtime.deployment.client import add_connection_flags, client_from_args

__all__ = ["add_arguments", "describe_submission", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``FILE``, ``--json`` and the connection flags."""
    parser.add_argument("file", metavar="FILE", type=Path, help="graph spec (.toml or .json)")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    add_connection_flags(parser)


def describe_submission(submission: Mapping[str, Any]) -> str:
    """Lines for people: id, graph, state (and cause), the diff.

    >>> print(describe_submission({"id": "g-1", "graph": "g", "state": "executing",
    ...     "cause": None, "diff": {"new": ["out"], "reused": ["ticks", "sma20"],
    ...     "reuse_ratio": 2 / 3, "creation_order": [["out"]]}}))
    submission g-1 (graph g): executing
      3 nodes: 1 new, 2 reused (reuse ratio 0.67)
      new:    out
      reused: ticks, sma20
    """
    diff = submission.get("diff") or {}
    new, reused = list(diff.get("new", [])), list(diff.get("reused", []))
    state = str(submission.get("state"))
    cause = submission.get("cause")
    lines = [
        f"submission {submission.get('id')} (graph {submission.get('graph')}): {state}"
        + (f" ({cause})" if cause else ""),
        f"  {len(new) + len(reused)} nodes: {len(new)} new, {len(reused)} reused "
        f"(reuse ratio {float(diff.get('reuse_ratio', 0.0)):.2f})",
    ]
    if new:
        lines.append(f"  new:    {', '.join(new)}")
    if reused:
        lines.append(f"  reused: {', '.join(reused)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Submit and print; 0 when submitted, 1 when the submission failed."""
    submission = client_from_args(args).submit(args.file)
    print(json.dumps(submission, indent=2) if args.json else describe_submission(submission))
    return 1 if submission.get("state") == "failed" else 0
