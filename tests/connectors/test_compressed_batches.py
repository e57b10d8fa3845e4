"""The sink's own record batches compressed when asked: read back by aiokafka exactly, refused
configs named (no broker: the batches' bytes themselves)."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import numpy as np
import pytest
from aiokafka import codec
from aiokafka.record.default_records import DefaultRecordBatch

from connectors.compression import compression_problem
from connectors.errors import ConnectorConfigError
from connectors.kafka_sink import KafkaSinkConfig
from connectors.record_batches import BATCH_HEADER_SIZE, RecordColumns
from connectors.record_ids import ID_HEADER
from tests.connectors.test_epoch_batches import _sent

Record = tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]


def _read(data: bytes) -> tuple[DefaultRecordBatch, list[Record]]:
    """A batch as aiokafka reads it (its CRC checked), and its records."""
    batch = DefaultRecordBatch(bytearray(data))
    assert batch.validate_crc()
    records = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch]
    return batch, records


def _columns(compression_type: str | None) -> RecordColumns:
    keys = np.array([b"k%d" % (i % 7) for i in range(300)])
    values = [b'{"ts":%d,"mean":%f}' % (i, i / 3) for i in range(300)]
    return RecordColumns.from_values(keys, values, np.arange(300) + 1_700_000_000_000,
                                     header_name=ID_HEADER.encode(),
                                     header_values=[b"id-%d" % i for i in range(300)],
                                     max_batch_bytes=4096, compression_type=compression_type)


def _all_batches(columns: RecordColumns) -> list[bytes]:
    out, position = [], 0
    while position < len(columns):
        batch, position = columns.batch_from(position)
        out.append(bytes(batch.data))
    return out


def test_a_gzip_batch_holds_the_same_records_compressed_with_its_header_right() -> None:
    plain, packed = _all_batches(_columns(None)), _all_batches(_columns("gzip"))

    assert len(plain) == len(packed) == 4  # max_batch_bytes bounds the records before gzip
    for plain_bytes, packed_bytes in zip(plain, packed, strict=True):
        plain_batch, plain_records = _read(plain_bytes)
        packed_batch, packed_records = _read(packed_bytes)
        assert plain_batch.compression_type == 0 and packed_batch.compression_type == 1
        assert packed_records == plain_records
        assert int.from_bytes(packed_bytes[8:12], "big") == len(packed_bytes) - 12
        assert gzip.decompress(packed_bytes[BATCH_HEADER_SIZE:]) == plain_bytes[BATCH_HEADER_SIZE:]
        assert len(packed_bytes) < len(plain_bytes) / 2
        # The rest of the header is the uncompressed batch's: counts, offsets, timestamps.
        assert packed_bytes[:8] == plain_bytes[:8]
        assert packed_bytes[23:BATCH_HEADER_SIZE] == plain_bytes[23:BATCH_HEADER_SIZE]
    assert [r[3] for b in packed for r in _read(b)[1]] == [
        b'{"ts":%d,"mean":%f}' % (i, i / 3) for i in range(300)]


@pytest.mark.parametrize("epoch", [False, True], ids=["write", "epoch"])
def test_both_ways_of_building_a_sinks_batches_compress_them(epoch: bool) -> None:
    plain = asyncio.run(_sent("json", epoch=epoch))
    packed = asyncio.run(_sent("json", epoch=epoch, compression_type="gzip"))

    assert sorted(packed) == sorted(plain) == [0, 1, 2]
    for partition, batches in packed.items():
        assert len(batches) == len(plain[partition]) > 1
        for packed_bytes, plain_bytes in zip(batches, plain[partition], strict=True):
            packed_batch, packed_records = _read(packed_bytes)
            assert packed_batch.compression_type == 1
            assert packed_records == _read(plain_bytes)[1]


def test_an_unknown_compression_type_is_refused_with_the_choices() -> None:
    with pytest.raises(ConnectorConfigError) as refused:
        KafkaSinkConfig("127.0.0.1:9092", "out", compression_type="gzip9")
    assert str(refused.value) == (
        "Kafka sink for 'out': compression_type 'gzip9' is unknown; expected one of None, "
        "'gzip', 'snappy', 'lz4', 'zstd'")


@pytest.mark.parametrize("name", ["snappy", "lz4", "zstd"])
def test_a_codec_whose_library_is_missing_is_refused_naming_the_package(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, f"has_{name}", lambda: False)
    with pytest.raises(ConnectorConfigError) as refused:
        KafkaSinkConfig("127.0.0.1:9092", "out", compression_type=name)
    assert str(refused.value) == (
        f"Kafka sink for 'out': compression_type {name!r} needs the cramjam library, which is "
        f"not installed; pip install 'aiokafka[{name}]' (or choose another compression_type)")


def test_what_this_install_has_is_taken_and_what_it_lacks_refused() -> None:
    availability: dict[str, Any] = {name: getattr(codec, f"has_{name}")()
                                    for name in ("gzip", "snappy", "lz4", "zstd")}
    assert availability["gzip"]
    for name, available in availability.items():
        assert (compression_problem(name) is None) == available
    assert KafkaSinkConfig("127.0.0.1:9092", "out", compression_type="gzip").compression_type
