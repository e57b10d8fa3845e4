"""The source's broker wait: short while a thin stream flows, the configured one otherwise."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from hypothesis import given
from hypothesis import strategies as st

from connectors.fetch_wait import FetchWait
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from streamdag.schema import Schema

SCHEMA = Schema.of(price="float64")
NewTopic = Callable[[int], Awaitable[str]]
Produce = Callable[..., Awaitable[None]]


@given(st.lists(st.integers(min_value=0, max_value=5_000), max_size=30))
def test_the_wait_follows_only_the_last_read(reads: list[int]) -> None:
    wait = FetchWait(configured_ms=10, thin_ms=2, flowing_records=16, thick_records=1_000)
    for records in reads:
        wait.observe(records)
    expected = 2 if reads and 16 <= reads[-1] < 1_000 else 10
    assert wait.ms == expected


def test_the_thin_wait_is_never_longer_than_the_configured_one() -> None:
    wait = FetchWait(configured_ms=3, thin_ms=5)
    wait.observe(100)
    assert wait.ms == 3


async def test_a_thin_stream_shortens_the_fetch_wait_and_a_quiet_one_restores_it(
    bootstrap: str, new_topic: NewTopic, produce: Produce
) -> None:
    topic = await new_topic(1)
    reader = KafkaSourceReader(KafkaSourceConfig(
        bootstrap, topic, SCHEMA, start="latest", fetch_max_wait_ms=20,
        thin_fetch_max_wait_ms=2, poll_timeout_s=0.5))
    await reader.open()
    try:
        fetcher = reader._consumer._fetcher  # type: ignore[union-attr]  # what aiokafka sends
        assert reader.fetch_wait_ms == 20 and fetcher._fetch_max_wait_ms == 20

        def records(first: int, count: int) -> list[tuple[int, bytes, bytes, int]]:
            return [(0, b"k", json.dumps({"key": "k", "ts": n, "price": 1.0}).encode(), n)
                    for n in range(first, first + count)]

        await produce(topic, records(0, 40))
        read = 0
        for _ in range(50):  # a thin stream: a few dozen records per read
            read += len((await reader.read(1_000, linger_s=0.0)).batch)
            if read >= 40:
                break
        assert read == 40
        assert reader.fetch_wait_ms == 2 and fetcher._fetch_max_wait_ms == 2

        assert len((await reader.read(1_000, linger_s=0.0)).batch) == 0  # quiet for 0.5 s
        assert reader.fetch_wait_ms == 20 and fetcher._fetch_max_wait_ms == 20
    finally:
        await reader.close()
