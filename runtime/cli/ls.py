"""List the deployment's submissions: id, graph, state, nodes and how many were reused."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from runtime.deployment.client import add_connection_flags, client_from_args

__all__ = ["add_arguments", "render_table", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``--json`` and the connection flags."""
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    add_connection_flags(parser)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell; columns of numbers (or "-") right-aligned.

    >>> print(render_table(["id", "nodes"], [["a-1", 5], ["bb-22", 12]]))
    id     nodes
    a-1        5
    bb-22     12
    """
    cells = [[str(c) for c in headers], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [_numeric_column([row[i] for row in rows]) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(w) if num else cell.ljust(w)
                 for cell, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _numeric_column(values: Sequence[object]) -> bool:
    # "-" stands for "no figure" in a column of numbers; it must not break their alignment.
    def is_number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    return bool(values) and all(v == "-" or is_number(v) for v in values)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


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
