"""Node identity: a canonical encoding and the Merkle hash that names a computation."""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from streamdag.schema import Schema

__all__ = ["ID_SCHEME", "canonical_encode", "compute_node_id"]

#: Prefix of every hashed identity; bump it when the encoding changes.
ID_SCHEME = b"streamdag-node-id/1\x00"


def canonical_encode(value: Any) -> bytes:
    """A byte string that depends only on the value, never on dict order or hash seeds.

    Every value is tagged with its type, so ``1``, ``1.0``, ``True`` and ``"1"`` differ.
    Canonicalizing numbers (``20`` vs ``20.0``) is the job of the param declaration before this.

    >>> canonical_encode({"b": 1, "a": [1.5, "x"]}) == canonical_encode({"a": [1.5, "x"], "b": 1})
    True
    """
    out = bytearray()
    _encode(value, out)
    return bytes(out)


def _encode(value: Any, out: bytearray) -> None:
    if value is None:
        out += b"N"
    elif isinstance(value, bool):
        out += b"T" if value else b"F"
    elif isinstance(value, int):
        digits = str(value).encode()
        out += b"i" + struct.pack(">I", len(digits)) + digits
    elif isinstance(value, float):
        if math.isnan(value):
            raise ValueError("NaN has no canonical encoding")
        out += b"f" + struct.pack(">d", 0.0 if value == 0.0 else value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        out += b"s" + struct.pack(">I", len(data)) + data
    elif isinstance(value, bytes):
        out += b"y" + struct.pack(">I", len(value)) + value
    elif isinstance(value, Schema):
        _encode([list(pair) for pair in value.fields], out)
    elif isinstance(value, Mapping):
        items = sorted((canonical_encode(k), v) for k, v in value.items())
        out += b"d" + struct.pack(">I", len(items))
        for encoded_key, item in items:
            out += encoded_key
            _encode(item, out)
    elif isinstance(value, Sequence):
        out += b"l" + struct.pack(">I", len(value))
        for item in value:
            _encode(item, out)
    else:
        raise TypeError(f"cannot canonically encode {type(value).__name__}: {value!r}")


def compute_node_id(
    operator: str,
    version: int,
    code_hash: str,
    params: Mapping[str, Any],
    output_schema: Schema,
    input_ids: Sequence[str],
) -> str:
    """sha256 over (scheme, operator and version, code hash, params, schema, input ids in order).

    Equal ids mean equal computation over equal inputs; it is the only basis for sharing a node.
    """
    payload = canonical_encode(
        {
            "operator": operator,
            "version": version,
            "code": code_hash,
            "params": dict(params),
            "schema": output_schema,
            "inputs": list(input_ids),
        }
    )
    return hashlib.sha256(ID_SCHEME + payload).hexdigest()
