"""A real Prometheus server, set up from configs/prometheus.yml, scrapes the gateway's /metrics."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from runtime.deployment.controller import Controller, ControllerOptions
from runtime.deployment.gateway import GatewayServer, create_app
from streamdag.config import GatewaySettings, KafkaSettings, RuntimeSection, Settings

pytestmark = pytest.mark.integration

SHIPPED_CONFIG = Path(__file__).parents[2] / "configs" / "prometheus.yml"
TOKEN = "scrape-token"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prometheus_config(tmp_path: Path, target: str) -> Path:
    """configs/prometheus.yml pointed at ``target``, scraping every second, with our token."""
    config = yaml.safe_load(SHIPPED_CONFIG.read_text())
    [job] = config["scrape_configs"]
    assert (job["job_name"], job["metrics_path"], job["authorization"]["type"]) == (
        "streamdag", "/metrics", "Bearer")
    token_file = tmp_path / "streamdag.token"
    token_file.write_text(TOKEN)
    config["global"]["scrape_interval"] = "1s"
    job["authorization"]["credentials_file"] = str(token_file)
    job["static_configs"][0]["targets"] = [target]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Starts a real Prometheus on a free loopback port; yields a starter returning its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the Prometheus server is not installed; run scripts/install_prometheus.sh "
                    "(make test does)")
    processes: list[subprocess.Popen[bytes]] = []

    def start(target: str) -> str:
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        processes.append(subprocess.Popen(
            [binary, f"--config.file={prometheus_config(tmp_path, target)}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        ))
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


async def query(session: aiohttp.ClientSession, url: str, expression: str) -> list[Any]:
    """The result vector of an instant query; empty while Prometheus is starting."""
    try:
        async with session.get(f"{url}/api/v1/query", params={"query": expression}) as answer:
            if answer.status != 200:
                return []
            body = await answer.json()
    except aiohttp.ClientConnectionError:
        return []
    assert body["status"] == "success", body
    return list(body["data"]["result"])


async def test_prometheus_scrapes_our_series(
    prometheus: Any, ray_session: None, bootstrap: str, tmp_path: Path
) -> None:
    settings = Settings(name=f"prom{uuid.uuid4().hex[:8]}", state_dir=str(tmp_path),
                        runtime=RuntimeSection(warm_pool=0),  # an in-process controller
                        kafka=KafkaSettings(partitions=1))
    controller = Controller(settings, bootstrap_servers=bootstrap,
                            state_dir=str(tmp_path / "controller"),
                            options=ControllerOptions(health_interval_s=0.0))
    server = GatewayServer(create_app(controller, GatewaySettings(), TOKEN), "127.0.0.1", 0)
    gateway_url = await server.start()
    try:
        prometheus_url = prometheus(gateway_url.removeprefix("http://"))
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 60
            running: list[Any] = []
            while not running and time.monotonic() < deadline:
                running = await query(session, prometheus_url, "streamdag_actors_running")
                if not running:  # poll again; the gateway serves scrapes in this loop meanwhile
                    await asyncio.sleep(0.2)
            assert [(r["metric"], r["value"][1]) for r in running] == [(
                {"__name__": "streamdag_actors_running", "deployment": "local",
                 "instance": gateway_url.removeprefix("http://"), "job": "streamdag"}, "0")]
            up = await query(session, prometheus_url, 'up{job="streamdag"}')
            assert [r["value"][1] for r in up] == ["1"]
            states = await query(session, prometheus_url, "streamdag_submissions")
            assert sorted((r["metric"]["state"], r["value"][1]) for r in states) == [
                (state, "0") for state in sorted(
                    ["submitted", "processing", "mapped", "executing", "completed", "failed",
                     "stopped"])]
    finally:
        await server.stop()
        await controller.shutdown()
