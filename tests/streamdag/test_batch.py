"""Batch and encode_keys: construction, selection with and without lineage, order, validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from streamdag.batch import Batch, encode_keys
from streamdag.errors import SchemaMismatchError
from streamdag.schema import Schema


def _with_lineage() -> Batch:
    return Batch(
        np.array([30, 10, 20, 10], dtype=np.int64),
        encode_keys(["a", "b", "c", "d"]),
        {"price": np.array([1.0, 2.0, 3.0, 4.0])},
        partition=np.array([0, 1, 0, 1], dtype=np.int32),
        offset=np.array([100, 200, 101, 201], dtype=np.int64),
    )


def _lineage(batch: Batch) -> tuple[list[int], list[int]] | None:
    if batch.partition is None or batch.offset is None:
        return None
    return batch.partition.tolist(), batch.offset.tolist()


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["AAPL", "MSFT"], [b"AAPL", b"MSFT"]),
        (["Zürich", "Köln", "a"], ["Zürich".encode(), "Köln".encode(), b"a"]),
        (("東京", b"raw"), ["東京".encode(), b"raw"]),
        (iter(["é", "e"]), ["é".encode(), b"e"]),
        (np.array(["ü", "u"]), ["ü".encode(), b"u"]),
        ([b"x", "y"], [b"x", b"y"]),
    ],
)
def test_encode_keys_gives_utf8_bytes(keys: Any, expected: list[bytes]) -> None:
    encoded = encode_keys(keys)
    assert encoded.dtype.kind == "S"
    assert encoded.tolist() == expected


@pytest.mark.parametrize("empty", [[], (), iter([]), np.array([], dtype="U1")])
def test_encode_keys_of_nothing_is_an_empty_bytes_array(empty: Any) -> None:
    encoded = encode_keys(empty)
    assert (encoded.dtype, encoded.shape) == (np.dtype("S1"), (0,))


def test_encode_keys_passes_a_bytes_array_through() -> None:
    keys = np.array([b"a", b"bb"])
    assert encode_keys(keys) is keys


def test_from_columns_normalizes_types() -> None:
    batch = Batch.from_columns(ts=[1, 2], key=["a", "é"], price=[1.5, 2], size=np.array(
        [3, 4], dtype=np.int32), flag=[True, False])
    assert batch.ts.dtype == np.int64
    assert {name: str(column.dtype) for name, column in batch.columns.items()} == {
        "price": "float64", "size": "int64", "flag": "bool"}
    assert batch.schema == Schema.of(price="float64", size="int64", flag="bool")
    assert batch.to_records() == [
        {"ts": 1, "key": "a", "price": 1.5, "size": 3, "flag": True},
        {"ts": 2, "key": "é", "price": 2.0, "size": 4, "flag": False},
    ]
    assert (batch.partition, batch.offset) == (None, None)


def test_empty_batch_has_the_schema_columns() -> None:
    schema = Schema.of(price="float64", size="int64")
    batch = Batch.empty(schema)
    assert (len(batch), batch.schema, batch.to_records()) == (0, schema, [])


def test_slice_and_take_keep_lineage_of_the_chosen_rows() -> None:
    batch = _with_lineage()
    sliced = batch.slice(1, 3)
    assert sliced.to_records() == [{"ts": 10, "key": "b", "price": 2.0},
                                   {"ts": 20, "key": "c", "price": 3.0}]
    assert _lineage(sliced) == ([1, 0], [200, 101])
    taken = batch.take(np.array([3, 0]))
    assert [r["key"] for r in taken.to_records()] == ["d", "a"]
    assert _lineage(taken) == ([1, 0], [201, 100])
    masked = batch.take(np.array([True, False, False, True]))
    assert _lineage(masked) == ([0, 1], [100, 201])


def test_slice_and_take_without_lineage_stay_without() -> None:
    batch = Batch.from_columns(ts=[1, 2, 3], key=["a", "b", "c"], price=[1.0, 2.0, 3.0])
    assert _lineage(batch.slice(0, 2)) is None
    assert _lineage(batch.take(np.array([2]))) is None
    assert batch.take(np.array([2])).to_records() == [{"ts": 3, "key": "c", "price": 3.0}]


def test_concat_keeps_lineage_only_when_every_part_has_it() -> None:
    with_lineage = _with_lineage()
    plain = Batch.from_columns(ts=[40], key=["e"], price=[5.0])
    both = Batch.concat([with_lineage.slice(0, 2), with_lineage.slice(2, 4)])
    assert both.to_records() == with_lineage.to_records()
    assert _lineage(both) == ([0, 1, 0, 1], [100, 200, 101, 201])
    mixed = Batch.concat([with_lineage, plain])
    assert [r["key"] for r in mixed.to_records()] == ["a", "b", "c", "d", "e"]
    assert _lineage(mixed) is None
    assert Batch.concat([plain]) is plain


def test_concat_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one batch"):
        Batch.concat([])


def test_sorted_by_time_is_stable_and_moves_lineage() -> None:
    ordered = _with_lineage().sorted_by_time()
    # b and d share ts 10: they keep their arrival order.
    assert [(r["ts"], r["key"]) for r in ordered.to_records()] == [
        (10, "b"), (10, "d"), (20, "c"), (30, "a")]
    assert _lineage(ordered) == ([1, 1, 0, 0], [200, 201, 101, 100])
    already = Batch.from_columns(ts=[1, 1, 2], key=["x", "y", "z"])
    assert already.sorted_by_time() is already


def test_with_columns_keeps_ts_key_and_lineage() -> None:
    batch = _with_lineage().with_columns({"value": np.array([9.0, 8.0, 7.0, 6.0])})
    assert batch.to_records()[0] == {"ts": 30, "key": "a", "value": 9.0}
    assert _lineage(batch) == ([0, 1, 0, 1], [100, 200, 101, 201])


def test_nbytes_counts_every_array() -> None:
    # ts 4 x 8, keys 4 x 1, price 4 x 8, partition 4 x 4, offset 4 x 8
    assert _with_lineage().nbytes == 32 + 4 + 32 + 16 + 32


@pytest.mark.parametrize(
    ("ts", "key", "columns", "message"),
    [
        (np.array([1], dtype=np.int32), np.array([b"a"]), {},
         "batch ts must be int64 nanoseconds, got int32"),
        (np.array([1], dtype=np.int64), np.array(["a"]), {},
         "batch keys must be a bytes array (dtype S), got <U1; use encode_keys() to convert "
         "strings"),
        (np.array([1, 2], dtype=np.int64), np.array([b"a"]), {},
         "column 'key' has 1 entries but the batch has 2 records"),
        (np.array([1], dtype=np.int64), np.array([b"a"]), {"price": np.array([1.0, 2.0])},
         "column 'price' has 2 entries but the batch has 1 records"),
    ],
)
def test_malformed_batches_are_refused(ts: Any, key: Any, columns: dict[str, Any],
                                       message: str) -> None:
    with pytest.raises(SchemaMismatchError) as caught:
        Batch(ts, key, columns)
    assert str(caught.value) == message
