"""The HTML report of a run: outputs per key over time beside the input, node figures, the plan.

One self-contained page (inline SVG and a few lines of inline script; no network): per key, the
source's first numeric field (the price) with the outputs on its scale (moving averages, EMA,
VWAP, rolling min/max) and the signals (outputs that are only -1, 0 or +1) as triangles; the
other outputs (z-scores, ...) in a chart below; per node, events, rate and latency; and the
plan drawn as a graph, sources on the left.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtime.cli.tail import iso_time
from runtime.dataplane.stats import NodeStats
from runtime.planning.planner import plan_graph
from runtime.report.svg import PALETTE, Markers, Series, bar_chart, graph_drawing, line_chart
from streamdag.graph import Graph

__all__ = ["LEVEL_OPERATORS", "ReportRun", "render_report"]

#: Operators whose output is on the scale of their input field: drawn over the price.
LEVEL_OPERATORS = frozenset({"rolling_mean", "rolling_min", "rolling_max", "ema", "vwap"})

_SCRIPT = """
window.addEventListener("load", () => {
  const drawn = [...document.querySelectorAll("svg polyline.series")]
    .filter((line) => line.getBBox().width > 0 && line.getBBox().height >= 0).length;
  document.body.dataset.rendered = String(drawn);
  document.body.dataset.markers = String(document.querySelectorAll("path.marker").length);
});
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child, td:nth-child(2), th:nth-child(2) { text-align: left; }
.note { color: #666; font-size: 12px; }
"""


@dataclass(frozen=True)
class ReportRun:
    """What a report shows: the graph, every node's output records and figures, the run's
    wall-clock seconds and a line saying where the input came from."""

    graph: Graph
    records: Mapping[str, Sequence[Mapping[str, Any]]]
    stats: Mapping[str, NodeStats]
    seconds: float
    input_description: str
    #: How many keys the input had, when ``records`` hold only some of them (0: count them).
    keys_total: int = 0


def _numeric_fields(records: Sequence[Mapping[str, Any]]) -> list[str]:
    if not records:
        return []
    return [name for name, value in records[0].items()
            if name not in ("ts", "key") and isinstance(value, int | float)
            and not isinstance(value, bool)]


def _is_signal(values: Sequence[float]) -> bool:
    finite = [v for v in values if not math.isnan(v)]
    return bool(finite) and all(v in (-1.0, 0.0, 1.0) for v in finite)


def _key_charts(run: ReportRun, key: Any) -> str:
    """The charts of one key: price with levels and signals; the other outputs below."""
    graph = run.graph
    source = next(node for node in graph.nodes if node.role == "source")
    source_records = [r for r in run.records.get(source.name, ()) if r["key"] == key]
    fields = _numeric_fields(source_records)
    main: list[Series] = []
    other: list[Series] = []
    markers: list[Markers] = []
    prices: dict[Any, float] = {}
    if fields:
        field = fields[0]
        prices = {r["ts"]: float(r[field]) for r in source_records}
        main.append(Series(f"{source.name}.{field}", [r["ts"] for r in source_records],
                           [float(r[field]) for r in source_records], "#222222"))
    colors = iter(PALETTE * 4)
    for node in graph.nodes:
        if node.role != "operator":
            continue
        records = [r for r in run.records.get(node.name, ()) if r["key"] == key]
        for name in _numeric_fields(records):
            label = node.name if name == "value" else f"{node.name}.{name}"
            xs = [r["ts"] for r in records]
            ys = [float(r[name]) for r in records]
            if _is_signal(ys):
                fired = [(x, y) for x, y in zip(xs, ys, strict=True) if y != 0.0 and x in prices]
                markers.append(Markers(label, [x for x, _ in fired],
                                       [prices[x] for x, _ in fired],
                                       [y > 0 for _, y in fired]))
            elif node.operator in LEVEL_OPERATORS:
                main.append(Series(label, xs, ys, next(colors)))
            else:
                other.append(Series(label, xs, ys, next(colors)))
    times = [r["ts"] for r in source_records] or [0]
    labels = (iso_time(int(min(times))), iso_time(int(max(times))))
    parts = [f"<h3>{html.escape(str(key))}</h3>",
             line_chart(f"{key}: input and outputs", main, markers, x_labels=labels)]
    if other:
        parts.append(line_chart(f"{key}: other outputs", other, x_labels=labels, height=170))
    return "\n".join(parts)


def _figures(run: ReportRun) -> str:
    """The per-node table and the events/s bars."""
    rows = []
    names, rates = [], []
    for node in run.graph.nodes:
        stats = run.stats.get(node.name)
        if stats is None:
            continue
        seen = max(stats.events_in, stats.events_out)
        rate = seen / run.seconds if run.seconds > 0 else 0.0
        latency = stats.process_latency
        mean_ms = latency.total / latency.observations * 1e3 if latency.observations else 0.0
        names.append(node.name)
        rates.append(rate)
        rows.append(
            f"<tr><td>{html.escape(node.name)}</td><td>{html.escape(node.operator)}</td>"
            f"<td>{stats.events_in:,}</td><td>{stats.events_out:,}</td><td>{rate:,.0f}</td>"
            f"<td>{mean_ms:.3f}</td><td>{latency.sample_quantile(0.99) * 1e3:.3f}</td>"
            f"<td>{latency.observations:,}</td></tr>")
    table = ("<table><tr><th>node</th><th>operator</th><th>events in</th><th>events out</th>"
             "<th>events/s</th><th>mean batch ms</th><th>p99 batch ms</th><th>batches</th>"
             "</tr>"
             + "".join(rows) + "</table>")
    return table + bar_chart("events per second per node", names, rates, "events/s")


def _plan(graph: Graph) -> str:
    """The batch plan's generations as columns, data flowing left to right."""
    plan = plan_graph(graph, mode="batch")
    by_id = {node.node_id: node for node in graph.nodes}
    columns = [[by_id[node_id].name for node_id in generation] for generation in plan.generations]
    edges = [(upstream.name, node.name) for node in graph.nodes for upstream in node.inputs]
    return graph_drawing(columns, edges, {node.name: node.operator for node in graph.nodes})


def render_report(run: ReportRun, *, keys: int = 3) -> str:
    """The whole page for ``run``: the first ``keys`` keys (sorted) get charts."""
    source = next(node for node in run.graph.nodes if node.role == "source")
    found = sorted({r["key"] for r in run.records.get(source.name, ())}, key=str)
    shown = found[:keys]
    events = sum(stats.events_out for node in run.graph.nodes
                 if node.role != "source" and (stats := run.stats.get(node.name)) is not None)
    charts = "\n".join(_key_charts(run, key) for key in shown) or (
        '<p class="note">The input held no records: produce some first, e.g. '
        f"<code>streamdag produce {html.escape(str(source.params.get('topic', 'TOPIC')))}"
        "</code>.</p>")
    title = f"streamdag report: {run.graph.name}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="note">{html.escape(run.input_description)}; {events:,} output records over
{run.seconds:.1f} s; {max(run.keys_total, len(found))} keys, charts of {len(shown)}.
Triangles: signals that fired (up +1, down -1), drawn at the input's price.</p>
<h2>Outputs per key over time</h2>
{charts}
<h2>Nodes: throughput and latency</h2>
{_figures(run)}
<h2>Plan</h2>
{_plan(run.graph)}
<script>{_SCRIPT}</script>
</body></html>
"""
