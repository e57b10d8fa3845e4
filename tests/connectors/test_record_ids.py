"""Record ids (format 2, and format 1 read back): their bytes and what a read-back makes of them."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.record_ids import (
    ID_HEADER,
    LEGACY_ID_HEADER,
    highest_sequences,
    parse_record_id,
    put_varint,
    record_ids,
    sink_tag,
    varint_size,
)
from operators.key_slots import hash_keys

_SEQUENCES = st.one_of(st.integers(0, 20_000), st.integers(0, 2**63 - 1))


@settings(max_examples=200, deadline=None)
@given(sequence=_SEQUENCES)
def test_an_id_is_the_tag_then_the_sequence_as_a_varint(sequence: int) -> None:
    (record_id,) = record_ids("sink", [sequence])
    out = np.zeros(10, dtype=np.uint8)
    end = put_varint(out, 0, sequence)

    assert parse_record_id(record_id) == (sink_tag("sink").hex(), sequence)
    assert len(record_id) == 8 + max(1, -(-sequence.bit_length() // 7))
    assert (end, varint_size(sequence)) == (len(record_id) - 8, len(record_id) - 8)
    assert out[:end].tobytes() == record_id[8:]  # the sink's kernel writes the same bytes


def test_one_sink_has_one_tag_in_both_formats() -> None:
    assert sink_tag("a" * 64) == sink_tag("a" * 64) != sink_tag("b" * 64)
    assert len(sink_tag("a" * 64)) == 8


@settings(max_examples=60, deadline=None)
@given(records=st.lists(st.tuples(st.sampled_from([b"k0", b"k1", b"", b"long-key"]),
                                  st.sampled_from(["mine", "other"]), st.booleans(),
                                  _SEQUENCES), max_size=40))
def test_a_read_back_takes_the_highest_sequence_per_key_of_its_own_ids_in_either_format(
    records: list[tuple[bytes, str, bool, int]]
) -> None:
    keys, names, values = [], [], []
    expected: dict[int, int] = {}
    for key, sink, legacy, sequence in records:
        key_hash = int(hash_keys(np.array([key]))[0])
        if legacy:
            value = sink_tag(sink) + struct.pack(">QQ", key_hash, sequence)
        else:
            (value,) = record_ids(sink, [sequence])
        keys.append(key)
        names.append(LEGACY_ID_HEADER if legacy else ID_HEADER)
        values.append(value)
        if sink == "mine":
            expected[key_hash] = max(sequence, expected.get(key_hash, -1))

    found = highest_sequences(sink_tag("mine"), np.array(keys or [b""])[: len(keys)], names,
                              values)

    assert found == expected


def test_a_value_with_the_tag_that_is_no_id_is_passed_over() -> None:
    tag = sink_tag("mine")
    keys = np.array([b"a", b"a", b"a", b"a"])
    names = [ID_HEADER, ID_HEADER, LEGACY_ID_HEADER, ID_HEADER]
    values = [tag + b"\x85", tag + b"\x05\x01", tag + b"\x00" * 8, tag + b"\x07"]

    assert highest_sequences(tag, keys, names, values) == {
        int(hash_keys(np.array([b"a"]))[0]): 7}
