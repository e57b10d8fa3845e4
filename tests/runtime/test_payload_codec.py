"""payload_codec: what a data connection carries comes out as pickle would have rebuilt it."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.dataplane.messages import (
    ACTIVE,
    IDLE,
    Barrier,
    EndOfStream,
    PartitionMarks,
    Payload,
    Watermark,
)
from runtime.dataplane.payload_codec import decoded_payloads, encoded_payloads
from streamdag.batch import Batch

_INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def _batches(draw: st.DrawFn) -> Batch:
    n = draw(st.integers(min_value=0, max_value=30))
    keys = draw(st.lists(st.binary(min_size=1, max_size=6), min_size=n, max_size=n))
    kinds = draw(st.lists(st.sampled_from(["float64", "int64", "bool"]), max_size=4))
    columns: dict[str, Any] = {}
    for index, kind in enumerate(kinds):
        values = (st.floats(allow_nan=False) if kind == "float64" else
                  _INT64 if kind == "int64" else st.booleans())
        array = np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=kind)
        columns[f"c{index}é"] = array[::-1] if draw(st.booleans()) else array  # not contiguous
    lineage = draw(st.booleans())
    return Batch(np.array(draw(st.lists(_INT64, min_size=n, max_size=n)), dtype=np.int64),
                 np.array(keys, dtype="S6") if n else np.empty(0, "S1"), columns,
                 np.arange(n, dtype=np.int32) if lineage else None,
                 np.arange(n, dtype=np.int64) * 3 if lineage else None)


_MARKS = st.lists(st.tuples(st.integers(-(2**31), 2**31 - 1), _INT64), max_size=5)
_PAYLOADS = st.one_of(_batches(), _INT64.map(Watermark), st.sampled_from([IDLE, ACTIVE]),
                      _MARKS.map(lambda marks: PartitionMarks(tuple(marks))),
                      st.just(EndOfStream()), st.integers(1, 2**40).map(Barrier))


def _as_plain(payload: Payload) -> Any:
    if not isinstance(payload, Batch):
        return payload
    arrays = {"ts": payload.ts, "key": payload.key, **payload.columns}
    if payload.partition is not None and payload.offset is not None:
        arrays |= {"partition": payload.partition, "offset": payload.offset}
    return [(name, array.dtype.str, array.tolist()) for name, array in arrays.items()]


@settings(max_examples=150, deadline=None)
@given(payloads=st.lists(_PAYLOADS, min_size=1, max_size=4))
def test_payloads_come_out_as_pickle_rebuilds_them_with_read_only_arrays(
        payloads: list[Payload]) -> None:
    sent = tuple(payloads)
    data = encoded_payloads(sent)
    got = decoded_payloads(memoryview(data))
    reference = pickle.loads(pickle.dumps(sent))
    assert data[:1] == b"K"
    assert [_as_plain(p) for p in got] == [_as_plain(p) for p in reference]
    assert [type(p) for p in got] == [type(p) for p in reference]
    for batch, before in zip(got, sent, strict=True):
        if isinstance(batch, Batch) and isinstance(before, Batch):
            assert (batch.partition is None, batch.offset is None) == (
                before.partition is None, before.offset is None)
            assert not any(array.flags.writeable for array in (batch.ts, batch.key,
                                                                *batch.columns.values()))


def test_what_does_not_pack_travels_pickled() -> None:
    objects = Batch(np.arange(2, dtype=np.int64), np.array([b"a", b"b"]),
                    {"x": np.array([{"k": 1}, None], dtype=object)})
    sent = (objects, Watermark(9))
    data = encoded_payloads(sent)
    batch, watermark = decoded_payloads(memoryview(data))
    assert data[:1] == b"P"
    assert isinstance(batch, Batch) and batch.columns["x"].tolist() == [{"k": 1}, None]
    assert watermark == Watermark(9)


def test_a_column_with_fields_travels_pickled_with_its_fields() -> None:
    pairs = np.array([(1, 2.5), (3, 4.5)], dtype=[("n", "<i4"), ("x", "<f8")])
    sent = (Batch(np.arange(2, dtype=np.int64), np.array([b"a", b"b"]), {"pair": pairs}),)
    data = encoded_payloads(sent)
    (batch,) = decoded_payloads(memoryview(data))
    assert data[:1] == b"P"
    assert isinstance(batch, Batch)
    assert batch.columns["pair"].dtype == pairs.dtype
    assert batch.columns["pair"].tolist() == [(1, 2.5), (3, 4.5)]
