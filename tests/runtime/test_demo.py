"""The main job end to end: embedded broker, Ray, two strategies sharing nodes, clean stop."""

from __future__ import annotations

import dataclasses
import io
import re
import time
from pathlib import Path

import psutil
import pytest

from connectors.broker import EmbeddedBroker
from runtime.dataplane.stats import LatencyHistogram, NodeStats
from runtime.demo import resolve_graph_path
from runtime.demo.job import fired_signal, render_console, run_demo
from streamdag.config import load_settings
from streamdag.spec import load_graph

ROOT = Path(__file__).resolve().parents[2]


def _node_actor_processes() -> int:
    count = 0
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if "ray::NodeHost" in cmdline:
            count += 1
    return count


@pytest.mark.integration
def test_demo_runs_shared_strategies_live_and_stops_everything(
    ray_session: None, tmp_path: Path
) -> None:
    settings = load_settings(
        ROOT / "configs" / "local.toml",
        environ={},
        overrides=[f"state_dir={tmp_path}", "demo.duration_s=8", "demo.rate=5000",
                   "demo.symbols=20"],
    )
    graphs = [load_graph(resolve_graph_path(name)) for name in settings.demo.graphs]
    screens = io.StringIO()
    before = _node_actor_processes()
    page = tmp_path / "demo.html"
    report = run_demo(settings, graphs, out=screens, refresh_s=1.0, clear=False,
                      html_report=page)

    assert report.shared == ["ticks", "sma20"]
    assert 5000 * 6 <= report.produced <= 5000 * 10
    # Every produced tick was read by the one shared source and the one shared sma20.
    assert report.stats["ticks"].events_out > 0
    assert report.stats["sma20"].events_in == report.stats["ticks"].events_out
    assert set(report.samples) == {"signals.momentum", "signals.mean_reversion"}
    # The figures had settled; the samples are signals that fired, not zeros.
    assert report.settled
    for topic, records in report.samples.items():
        assert len(records) == 3, topic
        assert {"ts", "key", "value"} <= set(records[0]), topic
        read, fired = report.fired[topic]
        assert 0 < fired <= read, topic
        assert all(fired_signal(record) for record in records), topic
    assert {r["value"] for r in report.samples["signals.momentum"]} <= {-1.0, 1.0}
    console = screens.getvalue()
    assert "actors running: 9" in console
    # The HTML report: three keys charted, each node's live figures, every fired signal drawn.
    html = page.read_text()
    assert re.findall(r"<h3>(\w+)</h3>", html) == ["SYM000", "SYM001", "SYM002"]
    assert sorted(re.findall(r"<tr><td>(\w+)</td>", html)) == sorted(
        ["ticks", "sma20", "sma50", "crossover", "zscore20", "price_cross", "signal"])
    assert f"<td>{report.stats['ticks'].events_out:,}</td>" in html
    assert html.count('<path class="marker"') > 0
    # Every screen, the first one too, reports a whole interval, not a partial second.
    intervals = [float(line.split("(figures over the last ")[1].split(" s)")[0])
                 for line in console.splitlines() if line.startswith("streamdag demo")]
    assert intervals and min(intervals) >= 0.95
    assert "consumer lag ticks:" in console
    # Nothing it started is left: the broker is stopped and the node actors are gone.
    assert not EmbeddedBroker.status_of(tmp_path / "demo-broker").running
    deadline = time.monotonic() + 30
    while _node_actor_processes() > before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _node_actor_processes() <= before


def test_the_console_p99s_are_quantiles_of_the_durations_not_bucket_bounds() -> None:
    before = NodeStats("a", "sma20", events_in=1000)
    for _ in range(100):
        before.process_latency.observe(0.2)
    after = NodeStats("a", "sma20", events_in=3000)
    after.process_latency = LatencyHistogram(
        list(before.process_latency.counts), before.process_latency.total,
        before.process_latency.observations)
    after.process_latency.recent = list(before.process_latency.recent)
    after.process_latency.kept = before.process_latency.kept  # as a copy of it would have
    for index in range(100):
        after.process_latency.observe(0.0031 + index * 1e-6)
    screen = render_console({"sma20": after}, {"sma20": before}, 2.0, 5000, 3.0)
    assert "recent" not in dataclasses.asdict(after.process_latency)
    # The last interval's 100 durations only: p99 3.2 ms (a bucket bound would say 5.00).
    assert screen.splitlines()[-1].split() == ["sma20", "3,000", "1,000", "0.0", "3.20", "0"]
    assert screen.splitlines()[0].endswith("(figures over the last 2.0 s)")
