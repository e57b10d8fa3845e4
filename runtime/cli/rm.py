"""Remove a submission: its graph stops, and nodes no other graph uses are stopped.

Nodes shared with other submissions keep running for them.
"""

from __future__ import annotations

import argparse
import json

from runtime.deployment.client import add_connection_flags, client_from_args

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``ID``, ``--json`` and the connection flags."""
    parser.add_argument("id", metavar="ID", help="submission id (see `streamdag ls`)")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    add_connection_flags(parser)


def run(args: argparse.Namespace) -> int:
    """Remove and print the submission's final state."""
    removed = client_from_args(args).remove(args.id)
    if args.json:
        print(json.dumps(removed, indent=2))
    else:
        cause = removed.get("cause")
        print(f"removed {removed.get('id', args.id)} (graph {removed.get('graph')}): "
              f"{removed.get('state')}" + (f" ({cause})" if cause else ""))
    return 0
