"""Record batches built in numba are byte for byte what aiokafka's own builder writes."""

from __future__ import annotations

import numpy as np
from aiokafka.producer.message_accumulator import BatchBuilder
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.epoch_batches import EncodedBatch, EpochBatches
from connectors.record_batches import RecordColumns
from connectors.record_ids import ID_HEADER, LEGACY_ID_HEADER, record_ids
from streamdag.batch import Batch

_NAME = ID_HEADER


def _reference(keys: list[bytes], values: list[bytes], stamps: list[int],
               ids: list[bytes | None], position: int, limit: int) -> tuple[bytes, int]:
    builder = BatchBuilder(limit, 0)
    end = position
    while end < len(values):
        headers = [(_NAME, ids[end])] if ids[end] is not None else []
        if builder.append(timestamp=stamps[end], key=keys[end], value=values[end],
                          headers=headers) is None:
            break
        end += 1
    return bytes(builder._build()), end


@settings(max_examples=25, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.binary(min_size=1, max_size=12).filter(lambda k: not k.endswith(b"\0")),
                  st.binary(max_size=400), st.integers(0, 2**41),
                  st.one_of(st.none(), st.binary(min_size=1, max_size=30))),
        min_size=1, max_size=60),
    limit=st.integers(256, 4096),
    take_every=st.integers(1, 3),
)
def test_batches_equal_aiokafkas_for_any_records_headers_and_split(
    records: list[tuple[bytes, bytes, int, bytes | None]], limit: int, take_every: int
) -> None:
    keys, values, stamps, ids = (list(column) for column in zip(*records, strict=True))
    first = RecordColumns.from_values(
        np.array(keys[: len(keys) // 2], dtype="S12"), values[: len(keys) // 2],
        np.array(stamps[: len(keys) // 2]), max_batch_bytes=limit)
    second = RecordColumns.from_values(
        np.array(keys[len(keys) // 2:], dtype="S12"), values[len(keys) // 2:],
        np.array(stamps[len(keys) // 2:]), header_name=_NAME.encode(),
        header_values=[i if i is not None else b"" for i in ids[len(keys) // 2:]],
        max_batch_bytes=limit)
    columns = first.extend(second)
    # The first half carries no header; the second half one each, as written.
    ids = [None] * (len(keys) // 2) + [i if i is not None else b"" for i in ids[len(keys) // 2:]]
    rows = np.arange(0, len(keys), take_every)
    columns = columns.take(rows)
    keys, values, stamps, ids = ([column[r] for r in rows.tolist()]
                                 for column in (keys, values, stamps, ids))
    position = 0
    while position < len(values):
        expected, end = _reference(keys, values, stamps, ids, position, limit)
        batch, built_end = columns.batch_from(position)
        assert (built_end, bytes(batch._build())) == (end, expected)
        position = end
    rest = columns.drop_first(len(values) // 2)
    assert [rest.values_at(i) for i in range(len(rest))] == values[len(values) // 2:]


def _records_of(columns: RecordColumns) -> list[tuple[bytes, bytes, int, bytes | None]]:
    """Each record as (key, value, timestamp, header value or None), in order."""
    return [(columns.keys[i, : columns.key_lengths[i]].tobytes(), columns.values_at(i),
             int(columns.timestamps_ms[i]),
             columns.header_values[columns.header_offsets[i]: columns.header_offsets[i + 1]]
             .tobytes() if columns.has_header[i] else None)
            for i in range(len(columns))]


@settings(max_examples=40, deadline=None)
@given(
    pieces=st.lists(st.lists(st.tuples(st.sampled_from([b"a", b"bb", b"ccc"]),
                                       st.binary(max_size=300), st.integers(0, 2**41),
                                       st.integers(0, 3),
                                       st.one_of(st.integers(0, 20_000),
                                                 st.integers(0, 2**63 - 1))),
                             min_size=1, max_size=12), min_size=1, max_size=5),
    limit=st.integers(120, 700),
)
def test_an_epochs_batches_written_as_it_comes_are_aiokafkas_with_the_same_ids(
    pieces: list[list[tuple[bytes, bytes, int, int, int]]], limit: int
) -> None:
    sink = "s" * 64
    by_partition: dict[int, list[tuple[bytes, bytes, int, bytes]]] = {}
    epoch = EpochBatches(lambda batch: encoded, limit, _NAME.encode(), sink)
    for piece in pieces:
        keys, values, stamps, partitions, sequences = (
            list(column) for column in zip(*piece, strict=True))
        encoded = EncodedBatch.of(np.array(keys), values, np.array(stamps),
                                  np.array(partitions, np.int32))
        numbers = np.array(sequences, np.int64)
        for record, record_id in zip(piece, record_ids(sink, numbers), strict=True):
            by_partition.setdefault(record[3], []).append((*record[:3], record_id))
        epoch.add(Batch.from_columns(ts=stamps, key=keys), numbers)
    built = epoch.finish()

    # The reference: aiokafka's builder, every record of the partition in order, its id a header.
    assert sorted(built) == sorted(by_partition)
    for partition, records in by_partition.items():
        keys, values, stamps, ids = (list(column) for column in zip(*records, strict=True))
        expected, position = [], 0
        while position < len(values):
            batch, position = _reference(keys, values, stamps, list(ids), position, limit)
            expected.append(batch)
        sent, position = [], 0
        while position < len(built[partition]):
            prebuilt, position = built[partition].batch_from(position)
            sent.append(bytes(prebuilt._build()))
        assert sent == expected
        assert len(built[partition].drop_first(built[partition].counts[0])) == (
            len(records) - built[partition].counts[0])


def test_an_id_header_takes_15_or_16_bytes_of_a_record_where_it_took_39() -> None:
    """A record's headers: Kafka's header count, the name's and the value's lengths, the name
    and the id (a sink's tag, then the sequence as a varint: 1 byte below 128, 2 below 16,384);
    a record without headers has the count alone (1 byte)."""
    sequences = np.array([5, 300], np.int64)
    keys, values, stamps = np.array([b"k", b"q"]), [b"1", b"2"], np.array([3, 4])
    bare = RecordColumns.from_values(keys, values, stamps, max_batch_bytes=1024)
    tagged = RecordColumns.from_values(keys, values, stamps, header_name=_NAME.encode(),
                                       header_values=record_ids("s", sequences),
                                       max_batch_bytes=1024)
    legacy = RecordColumns.from_values(keys, values, stamps,
                                       header_name=LEGACY_ID_HEADER.encode(),
                                       header_values=[b"t" * 24] * 2, max_batch_bytes=1024)
    size = {name: columns.batch_from(0)[0].size()
            for name, columns in (("bare", bare), ("tagged", tagged), ("legacy", legacy))}
    assert (size["tagged"] - size["bare"], size["legacy"] - size["bare"]) == (14 + 15, 38 + 38)
    assert _records_of(tagged)[1][3] == record_ids("s", sequences)[1]


def test_a_record_longer_than_a_batch_goes_alone_as_aiokafka_sends_it() -> None:
    keys, values = [b"a", b"b", b"c", b"d"], [b"x" * 10, b"y" * 5000, b"z" * 10, b"w" * 10]
    stamps, sequences = [1, 2, 3, 4], np.arange(4)
    epoch = EpochBatches(lambda batch: EncodedBatch.of(np.array(keys), values, np.array(stamps),
                                                       np.zeros(4, np.int32)),
                         1024, _NAME.encode(), "s")
    epoch.add(Batch.from_columns(ts=stamps, key=keys), sequences)
    built = epoch.finish()[0]

    ids = list(record_ids("s", sequences))
    expected, position = [], 0
    while position < len(values):
        batch, position = _reference(keys, values, stamps, ids, position, 1024)
        expected.append(batch)
    assert built.counts == (1, 1, 2)
    assert [bytes(built.batch_from(at)[0]._build()) for at in (0, 1, 2)] == expected
