"""Encoding batches for the sink, and Kafka's key partitioning."""

from __future__ import annotations

import json
import math

import msgpack
import numpy as np
import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from connectors.codecs import RecordDecoder, encode_values
from connectors.errors import EncodeError
from connectors.partitioning import key_partitions, murmur2
from streamdag.batch import Batch
from streamdag.schema import Schema


def sample() -> Batch:
    return Batch.from_columns(
        ts=[1_700_000_000_000_000_000, -5],
        key=["AAPL", 'é"\\x'],
        mean=[101.25, float("nan")],
        count=[20, -3],
        up=[True, False],
    )


def test_json_values_are_compact_objects_with_ts_key_and_fields() -> None:
    values = encode_values(sample(), "json")

    assert values[0] == (
        b'{"ts":1700000000000000000,"key":"AAPL","mean":101.25,"count":20,"up":true}'
    )
    assert json.loads(values[1]) == {"ts": -5, "key": 'é"\\x', "mean": None, "count": -3,
                                     "up": False}


def test_msgpack_values_unpack_to_the_same_map() -> None:
    values = encode_values(sample(), "msgpack")
    first, second = (msgpack.unpackb(v) for v in values)

    assert first == {"ts": 1_700_000_000_000_000_000, "key": "AAPL", "mean": 101.25,
                     "count": 20, "up": True}
    assert second["key"] == 'é"\\x' and math.isnan(second["mean"]) and second["ts"] == -5


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_encoded_batches_decode_back_to_the_same_records(codec: str) -> None:
    rng = np.random.default_rng(3)
    keys = [f"k{i % 7}" * (1 + i % 40) for i in range(500)]
    batch = Batch.from_columns(
        ts=rng.integers(-(2**62), 2**62, 500), key=keys,
        mean=rng.standard_normal(500) * 1e6, count=rng.integers(-(2**62), 2**62, 500),
        up=rng.integers(0, 2, 500).astype(bool),
    )
    decoder = RecordDecoder(Schema.of(mean="float64", count="int64", up="bool"),
                            key_field="key", time_field="ts", codec=codec)  # type: ignore[arg-type]
    fetch = decoder.decode(encode_values(batch, codec), np.zeros(500, dtype=np.int64))  # type: ignore[arg-type]

    assert fetch.rejections == () and fetch.exact_path == 0
    assert fetch.ts.tolist() == batch.ts.tolist()
    assert fetch.key.tolist() == batch.key.tolist()
    for name, column in batch.columns.items():
        assert fetch.columns[name].tolist() == column.tolist()


def test_reserved_names_and_non_utf8_keys_are_refused() -> None:
    one = np.array([1], dtype=np.int64)
    with pytest.raises(EncodeError, match="reserves"):
        encode_values(Batch(one, np.array([b"a"]), {"key": np.ones(1)}), "json")
    bad_key = Batch(one, np.array([b"\xff"]), {"x": np.ones(1)})
    for codec in ("json", "msgpack"):
        with pytest.raises(EncodeError, match="not UTF-8"):
            encode_values(bad_key, codec)


def test_partitions_match_kafkas_default_partitioner() -> None:
    rng = np.random.default_rng(11)
    keys = [bytes(rng.integers(1, 256, int(n)).astype(np.uint8)) for n in rng.integers(0, 40, 3000)]
    keys += [b"", b"a", b"ab", b"abc", b"abcd", b"AAPL"]
    array = np.array(keys, dtype=object).astype(np.bytes_)

    assert [murmur2(k) for k in keys] == [aiokafka_murmur2(k) for k in keys]
    for count in (1, 3, 4, 12):
        expected = [(aiokafka_murmur2(k) & 0x7FFFFFFF) % count for k in keys]
        assert key_partitions(array, count).tolist() == expected


def test_keys_checked_once_are_kept_and_the_store_stays_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches of ASCII keys need no UTF-8 check; a batch with other keys checks each distinct
    # key once and keeps it.
    from connectors import record_encoding

    monkeypatch.setattr(record_encoding, "_UTF8_KEYS", set())
    monkeypatch.setattr(record_encoding, "_UTF8_KEYS_LIMIT", 4)
    ascii_only = Batch.from_columns(ts=[1, 2], key=["a", 'q"uote'], v=[1, 2])
    first = Batch.from_columns(ts=[1, 2, 3], key=["a", 'q"uote', "ü"], v=[1, 2, 3])
    second = Batch.from_columns(ts=[4, 5, 6, 7], key=["b", "c", "d", "é"], v=[4, 5, 6, 7])

    assert encode_values(ascii_only, "json") == [
        b'{"ts":1,"key":"a","v":1}', b'{"ts":2,"key":"q\\"uote","v":2}']
    assert set() == record_encoding._UTF8_KEYS
    assert encode_values(first, "json") == [
        b'{"ts":1,"key":"a","v":1}', b'{"ts":2,"key":"q\\"uote","v":2}',
        '{"ts":3,"key":"ü","v":3}'.encode()]
    assert {b"a", b'q"uote', "ü".encode()} == record_encoding._UTF8_KEYS
    # Four new keys overflow the store of four: it starts again with this batch's keys.
    assert [json.loads(v)["key"] for v in encode_values(second, "json")] == ["b", "c", "d", "é"]
    assert sorted(record_encoding._UTF8_KEYS) == [b"b", b"c", b"d", "é".encode()]
    assert json.loads(encode_values(first, "json")[1])["key"] == 'q"uote'
    bad = Batch(np.array([1]), np.array([b"\xff"]), {"v": np.array([1])})
    with pytest.raises(EncodeError, match="not UTF-8"):
        encode_values(bad, "json")
    assert b"\xff" not in record_encoding._UTF8_KEYS


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_a_column_a_sink_cannot_write_is_named_with_its_dtype(codec: str) -> None:
    batch = Batch(np.array([1]), np.array([b"a"]), {"note": np.array(["x"])})
    with pytest.raises(EncodeError) as refused:
        encode_values(batch, codec)  # type: ignore[arg-type]
    assert str(refused.value) == ("column 'note' has dtype <U1; a sink writes float64, int64 "
                                  "and bool columns only")
