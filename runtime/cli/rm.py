"""Remove a submission: its graph stops, and nodes no other graph uses are stopped.

Nodes shared with other submissions keep running for them.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from runtime.deployment.client import add_connection_flags, client_from_args

__all__ = ["add_arguments", "print_submission", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``ID``, ``--json`` and the connection flags."""
    parser.add_argument("id", metavar="ID", help="submission id (see `streamdag ls`)")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    add_connection_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Remove and print the submission's final state."""
    print_submission("removed", client_from_args(args).remove(args.id), args)
    return 0


def print_submission(verb: str, submission: dict[str, Any], args: argparse.Namespace) -> None:
    """One line (or the JSON with ``--json``) saying what became of a submission."""
    if args.json:
        print(json.dumps(submission, indent=2))
        return
    cause = submission.get("cause")
    print(f"{verb} {submission.get('id', args.id)} (graph {submission.get('graph')}): "
          f"{submission.get('state')}" + (f" ({cause})" if cause else ""))
