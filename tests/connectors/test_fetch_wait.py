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


reads_of_partitions = st.lists(st.tuples(st.integers(min_value=0, max_value=5_000),
                                         st.frozensets(st.integers(0, 3), min_size=1)),
                               max_size=30)


@given(reads_of_partitions, st.frozensets(st.integers(0, 3)))
def test_the_wait_and_the_round_follow_only_the_last_read(
        reads: list[tuple[int, frozenset[int]]], now: frozenset[int]) -> None:
    wait = FetchWait(configured_ms=10, thin_ms=2, round_s=0.003, flowing_records=16,
                     thick_records=1_000)
    for records, partitions in reads:
        wait.observe(records, partitions)
    thin = bool(reads) and 16 <= reads[-1][0] < 1_000
    assert wait.ms == (2 if thin else 10)
    assert wait.round_wait_s == (0.003 if thin else 0.0)
    # A thin read gathers until every partition of the last read came again; others do not.
    assert wait.round_complete(now) == (not thin or reads[-1][1] <= now)


def test_the_thin_wait_is_never_longer_than_the_configured_one() -> None:
    wait = FetchWait(configured_ms=3, thin_ms=5)
    wait.observe(100, [0])
    assert wait.ms == 3 and wait.round_wait_s == 0.0  # nothing shorter: nothing to gather


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

        # The next read waits a moment for partition 0's round, and returns what came.
        await produce(topic, records(40, 30))
        chunk = await reader.read(1_000, linger_s=0.0)
        assert chunk.batch.ts.tolist()[:1] == [40] and reader.fetch_wait_ms == 2

        for _ in range(50):  # the rest, if the first read did not take it all
            if len((await reader.read(1_000, linger_s=0.0)).batch) == 0:
                break
        assert reader.fetch_wait_ms == 20 and fetcher._fetch_max_wait_ms == 20  # quiet: 0.5 s
    finally:
        await reader.close()
