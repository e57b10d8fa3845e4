"""The embedded broker's lifecycle across processes, and topic creation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from connectors.broker import EmbeddedBroker, broker_answers
from connectors.errors import BrokerNotRunningError, BrokerStartError, TopicError
from connectors.topics import ensure_topics, topic_partition_counts


def broker_cli(state_dir: Path, action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime.cli.broker", action,
         "--state-dir", str(state_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_cli_start_outlives_the_command_and_stop_ends_it(tmp_path: Path) -> None:
    started = broker_cli(tmp_path, "start")
    try:
        assert started.returncode == 0, started.stderr
        assert "broker running at 127.0.0.1:" in started.stdout
        status = EmbeddedBroker.status_of(tmp_path)
        assert status.running and status.answering and status.pid is not None
        again = broker_cli(tmp_path, "start")
        assert again.returncode == 0 and f"pid {status.pid}" in again.stdout
        shown = broker_cli(tmp_path, "status")
        assert shown.returncode == 0 and "answering" in shown.stdout
    finally:
        stopped = broker_cli(tmp_path, "stop")
    assert stopped.returncode == 0 and f"pid {status.pid}" in stopped.stdout
    assert not psutil.pid_exists(status.pid) or psutil.Process(status.pid).status() == "zombie"
    assert not EmbeddedBroker.status_of(tmp_path).running
    gone = broker_cli(tmp_path, "status")
    assert gone.returncode == 1 and "no broker running" in gone.stdout


def test_one_broker_per_state_dir_and_attach(tmp_path: Path) -> None:
    with EmbeddedBroker.start(tmp_path) as broker:
        with pytest.raises(BrokerStartError, match="already running"):
            EmbeddedBroker.start(tmp_path)
        attached = EmbeddedBroker.attach(tmp_path)
        assert (attached.pid, attached.bootstrap_servers) == (broker.pid, broker.bootstrap_servers)
        assert broker_answers("127.0.0.1", broker.port)
        assert broker.log_path.exists()
    assert not broker_answers("127.0.0.1", broker.port, timeout_s=0.2)
    with pytest.raises(BrokerNotRunningError):
        EmbeddedBroker.attach(tmp_path)
    broker.stop()  # twice is fine


def test_a_busy_port_is_reported_with_the_log(tmp_path: Path) -> None:
    with (
        EmbeddedBroker.start(tmp_path / "first") as first,
        pytest.raises(BrokerStartError, match="did not start"),
    ):
        EmbeddedBroker.start(tmp_path / "second", port=first.port, ready_timeout_s=5)


async def test_ensure_topics_is_idempotent_and_strict(bootstrap: str) -> None:
    counts = await ensure_topics(bootstrap, {"ensure-a": 3, "ensure-b": 1})
    again = await ensure_topics(bootstrap, {"ensure-a": 3})
    loose = await ensure_topics(bootstrap, {"ensure-a": 5}, strict=False)
    with pytest.raises(TopicError, match="exists with 3 partition"):
        await ensure_topics(bootstrap, {"ensure-a": 2})
    with pytest.raises(TopicError, match="at least 1 partition"):
        await ensure_topics(bootstrap, {"ensure-c": 0})

    assert counts == {"ensure-a": 3, "ensure-b": 1}
    assert again == {"ensure-a": 3} and loose == {"ensure-a": 3}
    assert await topic_partition_counts(bootstrap, ["ensure-b", "missing"]) == {"ensure-b": 1}
