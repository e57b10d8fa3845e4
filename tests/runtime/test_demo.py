"""The main job end to end: embedded broker, Ray, two strategies sharing nodes, clean stop."""

from __future__ import annotations

import io
import time
from pathlib import Path

import psutil
import pytest

from connectors.broker import EmbeddedBroker
from runtime.demo import resolve_graph_path
from runtime.demo.job import run_demo
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
    report = run_demo(settings, graphs, out=screens, refresh_s=1.0, clear=False)

    assert report.shared == ["ticks", "sma20"]
    assert 5000 * 6 <= report.produced <= 5000 * 10
    # Every produced tick was read by the one shared source and the one shared sma20.
    assert report.stats["ticks"].events_out > 0
    assert report.stats["sma20"].events_in == report.stats["ticks"].events_out
    assert set(report.samples) == {"signals.momentum", "signals.mean_reversion"}
    for topic, records in report.samples.items():
        assert len(records) == 3, topic
        assert {"ts", "key", "value"} <= set(records[0]), topic
    assert report.samples["signals.momentum"][0]["value"] in (-1.0, 0.0, 1.0)
    console = screens.getvalue()
    assert "actors running: 9" in console
    assert "consumer lag ticks:" in console
    # Nothing it started is left: the broker is stopped and the node actors are gone.
    assert not EmbeddedBroker.status_of(tmp_path / "demo-broker").running
    deadline = time.monotonic() + 30
    while _node_actor_processes() > before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _node_actor_processes() <= before
