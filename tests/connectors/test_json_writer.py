"""The compiled JSON writer against the encoder it replaced (``python_json_buffer``: Python's
``repr`` and ``json``), byte for byte."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.json_encoding import python_json_buffer
from connectors.errors import EncodeError
from connectors.record_encoding import encode_json_buffer, encode_json_values
from streamdag.batch import Batch


def assert_same_as_reference(batch: Batch, *labels: Any) -> None:
    data, offsets = encode_json_buffer(batch, *labels)
    expected, expected_offsets = python_json_buffer(batch, *labels)
    assert (data, offsets.tolist()) == (expected, expected_offsets.tolist())


def float_batch(values: npt.NDArray[np.float64]) -> Batch:
    count = len(values)
    return Batch(np.arange(count, dtype=np.int64), np.full(count, b"k"), {"v": values})


EDGE_FLOATS = [
    0.0, -0.0, 0.1, 0.3, 1 / 3, 1.0, 2.0, 1e15, 1e16, 1.5e16, 123456789012345680.0, 1e22,
    1e23, 9007199254740993.0, 1e-4, 1e-5, 0.00012345, 1.2345e-5, 5e-324, 1e-323,
    2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308, 1e308, 1e-300,
    float("nan"), float("inf"), float("-inf"), 100.0, 1e100, 123.456, 0.5, 4.35, 0.001,
]


def test_floats_are_written_as_repr_writes_them() -> None:
    rng = np.random.default_rng(11)
    powers = np.ldexp(1.0, np.arange(-1074, 1024))
    values = np.concatenate([
        np.array(EDGE_FLOATS), -np.array(EDGE_FLOATS),
        powers, np.nextafter(powers, 0.0), np.nextafter(powers, np.inf),
        10.0 ** np.arange(-323, 309),
        rng.integers(0, 2**64, 20_000, dtype=np.uint64).view(np.float64),
        rng.integers(0, 2**52, 5_000, dtype=np.uint64).view(np.float64),  # subnormals
        np.round(rng.normal(100.0, 5.0, 5_000), 2) / 20.0 + 0.123456789,
        rng.integers(2**53, 2**63, 5_000).astype(np.float64),
    ])
    assert_same_as_reference(float_batch(values))


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(st.tuples(
        st.integers(-(2**63), 2**63 - 1),
        st.text(max_size=6),
        st.integers(0, 2**64 - 1),
        st.integers(-(2**63), 2**63 - 1),
        st.booleans(),
    ), min_size=1, max_size=30),
    labels=st.tuples(st.text(min_size=1, max_size=4), st.text(min_size=1, max_size=4),
                     st.booleans()),
    names=st.lists(st.text(max_size=4), min_size=3, max_size=3, unique=True),
)
def test_batches_are_written_byte_for_byte_as_before(
        rows: list[tuple[int, str, int, int, bool]], labels: tuple[str, str, bool],
        names: list[str]) -> None:
    time_label, key_label, key_first = labels
    if time_label == key_label or {time_label, key_label} & set(names):
        return
    ts, keys, bits, ints, flags = (list(column) for column in zip(*rows, strict=True))
    keys = [k.encode("utf-8") for k in keys]
    batch = Batch(np.array(ts, dtype=np.int64), np.array(keys, dtype=np.bytes_), {
        names[0]: np.array(bits, dtype=np.uint64).view(np.float64),
        names[1]: np.array(ints, dtype=np.int64),
        names[2]: np.array(flags, dtype=bool),
    })
    assert_same_as_reference(batch, time_label, key_label, key_first)


def test_other_widths_and_escaped_keys_are_written_as_before() -> None:
    keys = np.array([b"a\x00b", b'"\\', b"\x01\x1f\x7f", "é€😀".encode(), b"\n\r\t\x08\x0c", b""])
    batch = Batch(np.array([-(2**63), 2**63 - 1, 0, -1, 10, 7], dtype=np.int64), keys, {
        "u": np.array([2**64 - 1, 0, 1, 2**63, 5, 9], dtype=np.uint64),
        "i32": np.array([-(2**31), 2**31 - 1, 0, -7, 3, 1], dtype=np.int32),
        "f32": np.array([0.1, -1e-40, 3.4e38, np.nan, 1.5, -0.0], dtype=np.float32),
        "label \"q\"": np.array([True, False, True, True, False, False]),
    })
    assert_same_as_reference(batch)
    assert_same_as_reference(batch, "t", "k", True)


def test_a_record_shape_is_not_taken_for_another() -> None:
    # Shapes are kept per labels, order, names and kinds: each change writes its own shape.
    ints = Batch.from_columns(ts=[1], key=["a"], v=[3])
    floats = Batch.from_columns(ts=[1], key=["a"], v=[3.0])
    renamed = Batch.from_columns(ts=[1], key=["a"], w=[3.0])

    assert encode_json_values(ints) == [b'{"ts":1,"key":"a","v":3}']
    assert encode_json_values(floats) == [b'{"ts":1,"key":"a","v":3.0}']
    assert encode_json_values(renamed) == [b'{"ts":1,"key":"a","w":3.0}']
    assert encode_json_values(floats, "t") == [b'{"t":1,"key":"a","v":3.0}']
    assert encode_json_values(floats, key_first=True) == [b'{"key":"a","ts":1,"v":3.0}']
    assert encode_json_values(ints) == [b'{"ts":1,"key":"a","v":3}']


def test_bad_keys_and_columns_are_refused() -> None:
    one = np.array([1], dtype=np.int64)
    with pytest.raises(EncodeError, match="not UTF-8"):
        encode_json_buffer(Batch(one, np.array([b"\xed\xa0\x80"]), {"x": np.ones(1)}))
    with pytest.raises(EncodeError, match="column 'x' has dtype <U1"):
        encode_json_buffer(Batch(one, np.array([b"a"]), {"x": np.array(["s"])}))
    data, offsets = encode_json_buffer(Batch(one[:0], np.array([], dtype="S1"), {}))
    assert (data, offsets.tolist()) == (b"", [0])
