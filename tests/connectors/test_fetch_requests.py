"""Fetch requests packed in one go: aiokafka's bytes, aiokafka's reading of the answers."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from aiokafka.protocol import fetch

from connectors.fetch_requests import FastFetchRequest, read_fetch_answer
from connectors.kafka_source import KafkaSourceConfig, KafkaSourceReader
from tests.connectors.test_kafka_source import SCHEMA, read_until_finished

_TOPICS = [("ticks", [(0, 42, 4096), (3, 7, 1 << 20)]), ("más", [(1, 0, 10)])]


@pytest.mark.parametrize("version", range(4, 12))
@pytest.mark.parametrize("isolation", [0, 1])
def test_a_request_is_byte_for_byte_aiokafkas(version: int, isolation: int) -> None:
    args = (5, 1, 16 << 20, isolation, _TOPICS)
    ours = FastFetchRequest(*args, rack_id="rack-a").prepare({1: (0, version)})
    theirs = fetch.FetchRequest(*args, rack_id="rack-a").prepare({1: (0, version)})

    assert ours.API_VERSION == theirs.API_VERSION == version
    assert ours.encode() == theirs.encode()
    assert (ours.build_request_header(9, "streamdag-source").encode()
            == theirs.build_request_header(correlation_id=9, client_id="streamdag-source")
            .encode())
    assert FastFetchRequest(*args).topics == _TOPICS


def test_the_version_is_aiokafkas_choice_and_older_brokers_get_aiokafkas_request() -> None:
    request = FastFetchRequest(5, 1, 1024, 0, _TOPICS)
    assert request.prepare({1: (0, 16)}).API_VERSION == 11
    assert request.prepare({1: (4, 8)}).API_VERSION == 8
    older = request.prepare({1: (0, 3)})
    assert isinstance(older, fetch.FetchRequest_v3)


def _partition(version: int, partition: int, error: int, records: bytes | None,
               aborted: list[tuple[int, int]] | None) -> tuple[Any, ...]:
    fields: list[Any] = [partition, error, 1000 + partition, 990 + partition]
    if version >= 5:
        fields.append(3)
    fields.append(aborted)
    if version >= 11:
        fields.append(-1 if partition else 2)
    fields.append(records)
    return tuple(fields)


@pytest.mark.parametrize("version", range(4, 12))
def test_answers_are_read_into_aiokafkas_tuples(version: int) -> None:
    response_type = getattr(fetch, f"FetchResponse_v{version}")
    topics = [("ticks", [_partition(version, 0, 0, b"\x01" * 70, [(7, 100), (8, 120)]),
                         _partition(version, 3, 1, None, None),
                         _partition(version, 2, 0, b"", [])]),
              ("más", [])]
    head = [0, 0, 12] if version >= 7 else [0]
    data = response_type(*head, topics).encode() + b"tail"
    theirs = response_type.decode(io.BytesIO(data))
    stream = io.BytesIO(data)

    ours = read_fetch_answer(stream, version)

    assert version == ours.API_VERSION
    assert ours.topics == [(name, [tuple(p) for p in partitions])
                           for name, partitions in theirs.topics]
    assert ours.topics[0][1][0][-1] == b"\x01" * 70
    assert stream.read() == b"tail"


async def test_a_source_reads_through_its_packed_requests_on_the_broker(
        bootstrap: str, new_topic: Any, produce: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    topic = await new_topic(2)
    await produce(topic, [(n % 2, b"k%d" % n, json.dumps({"key": f"k{n}", "ts": n, "price": n,
                                                         "size": 1}).encode(), 1_000 + n)
                          for n in range(30)])
    prepared: list[int] = []
    real_prepare = FastFetchRequest.prepare

    def counting(self: FastFetchRequest, versions: dict[int, tuple[int, int]]) -> Any:
        made = real_prepare(self, versions)
        prepared.append(made.API_VERSION)
        return made

    monkeypatch.setattr(FastFetchRequest, "prepare", counting)
    reader = KafkaSourceReader(KafkaSourceConfig(bootstrap, topic, SCHEMA, time_unit="ms",
                                                 end=15))
    await reader.open()
    try:
        batch = await read_until_finished(reader)
    finally:
        await reader.close()

    assert sorted(batch.columns["price"].tolist()) == [float(n) for n in range(30)]
    assert reader.position() == {0: 15, 1: 15}
    assert prepared and set(prepared) <= set(range(4, 12))
