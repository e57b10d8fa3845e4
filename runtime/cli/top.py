"""A live per-node view of the deployment, refreshed every second (Ctrl-C quits).

It reads the gateway's ``/metrics``, the very series Prometheus scrapes, so what ``top`` shows
and what a dashboard shows agree: per node events in and out with their rates over the last
refresh, p99 batch latency and p99 end-to-end latency (sinks) over that refresh, queue depth
and consumer lag (sources); actors running, crashes, submissions by state, reuse ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from runtime.cli.tables import render_table
from runtime.dataplane.stats import LATENCY_BUCKETS, LatencyHistogram, NodeStats
from runtime.deployment.client import add_connection_flags, client_from_args
from runtime.deployment.metrics import NODE_FIGURE_FIELDS, NODE_HISTOGRAM_FIELDS

__all__ = ["DeploymentView", "NodeView", "add_arguments", "read_metrics", "render_top", "run"]


@dataclass
class NodeView:
    """One node as read from ``/metrics``: its labels, sharing, and its ``NodeStats`` back."""

    name: str
    node_id: str
    operator: str
    graphs: int = 0
    stats: NodeStats = field(default_factory=lambda: NodeStats("", ""))

    def __post_init__(self) -> None:
        self.stats.node_id, self.stats.name = self.node_id, self.name


@dataclass
class DeploymentView:
    """The whole deployment as read from ``/metrics``."""

    nodes: dict[str, NodeView] = field(default_factory=dict)
    actors_running: float = 0.0
    actor_crashes: float = 0.0
    reuse_ratio: float = 0.0
    submissions: dict[str, float] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``--interval``, ``--iterations``, ``--no-clear`` and the connection flags."""
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds between refreshes (default: 1)")
    parser.add_argument("--iterations", type=int, default=0,
                        help="stop after this many refreshes (default: 0, until Ctrl-C)")
    parser.add_argument("--no-clear", action="store_true",
                        help="append refreshes instead of redrawing the screen")
    add_connection_flags(parser)


def read_metrics(text: str) -> DeploymentView:
    """The deployment view in Prometheus exposition ``text`` from the gateway's ``/metrics``."""
    view = DeploymentView()
    for family in text_string_to_metric_families(text):
        if family.name == "streamdag_actors_running":
            view.actors_running = _single(family.samples)
        elif family.name == "streamdag_actor_crashes":
            view.actor_crashes = _single(family.samples)
        elif family.name == "streamdag_dedup_reuse_ratio":
            view.reuse_ratio = _single(family.samples)
        elif family.name == "streamdag_submissions":
            view.submissions = {s.labels["state"]: s.value for s in family.samples}
        elif family.name == "streamdag_node_graphs":
            for sample in family.samples:
                _node(view, sample.labels).graphs = int(sample.value)
        elif family.name in NODE_FIGURE_FIELDS:
            figure = NODE_FIGURE_FIELDS[family.name]
            for sample in family.samples:
                stats = _node(view, sample.labels).stats
                setattr(stats, figure, type(getattr(stats, figure))(sample.value))
        elif family.name == "streamdag_source_consumer_lag":
            for sample in family.samples:
                lag = _node(view, sample.labels).stats.lag
                lag[int(sample.labels["partition"])] = int(sample.value)
        elif family.name in NODE_HISTOGRAM_FIELDS:
            for labels, histogram in _histograms(family.samples).items():
                stats = _node(view, dict(labels)).stats
                setattr(stats, NODE_HISTOGRAM_FIELDS[family.name], histogram)
    return view


def _single(samples: Iterable[Sample]) -> float:
    return float(next(iter(samples)).value)


def _node(view: DeploymentView, labels: Mapping[str, str]) -> NodeView:
    node_id = labels["node_id"]
    if node_id not in view.nodes:
        view.nodes[node_id] = NodeView(labels["node"], node_id, labels["operator"])
    return view.nodes[node_id]


