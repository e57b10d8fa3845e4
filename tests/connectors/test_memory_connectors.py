"""The in-memory source and sink keep the connector contracts."""

from __future__ import annotations

import pytest

from streamdag.batch import Batch
from streamdag.connectors.errors import ConnectorConfigError
from streamdag.connectors.memory import MemorySinkWriter, MemorySourceReader


def batches() -> list[Batch]:
    return [
        Batch.from_columns(ts=[1, 5, 3], key=["a", "b", "a"], x=[1.0, 2.0, 3.0]),
        Batch.from_columns(ts=[7, 6], key=["b", "c"], x=[4.0, 5.0]),
    ]


async def test_source_splits_reads_tracks_position_and_finishes() -> None:
    reader = MemorySourceReader(batches())
    await reader.open()
    chunks = [await reader.read(2, linger_s=0.0) for _ in range(3)]
    after = await reader.read(2, linger_s=0.0)
    await reader.close()

    assert [c.batch.offset.tolist() for c in chunks if c.batch.offset is not None] == [
        [0, 1], [2, 3], [4]
    ]
    assert [(c.watermark, c.finished) for c in chunks] == [(5, False), (7, False), (7, True)]
    assert len(after.batch) == 0 and after.finished
    assert reader.position() == {0: 5}


async def test_source_resumes_and_seeks_and_can_stay_live() -> None:
    reader = MemorySourceReader(batches(), finish=False, resume_from={0: 3})
    await reader.open()
    rest = await reader.read(10, linger_s=0.0)
    idle = await reader.read(10, linger_s=0.0)
    await reader.seek_to({0: 1})
    again = await reader.read(1, linger_s=0.0)

    assert rest.batch.to_records() == [{"ts": 7, "key": "b", "x": 4.0},
                                       {"ts": 6, "key": "c", "x": 5.0}]
    assert not rest.finished and not idle.finished and len(idle.batch) == 0
    assert again.batch.to_records() == [{"ts": 5, "key": "b", "x": 2.0}]


async def test_source_needs_open_and_batches() -> None:
    with pytest.raises(ConnectorConfigError):
        MemorySourceReader([])
    with pytest.raises(ConnectorConfigError, match="open"):
        await MemorySourceReader(batches()).read(1, linger_s=0.0)


async def test_sink_publishes_on_flush_and_on_close() -> None:
    sink = MemorySinkWriter()
    await sink.open()
    first, second = batches()
    await sink.write(first)
    published_before_flush = list(sink.batches)
    await sink.flush()
    await sink.write(second)
    await sink.close()
    await sink.close()

    assert published_before_flush == []
    assert [r["x"] for r in sink.records] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert sink.pending_batches == [] and sink.flushes == 2
