"""Start-up: a node loads its connectors' kernels while it gets ready, not on the first record."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import streamdag as sd
from runtime.dataplane.host import NodeHost
from streamdag.testing import TestingSource

# In a fresh process: which kernels are loaded before and after the factories warm up.
_PROBE = """
import json
import streamdag as sd
from connectors import json_scanner, partitioning
from runtime.runners.kafka_binding import KafkaBinding
ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
graph = sd.Graph("g", outputs=[ticks.rolling_mean("price", window=3).to_topic("o", name="out")])
binding = KafkaBinding("127.0.0.1:1")  # nothing connects: warming is local work
def loaded():
    return [bool(json_scanner.scan_json_records.signatures),
            bool(partitioning._partitions.signatures)]
before = loaded()
binding.source_for(ticks).warm_up()
after_source = loaded()
binding.sink_for(next(n for n in graph.nodes if n.name == "out")).warm_up()
print(json.dumps([before, after_source, loaded()]))
"""


def test_kafka_factories_load_the_scanner_and_the_partitioner_kernels_when_warmed() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], check=True, capture_output=True,
                          text=True, timeout=120)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [
        [False, False], [True, False], [True, True]]


class _Factory:
    def __init__(self, fails: bool) -> None:
        self.fails = fails
        self.warmed = 0

    def __call__(self) -> TestingSource:
        return TestingSource([sd.Batch.from_columns(ts=[1], key=["a"], price=[1.0])])

    def warm_up(self) -> None:
        self.warmed += 1
        if self.fails:
            raise RuntimeError("no kernels today")


def test_a_host_warms_its_connector_up_once_when_ready_and_a_failed_warm_up_is_no_failure(
) -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})

    async def scenario(factory: _Factory) -> int:
        host = NodeHost(ticks.config(), source=factory, capture=True)
        await host.ready()
        await host.ready()
        await host.start_source()
        await asyncio.wait_for(host.wait_finished(), 30)
        events = sum(len(b) for b in host.results())
        await host.stop()
        return events

    for fails in (False, True):
        factory = _Factory(fails)
        assert asyncio.run(scenario(factory)) == 1
        assert factory.warmed == 1
