"""Start-up: a node loads its connectors' kernels while it gets ready, not on the first record."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import streamdag as sd
from runtime.dataplane.host import NodeHost
from runtime.dataplane.startup_phases import StartupPhases
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


class _OpenedWhileWarming:
    """A source factory whose warm-up waits for its reader to open: it only finishes when the
    connectors open while the kernels load, and records whether they did."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.overlapped: bool | None = None

    def __call__(self) -> TestingSource:
        factory = self

        class Opening(TestingSource):
            async def open(self) -> None:
                factory.opened.set()
                await super().open()

        return Opening([sd.Batch.from_columns(ts=[1, 2], key=["a", "b"], price=[1.0, 2.0])])

    def warm_up(self) -> None:
        self.overlapped = self.opened.wait(timeout=30)


def test_connectors_open_while_the_kernels_load_and_every_step_is_timed_in_order() -> None:
    ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    factory = _OpenedWhileWarming()

    async def scenario() -> tuple[int, StartupPhases]:
        host = NodeHost(ticks.config(), source=factory, capture=True)
        await host.ready()
        await host.start_source()
        await asyncio.wait_for(host.wait_finished(), 30)
        events = sum(len(b) for b in host.results())
        await host.stop()
        return events, host.startup_phases()

    events, phases = asyncio.run(scenario())
    assert events == 2
    assert factory.overlapped is True
    assert 0 < phases.process_started <= phases.code_loaded <= phases.constructed
    assert phases.constructed <= phases.warm_up_started
    assert phases.warm_up_started <= phases.connected <= phases.ready
    assert phases.warm_up_started <= phases.warmed <= phases.ready
    assert phases.ready <= phases.source_started <= phases.first_read <= phases.first_output
    assert all(span is not None and span >= 0 for span in phases.spans().values())
