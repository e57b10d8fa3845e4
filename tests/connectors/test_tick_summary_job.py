"""Issue 12's job through Kafka on both runners: for each tick, the mean price of the last 20
ticks of its symbol (fewer while fewer were seen) and how many ticks the symbol has had,
written as exactly {"symbol", "ts": <ms as in the input>, "sma", "n"}."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import streamdag as sd
from connectors.source_bounds import Timestamp
from runtime.runners.kafka_binding import KafkaBinding
from runtime.runners.local_runner import LocalRunner
from runtime.runners.ray_runner import RayRunner

SYMBOLS = ("AAPL", "MSFT", "NVDA")
TICKS = 75
START_MS = 1_700_000_000_000


def _ticks() -> list[dict[str, Any]]:
    # Prices in quarters keep every window's sum exact, so the mean is the reference's bit
    # for bit; some ticks of different symbols share a millisecond.
    return [{"symbol": SYMBOLS[i % 3], "ts": START_MS + 7 * (i // 2),
             "price": 100 + (i * 37 % 23) / 4} for i in range(TICKS)]


def _expected() -> dict[str, list[dict[str, Any]]]:
    prices: dict[str, list[float]] = defaultdict(list)
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tick in _ticks():
        seen = prices[tick["symbol"]]
        seen.append(tick["price"])
        last = seen[-20:]
        out[tick["symbol"]].append({"symbol": tick["symbol"], "ts": tick["ts"],
                                    "sma": sum(last) / len(last), "n": len(seen)})
    return out


def _job(topic: str, out_topic: str) -> sd.Graph:
    ticks = sd.source("ticks", topic=topic, key="symbol", time="ts", time_unit="ms",
                      schema={"price": "float64"})
    sma = ticks.rolling_mean("price", window=20, min_periods=1, name="sma")
    count = ticks.running_count(name="n")
    # The source's own column joins too (a diamond), and the sink picks the fields it writes.
    row = sd.combine(sma=sma, n=count, price=ticks["price"], name="row")
    return sd.Graph("tick_summary", outputs=[row.to_topic(
        out_topic, fields={"sma": "sma", "n": "n"}, key_field="symbol", key_first=True,
        name="out")])


@pytest.mark.integration
def test_tick_summary_records_are_exact_on_both_runners(
    ray_session: None, bootstrap: str, new_topic: Callable[[int], Awaitable[str]],
    produce: Callable[..., Awaitable[None]], consume: Callable[..., Awaitable[list[Any]]],
) -> None:
    topic, local_out, ray_out = (asyncio.run(new_topic(p)) for p in (2, 2, 2))
    records = [(SYMBOLS.index(t["symbol"]) % 2, t["symbol"].encode(),
                json.dumps(t).encode(), t["ts"]) for t in _ticks()]
    asyncio.run(produce(topic, records))
    # Every record is stamped with its tick's time: the runs end after the last one.
    binding = KafkaBinding(bootstrap, start="earliest", end=Timestamp.from_ms(START_MS + 1_000),
                           replay_prefix="")  # the job writes its own topic, on purpose
    LocalRunner(None, *binding.defaults()).run(_job(topic, local_out), timeout_s=60)
    RayRunner(None, *binding.defaults()).run(_job(topic, ray_out), timeout_s=60)

    expected = _expected()
    for out_topic in (local_out, ray_out):
        written = asyncio.run(consume(out_topic, TICKS))
        by_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in written:
            value = json.loads(record.value)
            assert list(value) == ["symbol", "ts", "sma", "n"]
            assert record.key == value["symbol"].encode()
            assert record.timestamp == value["ts"]
            by_symbol[value["symbol"]].append(value)
        assert by_symbol == expected
    assert expected["AAPL"][0]["n"] == 1 and expected["AAPL"][-1]["n"] == 25
