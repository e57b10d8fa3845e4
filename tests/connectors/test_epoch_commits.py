"""Exactly-once publishing over the real broker: epoch commits, read-back, no duplicate."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from connectors.epoch_commits import commits_topic, parse_record_id, record_id
from connectors.kafka_sink import ID_HEADER, KafkaSinkConfig, KafkaSinkWriter
from runtime.dataplane.sink_epochs import EpochOutput, PendingEpoch
from streamdag.batch import Batch

NewTopic = Callable[[int], Awaitable[str]]
Consume = Callable[..., Awaitable[list[Any]]]
SINK = "5" * 64


def values(first: int, count: int) -> Batch:
    n = np.arange(first, first + count)
    return Batch.from_columns(ts=n, key=[f"k{i % 3}" for i in n.tolist()], value=n * 1.0)


async def test_a_recovered_sink_publishes_only_what_did_not_reach_the_topic(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(2)
    writer = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic))
    await writer.open()
    before_crash = EpochOutput(writer, SINK)
    before_crash.add(values(0, 5))
    before_crash.close_epoch(1)
    await before_crash.publish_through(1)  # epoch 1: published and committed
    # Epoch 2 was half published when the sink crashed: records 0-2 of 6, no commit.
    half = values(5, 3)
    await writer.write(half, [record_id(SINK, 2, n) for n in range(3)])
    await writer.flush()

    restored = EpochOutput(writer, SINK, [PendingEpoch(2, values(5, 6))])
    committed = await writer.committed_epoch(SINK)
    await restored.publish_through(2)
    await writer.close()
    records = await consume(topic, 11)
    commits = await consume(commits_topic(topic), 2)

    assert committed == 1
    ids = [parse_record_id(dict(r.headers)[ID_HEADER]) for r in records]
    assert Counter(ids) == Counter(
        [(SINK[:32], 1, n) for n in range(5)] + [(SINK[:32], 2, n) for n in range(6)])
    by_id = {parse_record_id(dict(r.headers)[ID_HEADER]): json.loads(r.value)["value"]
             for r in records}
    assert [by_id[(SINK[:32], 2, n)] for n in range(6)] == [5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    assert (restored.published_records, restored.skipped_records) == (3, 3)
    assert [json.loads(c.value)["epoch"] for c in commits] == [1, 2]
    assert {c.key for c in commits} == {SINK.encode()}


async def test_a_recovered_sink_skips_an_epoch_already_committed(
    bootstrap: str, new_topic: NewTopic, consume: Consume
) -> None:
    topic = await new_topic(1)
    writer = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic))
    await writer.open()
    first = EpochOutput(writer, SINK)
    first.add(values(0, 4))
    first.close_epoch(3)
    await first.publish_through(3)
    # The crash came after the commit but before the checkpoint after it was taken: epoch 3 is
    # pending again in the restored snapshot.
    restored = EpochOutput(writer, SINK, [PendingEpoch(3, values(0, 4))])
    restored.add(values(4, 1))
    restored.close_epoch(4)
    await restored.publish_through(4)
    await writer.close()
    records = await consume(topic, 5)

    assert [json.loads(r.value)["value"] for r in records] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert (restored.published_records, restored.skipped_records) == (1, 4)
