"""A source lingers only while its reads are thick, and records how old the events it read were."""

from __future__ import annotations

import asyncio
import time

import streamdag as sd
from runtime.dataplane.host import NodeHost, RuntimeSettings
from runtime.dataplane.messages import Envelope, Watermark
from runtime.dataplane.source_pacing import ReadPacing
from runtime.dataplane.worker import NodeWorker
from runtime.runners.local_runner import LocalRunner
from streamdag.batch import Batch
from streamdag.connector import SourceChunk
from streamdag.testing import Marker, TestingSource


class _RecordingSource(TestingSource):
    """A scripted source that remembers the linger each read was asked for."""

    def __init__(self, script: list[Batch | Marker]) -> None:
        super().__init__(script)
        self.lingers: list[float] = []

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """Record ``linger_s``, then read the script."""
        self.lingers.append(linger_s)
        return await super().read(max_records, linger_s)


def _live_batch(first: int, count: int, now_ns: int) -> Batch:
    """``count`` events stamped a few ms before ``now_ns``, as a live stream's are."""
    return Batch.from_columns(ts=[now_ns - 5_000_000 + i for i in range(count)],
                              key=[f"k{(first + i) % 7}" for i in range(count)],
                              price=[float(first + i) for i in range(count)])


def test_a_source_lingers_after_a_thick_read_only_and_its_output_is_unchanged() -> None:
    now_ns = time.time_ns()
    batches = [_live_batch(0, 3, now_ns), _live_batch(3, 1_500, now_ns),
               _live_batch(1_503, 4, now_ns), _live_batch(1_507, 999, now_ns)]
    recording = _RecordingSource([*batches, Marker.END])
    ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    settings = RuntimeSettings(max_batch_records=100_000, linger_s=0.004,
                               linger_from_records=1_000)

    async def scenario() -> list[Batch]:
        source = NodeHost(ticks.config(), settings=settings, source=lambda: recording,
                          capture=True)
        await source.ready()
        await source.start_source()
        await asyncio.wait_for(source.wait_finished(), 30)
        stats = source.stats()
        await source.stop()
        # Every read of live events was observed, each at least the 5 ms it was stamped ago.
        assert stats.read_age.observations == 4
        assert min(stats.read_age.recent) >= 0.004
        # ...and every event of them, one age in 64 kept as it was.
        ages = stats.record_read_age
        assert ages.observations == 3 + 1_500 + 4 + 999 and min(ages.recent) >= 0.004
        assert len(ages.recent) == -(-ages.observations // 64)
        return source.results()

    captured = asyncio.run(scenario())
    # Only the read after the 1,500-record one lingered; the 999-record one is still thin.
    assert recording.lingers == [0.0, 0.0, 0.004, 0.0, 0.0]
    assert Batch.concat(captured).to_records() == Batch.concat(batches).to_records()


def test_pacing_follows_the_last_read_and_an_empty_read_is_thin() -> None:
    pacing = ReadPacing(linger_s=0.002, thick_records=10)
    lingers = []
    for records in (0, 10, 11, 9, 50, 0, 10):
        pacing.observe(records)
        lingers.append(pacing.linger_s)
    assert lingers == [0.0, 0.002, 0.002, 0.0, 0.002, 0.0, 0.002]


def test_a_graphs_output_does_not_depend_on_how_its_source_paces_reads() -> None:
    # Batches of 3 to 2,400 events over 7 keys: thin and thick reads, lingering or not.
    now_ns = time.time_ns()
    sizes = [3, 2_400, 5, 1_200, 999, 1, 40]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    batches = [_live_batch(first, count, now_ns + first * 1_000)
               for first, count in zip(starts, sizes, strict=True)]
    ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    graph = sd.Graph("paced", outputs=[ticks.rolling_mean("price", window=5, name="mean")])
    outputs = []
    for thick_records in (0, 1_000, 10**9):
        settings = RuntimeSettings(max_batch_records=100_000, linger_s=0.001,
                                   linger_from_records=thick_records)
        result = LocalRunner(settings).run(
            graph, sources={"ticks": lambda: TestingSource([*batches, Marker.END])})
        outputs.append(result.records("mean"))
    assert len(outputs[0]) == sum(sizes) - 7 * 4  # each key's mean starts at its 5th event
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]


def test_a_node_in_event_time_order_records_how_old_what_the_watermark_released_was() -> None:
    ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    worker = NodeWorker(ticks.rolling_mean("price", window=2, name="mean").config())
    worker.connect("e", 0)
    stamped = time.time_ns() - 5_000_000  # 5 ms ago, as a live stream's events are
    batch = Batch.from_columns(ts=[stamped + i for i in range(4)], key=["a", "a", "b", "b"],
                               price=[1.0, 3.0, 10.0, 30.0])
    held = worker.accept(Envelope("e", 0, 0, batch))
    assert held == [] and worker.stats.release_age.observations == 0
    released = worker.accept(Envelope("e", 0, 1, Watermark(stamped + 4)))
    means = [r["value"] for p in released if isinstance(p, Batch) for r in p.to_records()]
    assert means == [2.0, 20.0]
    assert worker.stats.release_age.observations == 1
    assert worker.stats.release_age.recent[0] >= 0.005
    each = worker.stats.record_release_age  # every released event; the oldest one kept
    assert each.observations == 4 and len(each.recent) == 1
    assert abs(each.recent[0] - worker.stats.release_age.recent[0] - 3e-9) < 1e-12
