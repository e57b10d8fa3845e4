"""The HTML report: plots of outputs per key beside the input, node figures, the plan; it
renders in headless Chromium, and `streamdag report` writes it from a replay of a topic."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import streamdag as sd
from runtime.report.page import ReportRun, render_report
from runtime.runners.local_runner import LocalRunner
from streamdag.cli import main
from streamdag.testing import TestingSource

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_767_346_200_000_000_000


def momentum_run() -> tuple[ReportRun, int]:
    """The README's momentum graph (sinks left out) over two keys; and the signals that fired."""
    ticks = sd.source("ticks", topic="market.ticks", key="symbol", time="ts",
                      schema={"price": "float64", "size": "float64"})
    sma20 = ticks.rolling_mean("price", window=20, name="sma20")
    sma50 = ticks.rolling_mean("price", window=50, name="sma50")
    signal = sma20.crossover(sma50, name="signal")
    graph = sd.Graph("momentum", outputs=[ticks, sma20, sma50, signal])
    n = 400
    prices = [100.0 + 5.0 * ((i // 50) % 2) + (i % 7) * 0.1 for i in range(n)]
    batch = sd.Batch.from_columns(ts=[T0 + i * 1_000_000 for i in range(n)],
                                  key=["AAPL", "MSFT"] * (n // 2), price=prices,
                                  size=[1.0] * n)
    result = LocalRunner().run(graph, sources={"ticks": lambda: TestingSource([batch])})
    fired = sum(1 for r in result.records("signal") if r["value"] != 0.0)
    records = {node.name: result.records(node.name) for node in graph.outputs}
    return ReportRun(graph, records, result.stats, 0.5, "scripted input"), fired


def test_the_page_plots_each_key_with_its_signals_the_figures_and_the_plan() -> None:
    run, fired = momentum_run()
    page = render_report(run, keys=3)
    assert fired > 4
    # Two keys, each a chart of the price, sma20 and sma50, with every signal that fired.
    assert re.findall(r"<h3>(\w+)</h3>", page) == ["AAPL", "MSFT"]
    assert re.findall(r'<polyline class="series" data-name="([\w.]+)"', page) == [
        "ticks.price", "sma20", "sma50"] * 2
    assert page.count('<path class="marker"') == fired
    # One row and one bar per node; the plan's four nodes and four edges.
    assert re.findall(r"<tr><td>(\w+)</td>", page) == ["ticks", "sma20", "sma50", "signal"]
    assert page.count('class="bar"') == 4
    plan = page[page.index('<svg class="plan"'):]
    assert plan.count('class="node"') == 4 and plan.count('class="edge"') == 4
    # Self-contained: nothing is fetched.
    assert not re.search(r'(src|href)="?https?:', page)


def test_the_page_renders_its_plots_in_headless_chromium(tmp_path: Path) -> None:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed; run scripts/install_chromium.sh "
                    "(`make test` does)")
    run, fired = momentum_run()
    path = tmp_path / "report.html"
    path.write_text(render_report(run))
    done = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         f"--user-data-dir={tmp_path / 'profile'}", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    # The page's script counted the lines that have a laid-out, non-empty box.
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body is not None, done.stdout[:500]
    assert 'data-rendered="6"' in body.group(1)
    assert f'data-markers="{fired}"' in body.group(1)


@pytest.mark.integration
def test_report_replays_a_topic_and_writes_the_page(
    bootstrap: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    topic = f"report-{uuid.uuid4().hex[:8]}"
    spec = tmp_path / "momentum.toml"
    spec.write_text((ROOT / "runtime/demo/graphs/momentum.toml").read_text()
                    .replace('"market.ticks"', f'"{topic}"'))
    kafka = ("--bootstrap-servers", bootstrap)
    assert main(["produce", topic, "--rate", "2000", "--duration", "1", "--symbols", "4",
                 *kafka]) == 0
    produced = int(capsys.readouterr().out.split()[1].replace(",", ""))
    out = tmp_path / "report.html"
    assert main(["report", str(spec), "-o", str(out), "--keys", "2", *kafka]) == 0
    assert capsys.readouterr().out.startswith(
        f"wrote {out} ({out.stat().st_size:,} bytes): {produced:,} input records replayed in ")
    page = out.read_text()
    assert re.findall(r"<h3>(\w+)</h3>", page) == ["SYM000", "SYM001"]
    assert re.findall(r"<tr><td>(\w+)</td>", page) == ["ticks", "sma20", "sma50", "crossover"]
    assert f"<td>{produced:,}</td>" in page
