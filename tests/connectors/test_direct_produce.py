"""The sink's own Produce requests: aiokafka's bytes and answers, fallbacks, read by librdkafka."""

from __future__ import annotations

import asyncio
import io
import json
import time
from typing import Any

import numpy as np
import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import murmur2
from aiokafka.protocol.produce import (
    ProduceRequest,
    ProduceResponse_v3,
    ProduceResponse_v4,
    ProduceResponse_v5,
    ProduceResponse_v6,
    ProduceResponse_v7,
)
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from connectors.direct_produce import DirectProduce
from connectors.errors import ConnectorConfigError, ProduceError
from connectors.kafka_sink import ID_HEADER, KafkaSinkConfig, KafkaSinkWriter
from connectors.produce_requests import ProduceAnswer, ProduceCall, produce_version
from connectors.producing import DeliveryStats
from connectors.record_batches import RecordColumns
from streamdag.batch import Batch

_ANSWERS = {3: ProduceResponse_v3, 4: ProduceResponse_v4, 5: ProduceResponse_v5,
            6: ProduceResponse_v6, 7: ProduceResponse_v7}


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7])
def test_a_call_is_byte_for_byte_aiokafkas_request(version: int) -> None:
    batches = {2: b"first batch", 0: bytes(range(200))}
    ours = ProduceCall("means.out", batches, acks=-1, timeout_ms=12_345).prepare(
        {0: (0, version)})
    theirs = ProduceRequest(None, -1, 12_345, [("means.out", list(batches.items()))]).prepare(
        {0: (0, version)})

    assert ours.API_VERSION == theirs.API_VERSION == version
    assert ours.encode() == theirs.encode()
    assert (ours.build_request_header(77, "streamdag-sink").encode()
            == theirs.build_request_header(correlation_id=77, client_id="streamdag-sink").encode())


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7])
def test_answers_of_every_version_are_read(version: int) -> None:
    extra = (-1,) if version < 5 else (-1, 3)
    answer = _ANSWERS[version](
        topics=[("means.out", [(0, 0, 1234, *extra), (2, 6, -1, *extra)])], throttle_time_ms=9)
    data = io.BytesIO(b"\x00\x00\x00\x05" + answer.encode())
    call = ProduceCall("means.out", {0: b"x", 2: b"y"}, acks=-1, timeout_ms=1).prepare(
        {0: (version, version)})

    assert call.parse_response_header(data).correlation_id == 5
    assert call.RESPONSE_TYPE.decode(data).partitions == {0: (0, 1234), 2: (6, -1)}


def test_the_version_is_the_highest_both_sides_speak() -> None:
    assert produce_version({0: (0, 11)}) == 7
    assert produce_version({0: (3, 5)}) == 5
    with pytest.raises(ConnectorConfigError, match=r"Produce v0\.\.v2"):
        produce_version({0: (0, 2)})
    with pytest.raises(ConnectorConfigError, match="acks 1 or -1"):
        ProduceCall("t", {}, acks=0, timeout_ms=1)


class _Cluster:
    def __init__(self, leaders: dict[int, int]) -> None:
        self.leaders = leaders

    def leader_for_partition(self, tp: Any) -> int | None:
        return self.leaders.get(tp.partition)


class _Client:
    """aiokafka's client as ``DirectProduce`` uses it: each send answers from ``outcomes``.

    (A stand-in because the embedded broker answers no Produce with an error: it appends to
    partitions and topics that do not exist, and takes batches whose CRC is wrong.)
    """

    def __init__(self, leaders: dict[int, int], outcomes: list[dict[int, int] | Exception]):
        self.cluster = _Cluster(leaders)
        self.outcomes = outcomes
        self.sent: list[tuple[int, list[int]]] = []
        self.metadata_updates = 0

    async def send(self, node: int, call: ProduceCall) -> ProduceAnswer:
        data = call.prepare({0: (3, 7)}).encode()
        count = int.from_bytes(data[8 + 4 + 2 + 4 + 4: 8 + 4 + 2 + 4 + 4 + 4], "big")
        self.sent.append((node, [count]))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return ProduceAnswer({p: (code, 0) for p, code in outcome.items()})

    def force_metadata_update(self) -> None:
        self.metadata_updates += 1


def _columns(count: int, ids: bool) -> RecordColumns:
    keys = np.array([b"k%d" % i for i in range(count)])
    values = [b"v%d" % i for i in range(count)]
    return RecordColumns.from_values(keys, values, np.arange(count),
                                     header_values=[b"id"] * count if ids else None,
                                     max_batch_bytes=1024)


def test_acknowledged_batches_leave_and_an_error_answer_hands_the_partition_over() -> None:
    client = _Client({0: 1, 1: 1, 2: 2}, [{0: 0, 1: 6}, {2: 0}, {0: 0}])
    pending: dict[int, list[Any]] = {0: [_columns(100, False)], 1: [_columns(3, False)],
                                     2: [_columns(2, False)]}
    stats = DeliveryStats()
    direct = DirectProduce(client, "t", 1000)

    left = asyncio.run(direct.publish(pending, stats))

    # Partition 0 needs two 1 KiB batches: two rounds to leader 1; partition 1's error answer
    # (NOT_LEADER) leaves its records pending for aiokafka's path, with fresh metadata asked.
    assert left == {1}
    assert [len(parts) for parts in pending.values()] == [0, 1, 0]
    assert len(pending[1][0]) == 3
    assert stats.records == 102 and stats.batches == 3
    assert client.metadata_updates == 1 and direct.handed_over == 1
    assert sorted(node for node, _ in client.sent) == [1, 1, 2]


