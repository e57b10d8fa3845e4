"""A live lookup join over Kafka: a table read to its end goes idle and holds nothing back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import streamdag as sd
from connectors.kafka_source import KafkaSourceConfig
from runtime.runners.kafka_binding import KafkaSourceFactory
from runtime.runners.local_runner import LocalRunner
from streamdag.schema import Schema
from streamdag.testing import ListSink

MS = 1_000_000


def _record(key: str, ts_ms: int, **fields: float) -> tuple[int, bytes, bytes, int]:
    return 0, key.encode(), json.dumps({"key": key, "ts": ts_ms, **fields}).encode(), ts_ms


async def test_a_live_lookup_join_is_not_held_back_by_its_table_gone_idle(
        bootstrap: str, new_topic: Callable[[int], Awaitable[str]],
        produce: Callable[..., Awaitable[None]]) -> None:
    trades_topic, limits_topic = await new_topic(1), await new_topic(1)
    await produce(limits_topic, [_record("A", 1, max=10.0), _record("B", 3, max=30.0),
                                 _record("A", 5, max=20.0)])
    await produce(trades_topic, [_record("A", 2, size=1.0), _record("A", 6, size=2.0),
                                 _record("B", 9, size=3.0)])
    trades = sd.source("trades", topic=trades_topic, key="key", time_unit="ms",
                       schema={"size": "float64"})
    limits = sd.source("limits", topic=limits_topic, key="key", time_unit="ms",
                       schema={"max": "float64"})
    graph = sd.Graph("checked", outputs=[
        trades.lookup_join(limits, prefix="limit_", name="checked").to_topic("out", name="out")])

    def live(topic: str, field: str) -> KafkaSourceFactory:
        # Live (no end): quiet for half a second, a source is idle.
        return KafkaSourceFactory(KafkaSourceConfig(
            bootstrap, topic, Schema.of(**{field: "float64"}), time_unit="ms",
            idle_timeout_s=0.5, fetch_max_wait_ms=10))

    sink = ListSink()
    running: asyncio.Future[Any] = asyncio.ensure_future(LocalRunner().run_async(
        graph, {"trades": live(trades_topic, "size"), "limits": live(limits_topic, "max")},
        {"out": lambda: sink}))
    deadline = time.monotonic() + 30
    try:
        # The table's watermark stops at 5 ms; the trades at 6 and 9 ms still come out.
        while len(sink.records()) < 3 and time.monotonic() < deadline and not running.done():
            await asyncio.sleep(0.05)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert sink.records() == [
        {"ts": 2 * MS, "key": "A", "size": 1.0, "limit_max": 10.0},
        {"ts": 6 * MS, "key": "A", "size": 2.0, "limit_max": 20.0},
        {"ts": 9 * MS, "key": "B", "size": 3.0, "limit_max": 30.0}]
