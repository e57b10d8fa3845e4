"""Show one submission: its state (and cause), diff, history, and each node's figures.

Per node: operator, role, whether its actor is alive, how many graphs share it, events in and
out, p99 batch latency, queue depth and (sources) consumer lag, as of the controller's latest
health check.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from runtime.cli.submit import describe_submission
from runtime.cli.tables import render_table
from runtime.dataplane.stats import LatencyHistogram
from runtime.deployment.client import add_connection_flags, client_from_args

__all__ = ["add_arguments", "describe_status", "describe_tag_query", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``ID``, ``--json`` and the connection flags."""
    parser.add_argument("id", metavar="ID", help="submission id (see `streamdag ls`)")
    parser.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    add_connection_flags(parser)


def describe_status(status: Mapping[str, Any]) -> str:
    """The submission's summary, its history, then one table row per node.

    >>> print(describe_status({"id": "g-1", "graph": "g", "state": "executing", "cause": None,
    ...     "diff": {"new": ["ticks"], "reused": [], "reuse_ratio": 0.0},
    ...     "history": [{"to": "submitted"}, {"to": "executing"}],
    ...     "nodes": [{"name": "ticks", "operator": "kafka_source", "role": "source",
    ...                "alive": True, "shared_by": ["g-1"], "stats": {"events_in": 0,
    ...                "events_out": 1200, "queue_depth": 0, "lag": {"0": 3, "1": 4},
    ...                "process_latency": {"counts": [0, 0, 0, 2] + [0] * 13, "total": 0.001,
    ...                                    "observations": 2}}}],
    ...     "warm_pool": {"size": 3, "idle": 2, "starting": 1, "bound_total": 4}}))
    submission g-1 (graph g): executing
      1 nodes: 1 new, 0 reused (reuse ratio 0.00)
      new:    ticks
      history: submitted -> executing
      warm pool: 2 of 3 idle, 1 starting, 4 bound to nodes so far
    node   operator      role    alive  graphs  events in  events out  p99 batch ms  queue  lag
    ticks  kafka_source  source  yes         1          0       1,200          1.00      0    7
    """
    history = " -> ".join(str(step.get("to")) for step in status.get("history") or [])
    lines = [describe_submission(status)]
    if history:
        lines.append(f"  history: {history}")
    pool = status.get("warm_pool")
    if pool:
        lines.append(f"  warm pool: {pool['idle']} of {pool['size']} idle, {pool['starting']} "
                     f"starting, {pool['bound_total']} bound to nodes so far")
    rows: list[list[object]] = []
    for node in status.get("nodes") or []:
        stats = node.get("stats") or {}
        lag = stats.get("lag") or {}
        shards = int(node.get("shards") or 1)
        rows.append([
            f"{node.get('name')} ({shards} shards)" if shards > 1 else node.get("name"),
            node.get("operator"), node.get("role"),
            "yes" if node.get("alive") else "no", len(node.get("shared_by") or []),
            int(stats.get("events_in", 0)), int(stats.get("events_out", 0)),
            _p99_milliseconds(stats.get("process_latency")), int(stats.get("queue_depth", 0)),
            int(sum(lag.values())) if lag else "-",
        ])
    if rows:
        lines.append(render_table(["node", "operator", "role", "alive", "graphs", "events in",
                                   "events out", "p99 batch ms", "queue", "lag"], rows))
    lines.extend(describe_tag_query(node) for node in status.get("nodes") or []
                 if node.get("tag_query"))
    return "\n".join(lines)


def describe_tag_query(node: Mapping[str, Any]) -> str:
    """What a tag-query node follows now, and what it skips and why.

    >>> print(describe_tag_query({"name": "signals", "tag_query": {
    ...     "query": {"tags": ["signal"], "match": "all", "schema": {"value": "float64"}},
    ...     "follows": [{"name": "ema_a", "origin": "ema_a"}],
    ...     "skipped": [{"name": "bars", "reason": "its output has no field 'value'"}]}}))
    tag query signals (all of ['signal']) follows: ema_a
      skips bars: its output has no field 'value'
    """
    query = node["tag_query"]
    follows = ", ".join(str(f["origin"]) for f in query["follows"]) or "nothing yet"
    lines = [f"tag query {node.get('name')} ({query['query']['match']} of "
             f"{query['query']['tags']}) follows: {follows}"]
    lines.extend(f"  skips {skip['name']}: {skip['reason']}" for skip in query["skipped"])
    return "\n".join(lines)


def _p99_milliseconds(histogram: Mapping[str, Any] | None) -> float | str:
    if not histogram or not histogram.get("observations"):
        return "-"
    latency = LatencyHistogram(list(histogram["counts"]), float(histogram["total"]),
                               int(histogram["observations"]))
    return latency.quantile(0.99) * 1e3


def run(args: argparse.Namespace) -> int:
    """Print the submission's status; 1 when it failed."""
    status = client_from_args(args).status(args.id)
    print(json.dumps(status, indent=2) if args.json else describe_status(status))
    return 1 if status.get("state") == "failed" else 0
