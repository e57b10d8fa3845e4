"""KeySlots: stable hashing, dense first-seen slots, doubling, collisions, snapshots."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.key_slots import KeySlots, hash_keys
from streamdag.errors import KeyCollisionError

_keys = st.lists(st.binary(max_size=12).map(lambda k: k.rstrip(b"\0")), max_size=60)


def _key_array(keys: list[bytes]) -> np.ndarray:
    return np.array(keys, dtype=np.bytes_) if keys else np.empty(0, dtype="S1")


def test_hash_is_fnv1a_64_and_ignores_array_width() -> None:
    # Reference values of 64-bit FNV-1a: "" is the offset basis.
    hashes = hash_keys(np.array([b"", b"a", b"foobar"]))
    assert [int(h) for h in hashes] == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]
    wide = hash_keys(np.array([b"", b"a", b"foobar"], dtype="S32"))
    assert wide.tolist() == hashes.tolist()


def test_slots_are_dense_in_first_seen_order() -> None:
    table = KeySlots()
    assert table.slots(np.array([b"b", b"a", b"b", b"c"])).tolist() == [0, 1, 0, 2]
    assert table.slots(np.array([b"c", b"d"], dtype="S10")).tolist() == [2, 3]
    assert table.keys().tolist() == [b"b", b"a", b"c", b"d"]
    assert len(table) == 4


def test_empty_batch_assigns_nothing() -> None:
    table = KeySlots()
    assert table.slots(np.empty(0, dtype="S1")).tolist() == []
    assert len(table) == 0


def test_doubling_keeps_every_slot() -> None:
    table = KeySlots(capacity=8)
    keys = np.array([f"key-{i:05d}".encode() * 4 for i in range(3000)])
    assert table.slots(keys).tolist() == list(range(3000))
    assert table.capacity == 4096
    assert table.slots(keys[::-1]).tolist() == list(range(2999, -1, -1))
    assert table.key_of(1234) == keys[1234]
    with pytest.raises(IndexError):
        table.key_of(3000)


def test_same_hash_with_other_bytes_raises_collision() -> None:
    table = KeySlots()
    table.slots(np.array([b"alpha"]))
    # Rewrite the stored bytes of slot 0: "alpha"'s hash now points at a key "alphz", which
    # is exactly the state two colliding keys would leave behind.
    pool = table._pool
    pool[4] = ord("z")
    with pytest.raises(KeyCollisionError, match=r"b'alpha'.*same 64-bit hash"):
        table.slots(np.array([b"alpha"]))


def test_same_hash_with_other_length_raises_collision() -> None:
    table = KeySlots()
    table.slots(np.array([b"alpha", b"beta"]))
    table._key_length[0] = 4
    with pytest.raises(KeyCollisionError):
        table.slots(np.array([b"beta", b"alpha"]))


@settings(max_examples=60, deadline=None)
@given(first=_keys, second=_keys)
def test_snapshot_restore_round_trip(first: list[bytes], second: list[bytes]) -> None:
    table = KeySlots(capacity=8)
    table.slots(_key_array(first))
    restored = KeySlots.restore(table.snapshot())
    assert len(restored) == len(table)
    assert restored.keys().tolist() == table.keys().tolist()
    # Both go on identically: known keys keep their slots, new keys get the same new slots.
    assert restored.slots(_key_array(second)).tolist() == table.slots(_key_array(second)).tolist()
    assert restored.keys().tolist() == table.keys().tolist()


@settings(max_examples=60, deadline=None)
@given(keys=_keys)
def test_slots_match_a_dict_reference(keys: list[bytes]) -> None:
    reference: dict[bytes, int] = {}
    expected = [reference.setdefault(k, len(reference)) for k in keys]
    assert KeySlots(capacity=8).slots(_key_array(keys)).tolist() == expected


def test_resident_bytes_matches_traced_allocations() -> None:
    keys = np.array([f"instrument-{i}".encode() for i in range(20_000)])
    KeySlots().slots(keys[:10])  # compile before measuring
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        table = KeySlots(capacity=8)
        slots = table.slots(keys)
        del slots
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert abs(allocated - table.resident_bytes()) <= 0.01 * table.resident_bytes()
