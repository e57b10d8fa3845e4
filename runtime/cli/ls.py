"""List the deployment's submissions: id, graph, state, nodes and how many were reused."""

from __future__ import annotations

import argparse
import json

from runtime.cli.tables import render_table
from runtime.deployment.client import add_connection_flags, client_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``--json`` and the connection flags."""
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    add_connection_flags(parser)


def _shortened(text: str, limit: int = 60) -> str:
    # A cause can be a long error message; `streamdag status ID` prints it whole.
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run(args: argparse.Namespace) -> int:
    """Print the submissions, oldest first."""
    submissions = client_from_args(args).list_submissions()
    if args.json:
        print(json.dumps(submissions, indent=2))
        return 0
    if not submissions:
        print("no submissions; submit a graph spec with `streamdag submit FILE`")
        return 0
    rows = []
    for submission in submissions:
        diff = submission.get("diff") or {}
        rows.append([submission.get("id"), submission.get("graph"), submission.get("state"),
                     len(submission.get("nodes") or []), len(diff.get("new", [])),
                     len(diff.get("reused", [])), _shortened(submission.get("cause") or "")])
    print(render_table(["id", "graph", "state", "nodes", "new", "reused", "cause"], rows))
    return 0
