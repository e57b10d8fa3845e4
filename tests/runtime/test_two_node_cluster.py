"""Shards placed on two machines of a real two-node Ray cluster (11.7).

The cluster is Ray's own ``cluster_utils.Cluster`` on this machine, two nodes with separate
custom resources; it needs a Ray of its own, so the run is a process of its own
(``python -m benchmarks.two_node_cluster``) and the session's Ray is left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_shards_run_on_both_machines_of_a_two_node_cluster() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.two_node_cluster", "--events", "6000"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=150, check=False)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [line for line in lines if " on machine_" in line] == [
        "sma20[0]     on machine_a", "sma20[1]     on machine_b",
        "smooth[0]    on machine_a", "smooth[1]    on machine_b"]
    assert lines[-1] == ("OK: shards on both machines; output per key equals the local "
                         "runner's")
