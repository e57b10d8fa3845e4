"""List the deployment's submissions: id, graph, state, nodes and how many were reused.

Exit codes: 0 listed; 1 no deployment is running (none started with `streamdag up` from this
state directory, and no --url given); 2 an error.
"""

from __future__ import annotations

import argparse
import json

from runtime.cli.tables import render_table
from runtime.deployment.client import GatewayAddress, add_connection_flags, client_from_args
from streamdag.config import load_settings

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
    if args.url is None and not _gateway_known(args):
        state_dir = args.state_dir or load_settings().state_dir
        message = (f"no deployment is running (none started from state directory "
                   f"{state_dir!r}); start one with `streamdag up` in another shell, then "
                   "`streamdag submit FILE`")
        if args.json:
            print(json.dumps({"error": {"type": "NoDeploymentRunning", "message": message}},
                             indent=2))
        else:
            print(message)
        return 1
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


def _gateway_known(args: argparse.Namespace) -> bool:
    # A gateway.json from `streamdag up`, or a gateway configured by settings and a token.
    settings = load_settings(overrides=[f"state_dir={args.state_dir}"] if args.state_dir else [])
    return GatewayAddress.load(settings.state_dir) is not None or bool(
        args.token or settings.gateway.token)
