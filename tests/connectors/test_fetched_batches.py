"""Fetched record batches decoded in numba give exactly what aiokafka's own reader gives."""

from __future__ import annotations

import struct
from typing import Any

from aiokafka.consumer.fetcher import READ_UNCOMMITTED, PartitionRecords
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.fetched_batches import FetchedRecords, decode_fetch

_TP = TopicPartition("t", 0)
_records = st.lists(
    st.tuples(st.one_of(st.none(), st.binary(max_size=20)),
              st.one_of(st.none(), st.binary(max_size=300)),
              st.integers(-5, 2**41),
              st.lists(st.tuples(st.text(max_size=8),
                                 st.one_of(st.none(), st.binary(max_size=10))), max_size=3)),
    min_size=1, max_size=20)


def _batch(base: int, records: list[Any], *, gap: int = 1, compression: int = 0,
           flags: int = 0) -> bytes:
    builder = DefaultRecordBatchBuilder(2, compression, False, -1, -1, -1, batch_size=1 << 20)
    for i, (key, value, stamp, headers) in enumerate(records):
        assert builder.append(i * gap, stamp, key, value, headers) is not None
    raw = bytearray(builder.build())
    raw[0:8] = struct.pack(">q", base)
    if flags:  # a flag the builder cannot set: patch it in and seal the batch again
        attributes = struct.unpack_from(">h", raw, 21)[0] | flags
        struct.pack_into(">h", raw, 21, attributes)
        struct.pack_into(">I", raw, 17, calc_crc32c(bytes(raw[21:])))
    return bytes(raw)


def _reference(raw: bytes, fetch_offset: int) -> tuple[FetchedRecords, list[Any]]:
    partition = PartitionRecords(_TP, MemoryRecords(raw), [], fetch_offset, None, None, True,
                                 READ_UNCOMMITTED)
    records = list(partition)
    return FetchedRecords.from_consumer_records(records, partition.next_fetch_offset), records


def _as_lists(fetched: FetchedRecords) -> tuple[list[Any], ...]:
    return (fetched.offsets.tolist(), fetched.timestamps.tolist(),
            [fetched.key_at(i) for i in range(len(fetched))],
            [fetched.value_at(i) for i in range(len(fetched))], [fetched.next_offset])


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.tuples(_records, st.integers(1, 3), st.sampled_from([0, 0x08, 0x20])),
                     min_size=1, max_size=4),
    start=st.integers(0, 40),
    cut=st.integers(0, 60),
)
def test_decoded_columns_equal_aiokafkas_records(
    batches: list[tuple[list[Any], int, int]], start: int, cut: int
) -> None:
    raw = b""
    base = 7
    for records, gap, flags in batches:  # log-append time (0x08) and control batches (0x20)
        raw += _batch(base, records, gap=gap, flags=flags)
        base += (len(records) - 1) * gap + 1
    truncated = raw[:len(raw) - cut] if cut < len(raw) - 61 else raw
    fetch_offset = 7 + start
    expected, _ = _reference(truncated, fetch_offset)

    fetched = decode_fetch(truncated, fetch_offset=fetch_offset, read_committed=False)

    assert fetched is not None
    assert _as_lists(fetched) == _as_lists(expected)


def test_a_truncated_only_batch_reads_as_nothing_yet() -> None:
    raw = _batch(0, [(b"k", b"v", 1, [])])
    fetched = decode_fetch(raw[:-1], fetch_offset=0, read_committed=False)
    assert fetched is not None and len(fetched) == 0 and fetched.next_offset == 0


def test_compressed_batches_bad_crcs_and_transactions_are_left_to_aiokafka() -> None:
    records = [(b"k", b"v" * 50, 1, [])] * 5
    gzip = _batch(0, records, compression=1)
    assert decode_fetch(gzip, fetch_offset=0, read_committed=False) is None
    assert _as_lists(_reference(gzip, 0)[0])[0] == [0, 1, 2, 3, 4]  # aiokafka reads it

    corrupt = bytearray(_batch(0, records))
    corrupt[-1] ^= 0xFF
    assert decode_fetch(bytes(corrupt), fetch_offset=0, read_committed=False) is None

    plain = _batch(0, records)
    assert decode_fetch(plain, fetch_offset=0, read_committed=True) is not None
    transactional = _batch(0, records, flags=0x10)
    assert decode_fetch(transactional, fetch_offset=0, read_committed=False) is not None
    assert decode_fetch(transactional, fetch_offset=0, read_committed=True) is None


def test_slices_share_the_buffer_and_carry_the_next_offset() -> None:
    raw = _batch(10, [(None, b"a", 1, []), (b"k", None, 2, []), (b"k2", b"c", 3, [])])
    fetched = decode_fetch(raw, fetch_offset=10, read_committed=False)
    assert fetched is not None
    head, tail = fetched.slice(0, 2), fetched.slice(2, 3)
    assert (head.next_offset, tail.next_offset) == (12, 13)
    assert [head.key_at(0), head.value_at(1), tail.value_at(0)] == [None, None, b"c"]
    assert head.buffer is fetched.buffer


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.tuples(_records, st.integers(0, 20), st.integers(0, 20), st.booleans()),
                    min_size=2, max_size=5),
)
def test_joined_pieces_keep_every_record_key_and_value(
    pieces: list[tuple[list[Any], int, int, bool]],
) -> None:
    # Slices of fetches (decoded in place, or read one by one by aiokafka), some empty.
    parts: list[FetchedRecords] = []
    for records, first, stop, per_record in pieces:
        raw = _batch(0, records)
        fetched = (_reference(raw, 0)[0] if per_record
                   else decode_fetch(raw, fetch_offset=0, read_committed=False))
        assert fetched is not None
        parts.append(fetched.slice(min(first, len(fetched)), min(max(first, stop), len(fetched))))

    joined = FetchedRecords.joined(parts)

    expected = [[value for part in parts for value in _as_lists(part)[column]]
                for column in range(4)]
    assert list(_as_lists(joined)) == [*expected, [parts[-1].next_offset]]
    assert not joined.buffer.flags.writeable
    assert len(joined.buffer) <= sum(len(part.buffer) for part in parts)


def test_a_whole_slice_is_the_records_themselves() -> None:
    fetched = decode_fetch(_batch(3, [(b"k", b"v", 1, [])] * 3), fetch_offset=3,
                           read_committed=False)
    assert fetched is not None
    assert fetched.slice(0, 3) is fetched and fetched.slice(0, 9) is fetched
    assert _as_lists(fetched.slice(1, 3)) == ([4, 5], [1, 1], [b"k"] * 2, [b"v"] * 2, [6])