def _histograms(samples: Iterable[Sample]) -> dict[tuple[tuple[str, str], ...], LatencyHistogram]:
    """LatencyHistograms back from cumulative ``_bucket``, ``_sum`` and ``_count`` samples."""
    cumulative: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    sums: dict[tuple[tuple[str, str], ...], float] = {}
    counts: dict[tuple[tuple[str, str], ...], int] = {}
    for sample in samples:
        name, labels, value = sample.name, dict(sample.labels), sample.value
        bound = labels.pop("le", None)
        key = tuple(sorted(labels.items()))
        if name.endswith("_bucket") and bound is not None:
            cumulative.setdefault(key, {})[float(bound)] = value
        elif name.endswith("_sum"):
            sums[key] = value
        elif name.endswith("_count"):
            counts[key] = int(value)
    result = {}
    for key, buckets in cumulative.items():
        running = [buckets.get(bound, 0.0) for bound in LATENCY_BUCKETS]
        running.append(float(counts.get(key, 0)))
        per_bucket = [int(now - before) for now, before in zip(running, [0.0, *running[:-1]],
                                                                   strict=True)]
        result[key] = LatencyHistogram(per_bucket, sums.get(key, 0.0), counts.get(key, 0))
    return result


def render_top(
    current: DeploymentView, previous: DeploymentView | None, interval_s: float, url: str = ""
) -> str:
    """One screen: a header for the deployment, then one line per node.

    Rates and p99s cover the time since ``previous`` (the whole run when it is None).
    """
    states = " ".join(f"{state}={count:.0f}" for state, count in sorted(
        current.submissions.items()) if count) or "none"
    lines = [
        f"streamdag top  {url}  actors running: {current.actors_running:.0f}  crashes: "
        f"{current.actor_crashes:.0f}  reuse ratio: {current.reuse_ratio:.2f}",
        f"submissions: {states}",
        "",
    ]
    rows: list[list[object]] = []
    for node_id, node in sorted(current.nodes.items(), key=lambda item: (item[1].name, item[0])):
        before = previous.nodes.get(node_id) if previous is not None else None
        seconds = interval_s if before is not None else 0.0
        stats, was = node.stats, before.stats if before is not None else None
        batch = stats.process_latency.since(was.process_latency) if was else stats.process_latency
        end_to_end = (stats.end_to_end_latency.since(was.end_to_end_latency) if was
                      else stats.end_to_end_latency)
        rows.append([
            node.name, node_id[:8], node.operator, node.graphs,
            stats.events_in, _rate(stats.events_in, was.events_in if was else None, seconds),
            stats.events_out, _rate(stats.events_out, was.events_out if was else None, seconds),
            _milliseconds(batch), _milliseconds(end_to_end), stats.queue_depth,
            sum(stats.lag.values()) if stats.lag else "-",
        ])
    if not rows:
        lines.append("no nodes running; submit a graph spec with `streamdag submit FILE`")
        return "\n".join(lines)
    lines.append(render_table(
        ["node", "id", "operator", "graphs", "events in", "in/s", "events out", "out/s",
         "p99 batch ms", "p99 e2e ms", "queue", "lag"], rows))
    return "\n".join(lines)


def _rate(now: float, before: float | None, seconds: float) -> int:
    return int((now - before) / seconds) if before is not None and seconds > 0 else 0


def _milliseconds(histogram: LatencyHistogram) -> float | str:
    return histogram.quantile(0.99) * 1e3 if histogram.observations else "-"


def run(args: argparse.Namespace) -> int:
    """Refresh until Ctrl-C (or ``--iterations``); 0 on a clean exit."""
    client = client_from_args(args)
    clear = not args.no_clear and sys.stdout.isatty()
    previous: DeploymentView | None = None
    previous_at = time.monotonic()
    refreshes = 0
    try:
        while True:
            current = read_metrics(client.metrics())
            now = time.monotonic()
            screen = render_top(current, previous, now - previous_at, client.url)
            print(("\x1b[2J\x1b[H" if clear else "") + screen, flush=True)
            previous, previous_at = current, now
            refreshes += 1
            if args.iterations and refreshes >= args.iterations:
                return 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
