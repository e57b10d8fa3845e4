"""Idempotence ids of an exactly-once sink's records: their header, and reading them back.

Every record an exactly-once Kafka sink publishes is identifiable by ``(sink, key, sequence)``:
the sink that wrote it, its key, and its place in that sink's output of that key (see
``runtime.dataplane.sink_epochs``). A restored sink reads back the records of its topic past its
last epoch commit and skips, per key, the sequences already there.

Format 2 (written now): header ``sdi`` ("streamdag id"), value = the sink's 8-byte tag, then the
sequence as an unsigned LEB128 varint (1 byte below 128, 2 below 16,384, 3 below 2,097,152).
The key is the record's own Kafka key, hashed on read-back as the sink hashes it
(``operators.key_slots.hash_keys``): it is not repeated in the header. A record's headers take
15 bytes (Kafka's own framing included; 16 from sequence 128, 17 from 16,384) instead of 39.

Format 1 (written until this change, still read back): header ``streamdag.id``, value = the same
8-byte tag, the key hash (8 bytes, big-endian), the sequence (8 bytes, big-endian). A deployment
upgraded with pending epochs in its checkpoint finds its older records by either.

The tag stays 8 bytes (64 bits of BLAKE2b of the sink id, as in format 1, so one sink has one
tag in both formats): a read-back takes every record with its tag as its own. Records of another
sink with the same tag and a common key would make the restored sink skip records it never
published (loss). The read-back of a sink's first epoch scans the whole topic, so the sinks to
tell apart are all that ever wrote that topic: with ``n`` of them the chance that any two share a
tag is about ``n**2 / 2**65`` (1,000 sinks: 3e-14); a 4-byte tag would make it 1e-4.

>>> ids = record_ids("ab" * 32, np.array([3, 300]))
>>> [len(i) for i in ids], [parse_record_id(i) for i in ids]
([9, 10], [('1f804f8530c770c0', 3), ('1f804f8530c770c0', 300)])
>>> keys = np.array([b"k", b"k", b"j"])
>>> found = highest_sequences(sink_tag("ab" * 32), keys, [ID_HEADER] * 3, ids + [b"x" * 9])
>>> found == {int(hash_keys(np.array([b"k"]))[0]): 300}
True
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.key_slots import hash_keys

__all__ = [
    "ID_HEADER",
    "LEGACY_ID_HEADER",
    "TAG_BYTES",
    "highest_sequences",
    "parse_record_id",
    "put_varint",
    "record_ids",
    "sink_tag",
    "varint_size",
]

#: The header carrying a record's idempotence id (format 2).
ID_HEADER = "sdi"
#: The header of format 1 ids, read back only (records published before format 2).
LEGACY_ID_HEADER = "streamdag.id"
#: Bytes of a sink's tag, the start of each of its ids (in both formats).
TAG_BYTES = 8
_LEGACY_ID = struct.Struct(">QQ")
_LEGACY_WIDTH = TAG_BYTES + _LEGACY_ID.size


def sink_tag(sink_id: str) -> bytes:
    """What every id of ``sink_id``'s records starts with: 8 bytes of its BLAKE2b hash."""
    return hashlib.blake2b(sink_id.encode(), digest_size=TAG_BYTES).digest()


def record_ids(sink_id: str,
               sequences: Sequence[int] | npt.NDArray[np.int64]) -> list[bytes]:
    """The format 2 ids of ``sink_id``'s records of these sequences (their keys are theirs)."""
    tag = sink_tag(sink_id)
    return [tag + _varint(int(sequence)) for sequence in np.asarray(sequences).tolist()]


def parse_record_id(value: bytes) -> tuple[str, int]:
    """``(sink tag in hex, sequence)`` of a format 2 id."""
    sequence, end = _read_varint(value, TAG_BYTES)
    if end != len(value):
        raise ValueError(f"not a streamdag record id: {value!r}")
    return value[:TAG_BYTES].hex(), sequence


def highest_sequences(tag: bytes, keys: npt.NDArray[np.bytes_], names: Sequence[str],
                      values: Sequence[bytes]) -> dict[int, int]:
    """Per key hash, the highest sequence among the records ``tag`` marks as its sink's.

    Record ``i`` has the Kafka key ``keys[i]`` and an id header ``names[i]`` (either format)
    of value ``values[i]``; records of other sinks (another tag) are passed over.
    """
    hashes = hash_keys(keys) if len(keys) else np.zeros(0, dtype=np.uint64)
    highest: dict[int, int] = {}
    for key_hash, name, value in zip(hashes.tolist(), names, values, strict=True):
        if not value.startswith(tag):
            continue
        if name == ID_HEADER:
            sequence, end = _read_varint(value, TAG_BYTES)
            if end != len(value):  # not an id this format writes: not this sink's record
                continue
        elif name == LEGACY_ID_HEADER and len(value) == _LEGACY_WIDTH:
            key_hash, sequence = _LEGACY_ID.unpack(value[TAG_BYTES:])
        else:
            continue
        highest[key_hash] = max(sequence, highest.get(key_hash, -1))
    return highest


def _varint(value: int) -> bytes:
    """``value`` (>= 0) as an unsigned LEB128 varint: 7 bits a byte, low first."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(value: bytes, at: int) -> tuple[int, int]:
    """The unsigned LEB128 varint at ``at`` of ``value``, and where it ends (``at`` past the
    end when it is cut short)."""
    result, shift = 0, 0
    while at < len(value):
        byte = value[at]
        result |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return result, at
        shift += 7
    return result, len(value) + 1


@njit(cache=True, inline="always")
def varint_size(value: int | np.uint64) -> int:
    """Bytes of ``value`` (>= 0) as an unsigned LEB128 varint (what ``put_varint`` writes)."""
    unsigned = np.uint64(value)
    size = 1
    while unsigned >= np.uint64(0x80):
        unsigned >>= np.uint64(7)
        size += 1
    return size


@njit(cache=True, inline="always")
def put_varint(out: npt.NDArray[np.uint8], at: int, value: int | np.uint64) -> int:
    """Write ``value`` (>= 0) at ``at`` of ``out`` as an unsigned LEB128 varint; the end."""
    unsigned = np.uint64(value)
    while unsigned >= np.uint64(0x80):
        out[at] = np.uint8((unsigned & np.uint64(0x7F)) | np.uint64(0x80))
        unsigned >>= np.uint64(7)
        at += 1
    out[at] = np.uint8(unsigned)
    return at + 1