def test_a_request_lost_in_transit_raises_for_records_with_ids_and_hands_over_the_rest() -> None:
    lost = KafkaConnectionError("connection reset")
    client = _Client({0: 1, 1: 2}, [lost, lost])
    pending: dict[int, list[Any]] = {0: [_columns(4, True)], 1: [_columns(5, False)]}
    stats = DeliveryStats()

    with pytest.raises(ProduceError) as failure:
        asyncio.run(DirectProduce(client, "t", 1000).publish(pending, stats))

    assert (failure.value.partition, failure.value.pending) == (0, 4)
    assert failure.value.cause is lost
    assert [len(parts[0]) for parts in pending.values()] == [4, 5]  # nothing dropped
    assert stats.failures == 1 and stats.records == 0


def test_one_leaders_lost_request_hands_records_without_ids_to_aiokafka() -> None:
    client = _Client({0: 1, 1: 1}, [KafkaConnectionError("reset")])
    pending: dict[int, list[Any]] = {0: [_columns(4, False)], 1: [_columns(5, False)]}
    stats = DeliveryStats()

    assert asyncio.run(DirectProduce(client, "t", 1000).publish(pending, stats)) == {0, 1}
    assert [len(parts[0]) for parts in pending.values()] == [4, 5]
    assert stats.failures == 0 and len(client.sent) == 1


def test_a_partition_without_a_known_leader_goes_aiokafkas_way() -> None:
    client = _Client({0: -1}, [])
    pending: dict[int, list[Any]] = {0: [_columns(2, False)]}
    assert asyncio.run(DirectProduce(client, "t", 1000).publish(pending, DeliveryStats())) == {0}
    assert client.sent == [] and len(pending[0][0]) == 2


def _read_with_librdkafka(bootstrap: str, topic: str, partitions: int, count: int
                          ) -> list[tuple[int, str, str, list[tuple[str, bytes]]]]:
    """Every record of ``topic`` as librdkafka reads it: partition, key, value, headers.

    (An independent client: kcat 1.7.1 bundles librdkafka 2.0.2, which cannot read the
    embedded broker's ApiVersions v3 answer; confluent-kafka's librdkafka 2.16 can.)
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    records = []
    deadline = time.monotonic() + 20
    try:
        while len(records) < count and time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if message is not None:
                assert message.error() is None, message.error()
                records.append((message.partition(), message.key().decode(),
                                message.value().decode(), message.headers() or []))
        assert consumer.poll(0.2) is None  # nothing more
    finally:
        consumer.close()
    return records


async def test_librdkafka_reads_what_the_sinks_own_requests_wrote(bootstrap: str, new_topic: Any
                                                            ) -> None:
    topic = await new_topic(3)
    sink = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic, max_batch_bytes=2048))
    await sink.open()
    n = np.arange(120)
    batch = Batch.from_columns(ts=n * 1_000_000, key=[f"k{i % 7}" for i in n.tolist()],
                               v=n * 0.25)
    await sink.write(batch.take(np.arange(80)), record_ids=[b"id-%d" % i for i in range(80)])
    await sink.flush()
    await sink.write(batch.take(np.arange(80, 120)))
    await sink.close()
    assert sink._direct is None  # closed
    records = _read_with_librdkafka(bootstrap, topic, 3, 120)

    assert len(records) == 120 and sink.stats.records == 120
    by_partition: dict[int, list[int]] = {}
    for partition, key, value, headers in records:
        decoded = json.loads(value)
        i = decoded["ts"] // 1_000_000
        assert decoded == {"ts": i * 1_000_000, "key": f"k{i % 7}", "v": i * 0.25}
        assert key == decoded["key"]
        assert partition == (murmur2(key.encode()) & 0x7FFFFFFF) % 3
        assert headers == ([(ID_HEADER, b"id-%d" % i)] if i < 80 else [])
        by_partition.setdefault(partition, []).append(i)
    for rows in by_partition.values():
        assert rows == sorted(rows)
    assert sorted(i for rows in by_partition.values() for i in rows) == list(range(120))


async def test_the_sink_sends_its_own_requests_and_none_through_aiokafka(
        bootstrap: str, new_topic: Any) -> None:
    topic = await new_topic(2)
    sink = KafkaSinkWriter(KafkaSinkConfig(bootstrap, topic))
    await sink.open()
    direct = sink._direct
    assert direct is not None
    calls: list[Any] = []
    real_send = sink._producer.send_batch
    sink._producer.send_batch = lambda *a, **k: calls.append(a) or real_send(*a, **k)
    for first in (0, 10, 20):
        n = np.arange(first, first + 10)
        await sink.write(Batch.from_columns(ts=n, key=[f"k{i % 4}" for i in n.tolist()], v=n))
        await sink.flush()
    await sink.close()

    assert sink.stats.records == 30 and calls == []
    assert direct.requests == 3 and direct.handed_over == 0
    values = [json.loads(value)["v"] for _, _, value, _ in
              _read_with_librdkafka(bootstrap, topic, 2, 30)]
    assert sorted(values) == list(range(30))
