"""Record codecs: whole fetches of JSON or msgpack values to Batches, and Batches to values.

Decoding runs a compiled scanner over the concatenated values of a fetch; only the records
it cannot take with certainty are decoded one by one (``json.loads`` / ``msgpack.unpackb``),
and those are exactly the ones that can be poison, so every refusal is diagnosed precisely.
The value schema is enforced: a float64 field takes integers and floats (``null`` is NaN),
an int64 field integers, a bool field booleans; the key field is a string or an integer; the
time field an integer or a float in ``time_unit``, or the record timestamp when it is ``''``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import msgpack
import numpy as np
import numpy.typing as npt
from numba import njit

from connectors.errors import ConnectorConfigError
from connectors.json_scanner import scan_json
from connectors.msgpack_scanner import scan_msgpack
from connectors.record_encoding import (
    EncodedRecords,
    encode_json_buffer,
    encode_msgpack_buffer,
    split_records,
)
from connectors.scanning import (
    KIND_FALSE,
    KIND_FLOAT,
    KIND_INT,
    KIND_NULL,
    KIND_STRING,
    KIND_TRUE,
    ScanTables,
    concatenate_values,
    encode_names,
    gather_bytes,
)
from streamdag.batch import Batch
from streamdag.record_format import DEFAULT_RECORD_FORMAT, RecordFormat
from streamdag.schema import Schema

__all__ = [
    "CODECS",
    "TIME_UNIT_NANOS",
    "CodecName",
    "DecodedFetch",
    "PoisonReason",
    "RecordDecoder",
    "Rejection",
    "TimeUnit",
    "decoder_config_problems",
    "encode_values",
    "encode_values_buffer",
]

CodecName = Literal["json", "msgpack"]
TimeUnit = Literal["ns", "us", "ms", "s"]
PoisonReason = Literal["undecodable", "schema", "bad_key", "bad_time", "oversize"]

#: The codec names a source or sink accepts.
CODECS: tuple[str, ...] = get_args(CodecName)
#: Nanoseconds per unit of a time field.
TIME_UNIT_NANOS: dict[str, int] = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1
# Scaled float times beyond this go the exact way, so rounding near the edge is decided once.
_SAFE_FLOAT_TIME = float(1 << 62)
#: A schema field's type, as ``_judge_rows`` reads it.
_FIELD_TYPE_CODES = {"float64": 0, "int64": 1, "bool": 2}


@dataclass(frozen=True)
class Rejection:
    """A record the decoder refused: its index in the fetch, why, and the detail."""

    index: int
    reason: PoisonReason
    detail: str


@dataclass(frozen=True)
class DecodedFetch:
    """The records of one fetch that decoded, in fetch order, and the ones refused.

    ``accepted[i]`` is the fetch index of the i-th decoded record; ``exact_path`` counts the
    records that were decoded one by one instead of by the compiled scanner.
    """

    accepted: npt.NDArray[np.int64]
    ts: npt.NDArray[np.int64]
    key: npt.NDArray[np.bytes_]
    columns: dict[str, npt.NDArray[Any]]
    rejections: tuple[Rejection, ...]
    exact_path: int


class _Refused(Exception):
    def __init__(self, reason: PoisonReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class RecordDecoder:
    """Decodes the values of a fetch into columns, enforcing the value schema.

    >>> decoder = RecordDecoder(Schema.of(price="float64"), key_field="symbol",
    ...                         time_field="ts", time_unit="ms")
    >>> fetch = decoder.decode([b'{"symbol": "AAPL", "ts": 5, "price": 1.5}', b'oops'], [0, 0])
    >>> fetch.ts.tolist(), fetch.key.tolist(), fetch.columns["price"].tolist()
    ([5000000], [b'AAPL'], [1.5])
    >>> fetch.rejections[0].index, fetch.rejections[0].reason
    (1, 'undecodable')
    """

    def __init__(
        self,
        schema: Schema,
        *,
        key_field: str,
        time_field: str = "",
        time_unit: TimeUnit = "ns",
        codec: CodecName = "json",
        max_record_bytes: int = 1 << 20,
        fast_path: bool = True,
    ) -> None:
        problems = decoder_config_problems(key_field, time_unit, codec)
        if problems:
            raise ConnectorConfigError("; ".join(problems))
        self._schema = schema
        self._key_field = key_field
        self._time_field = time_field
        self._factor = TIME_UNIT_NANOS[time_unit]
        self._codec = codec
        self._max_record_bytes = max_record_bytes
        self._fast_path = fast_path
        names = list(dict.fromkeys([key_field, *([time_field] if time_field else []),
                                    *schema.names]))
        self._slot = {name: i for i, name in enumerate(names)}
        self._time_slot = self._slot[time_field] if time_field else -1
        self._field_slots = np.array([self._slot[name] for name in schema.names], np.int64)
        self._field_types = np.array([_FIELD_TYPE_CODES[type_name] for _, type_name in schema],
                                     np.int64)
        self._names, self._name_offsets = encode_names(names)
        self._loads: Callable[[bytes], Any] = json.loads if codec == "json" else msgpack.unpackb

    def decode(
        self,
        values: Sequence[bytes | None],
        record_timestamps_ms: Sequence[int] | npt.NDArray[np.int64],
    ) -> DecodedFetch:
        """Decode one fetch; ``record_timestamps_ms`` are the Kafka record timestamps."""
        buffer, starts, ends = concatenate_values(values)
        return self.decode_spans(buffer, starts, ends, record_timestamps_ms)

    def decode_spans(
        self,
        buffer: npt.NDArray[np.uint8],
        starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
        record_timestamps_ms: Sequence[int] | npt.NDArray[np.int64],
    ) -> DecodedFetch:
        """Decode the values ``buffer[starts[i]:ends[i]]`` of one fetch (an empty span: none).

        The values stay where they are (e.g. in the fetched record batches): only those the
        compiled scanner refuses are copied out, to be decoded one by one.
        """
        count = starts.shape[0]
        lengths = ends - starts
        oversize = lengths > self._max_record_bytes
        blocked = (lengths == 0) | oversize
        scan_ends = np.where(blocked, starts, ends)
        tables = self._scan(buffer, starts, scan_ends, count)
        times, fast = self._judge_rows(tables, blocked,
                                       np.asarray(record_timestamps_ms, dtype=np.int64))
        key_text = self._fast_keys(buffer, tables, fast)
        columns = self._fast_columns(tables)

        rejections = [
            Rejection(int(i), "oversize", f"the value has {int(lengths[i])} bytes; at most "
                      f"{self._max_record_bytes} are accepted (max_record_bytes)")
            for i in np.flatnonzero(oversize)
        ]
        rejections += [
            Rejection(int(i), "undecodable", "the value is empty (a tombstone or no payload)")
            for i in np.flatnonzero(lengths == 0)
        ]
        exact_rows = np.flatnonzero(~fast & ~blocked)
        exact_keys: list[bytes] = []
        accepted_exact: list[int] = []
        for row in exact_rows.tolist():
            value = buffer[starts[row]:ends[row]].tobytes()
            try:
                key, ts, fields = self._decode_exactly(value, int(times[row]))
            except _Refused as refusal:
                rejections.append(Rejection(row, refusal.reason, refusal.detail))
                continue
            accepted_exact.append(row)
            exact_keys.append(key)
            times[row] = ts
            for name, field_value in zip(self._schema.names, fields, strict=True):
                columns[name][row] = field_value

        width = max([key_text.dtype.itemsize, *map(len, exact_keys), 1])
        keys = key_text.astype(f"S{width}")
        if accepted_exact:
            keys[np.asarray(accepted_exact)] = exact_keys
            fast[np.asarray(accepted_exact)] = True
        accepted = np.flatnonzero(fast).astype(np.int64)
        rejections.sort(key=lambda rejection: rejection.index)
        return DecodedFetch(
            accepted=accepted,
            ts=times[accepted],
            key=keys[accepted],
            columns={name: column[accepted] for name, column in columns.items()},
            rejections=tuple(rejections),
            exact_path=int(exact_rows.shape[0]),
        )

    # -- the compiled path -----------------------------------------------------------------
    def _scan(
        self,
        buffer: npt.NDArray[np.uint8],
        starts: npt.NDArray[np.int64],
        ends: npt.NDArray[np.int64],
        count: int,
    ) -> ScanTables:
        if not self._fast_path:
            tables = ScanTables.allocate(count, len(self._slot))
            tables.slow[:] = True
            return tables
        scan = scan_json if self._codec == "json" else scan_msgpack
        return scan(buffer, starts, ends, self._names, self._name_offsets)

    def _judge_rows(
        self, tables: ScanTables, blocked: npt.NDArray[np.bool_], record_ms: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Each record's time, and whether the compiled path takes it (``_judge_rows``)."""
        return _judge_rows(tables.kind, tables.integer, tables.real, tables.slow, blocked,
                           record_ms, self._time_slot, self._factor, _INT64_MAX // self._factor,
                           self._slot[self._key_field], self._field_slots, self._field_types)

    def _fast_keys(
        self, buffer: npt.NDArray[np.uint8], tables: ScanTables, fast: npt.NDArray[np.bool_]
    ) -> npt.NDArray[np.bytes_]:
        slot = self._slot[self._key_field]
        kind = tables.kind[:, slot]
        string_rows = np.flatnonzero(fast & (kind == KIND_STRING))
        int_rows = np.flatnonzero(fast & (kind == KIND_INT))
        text = gather_bytes(buffer, tables.start[:, slot], tables.end[:, slot], string_rows)
        numbers = tables.integer[int_rows, slot].astype("S20")
        width = max(text.dtype.itemsize, numbers.dtype.itemsize if int_rows.shape[0] else 1)
        keys = np.zeros(kind.shape[0], dtype=f"S{width}")
        keys[string_rows] = text
        keys[int_rows] = numbers
        return keys

    def _fast_columns(self, tables: ScanTables) -> dict[str, npt.NDArray[Any]]:
        columns: dict[str, npt.NDArray[Any]] = {}
        for name, type_name in self._schema:
            slot = self._slot[name]
            kind = tables.kind[:, slot]
            if type_name == "float64":
                column = np.where(
                    kind == KIND_FLOAT,
                    tables.real[:, slot],
                    np.where(kind == KIND_INT, tables.integer[:, slot].astype(np.float64), np.nan),
                )
            elif type_name == "int64":
                column = tables.integer[:, slot].copy()
            else:
                column = kind == KIND_TRUE
            columns[name] = column
        return columns

    # -- the exact path --------------------------------------------------------------------
    def _decode_exactly(self, value: bytes, record_ns: int) -> tuple[bytes, int, list[Any]]:
        try:
            document = self._loads(value)
        except Exception as exc:  # any failure of the decoder makes the record poison
            raise _Refused("undecodable", f"not valid {self._codec}: {type(exc).__name__}: "
                           f"{exc}") from None
        if not isinstance(document, dict):
            raise _Refused("schema", f"the value is a {type(document).__name__}; expected an "
                           f"object with fields {list(self._slot)}")
        key = self._exact_key(document)
        ts = self._exact_time(document) if self._time_field else record_ns
        fields = [self._exact_field(document, name, type_name) for name, type_name in self._schema]
        return key, ts, fields

    def _exact_key(self, document: dict[Any, Any]) -> bytes:
        name = self._key_field
        raw = _scalar_field(document, name, "bad_key", "key field", (str, int),
                            "a string or an integer")
        try:
            key = raw.encode("utf-8") if isinstance(raw, str) else str(raw).encode("ascii")
        except UnicodeEncodeError as exc:
            raise _Refused("bad_key", f"the key field {name!r} is not valid text: {exc}") from None
        if b"\x00" in key:
            raise _Refused("bad_key", f"the key field {name!r} holds a NUL character, which a "
                           "key cannot carry")
        return key

    def _exact_time(self, document: dict[Any, Any]) -> int:
        name = self._time_field
        raw = _scalar_field(document, name, "bad_time", "time field", (int, float), "a number")
        if isinstance(raw, float):
            scaled = raw * float(self._factor)
            if not math.isfinite(scaled):
                raise _Refused("bad_time", f"the time field {name!r} holds {raw!r}; expected a "
                               "finite number")
            nanos = round(scaled)
        else:
            nanos = raw * self._factor
        if not _INT64_MIN <= nanos <= _INT64_MAX:
            raise _Refused("bad_time", f"the time field {name!r} holds {raw!r}, out of the int64 "
                           "nanosecond range")
        return int(nanos)

    def _exact_field(self, document: dict[Any, Any], name: str, type_name: str) -> Any:
        raw = _field(document, name, "schema", "field")
        if type_name == "float64":
            if raw is None:
                return math.nan
            if not isinstance(raw, bool) and isinstance(raw, int | float):
                try:
                    return float(raw)
                except OverflowError:
                    pass
            expected = "a number (or null)"
        elif type_name == "int64":
            if not isinstance(raw, bool) and isinstance(raw, int) and (
                _INT64_MIN <= raw <= _INT64_MAX
            ):
                return raw
            expected = "an integer within int64"
        else:
            if isinstance(raw, bool):
                return raw
            expected = "true or false"
        raise _Refused("schema", f"the field {name!r} ({type_name}) holds {_show(raw)}; "
                       f"expected {expected}")


def decoder_config_problems(key_field: str, time_unit: str, codec: str) -> list[str]:
    """What is wrong with a decoder's key field, time unit and codec; empty when nothing.

    >>> decoder_config_problems("symbol", "ms", "json")
    []
    >>> decoder_config_problems("", "ms", "xml")[0]
    "codec 'xml' is unknown; expected one of ('json', 'msgpack')"
    """
    problems = []
    if codec not in CODECS:
        problems.append(f"codec {codec!r} is unknown; expected one of {CODECS}")
    if time_unit not in TIME_UNIT_NANOS:
        problems.append(f"time_unit {time_unit!r} is unknown; expected one of "
                        f"{list(TIME_UNIT_NANOS)}")
    if not key_field:
        problems.append("key_field is empty; name the payload field holding the key")
    return problems


def _field(document: dict[Any, Any], name: str, reason: PoisonReason, label: str) -> Any:
    # The value of field ``name`` (the record's ``label``); refused as ``reason`` when missing.
    if name not in document:
        raise _Refused(reason, f"the {label} {name!r} is missing")
    return document[name]


def _scalar_field(document: dict[Any, Any], name: str, reason: PoisonReason, label: str,
                  kinds: tuple[type, ...], expected: str) -> Any:
    # As ``_field``, refused too when the value is not of ``kinds`` (a bool never counts).
    raw = _field(document, name, reason, label)
    if isinstance(raw, bool) or not isinstance(raw, kinds):
        raise _Refused(reason, f"the {label} {name!r} holds {_show(raw)}; expected {expected}")
    return raw


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def encode_values(batch: Batch, codec: CodecName,
                  record_format: RecordFormat = DEFAULT_RECORD_FORMAT) -> list[bytes]:
    """The record values of ``batch``: ``{"ts": ..., "key": "...", <fields>}`` in ``codec``.

    ``record_format`` chooses the fields, their names and the event time's unit.

    >>> encode_values(Batch.from_columns(ts=[1], key=["a"], price=[1.5]), "json")
    [b'{"ts":1,"key":"a","price":1.5}']
    """
    return split_records(encode_values_buffer(batch, codec, record_format))


def encode_values_buffer(batch: Batch, codec: CodecName,
                         record_format: RecordFormat = DEFAULT_RECORD_FORMAT) -> EncodedRecords:
    """``encode_values`` as one buffer and the records' offsets (what a sink batches)."""
    shaped = record_format.shape(batch)
    labels = (record_format.time_field, record_format.key_field, record_format.key_first)
    if codec == "json":
        return encode_json_buffer(shaped, *labels)
    if codec == "msgpack":
        return encode_msgpack_buffer(shaped, *labels)
    raise ConnectorConfigError(f"codec {codec!r} is unknown; expected one of {CODECS}")


@njit(cache=True)
def _judge_rows(kind: Any, integer: Any, real: Any, slow: Any, blocked: Any, record_ms: Any,
                time_slot: int, factor: int, limit: int, key_slot: int, field_slots: Any,
                field_types: Any) -> tuple[Any, Any]:
    """Each record's time in ns and whether the compiled path takes it, in one pass.

    1. A record the scanner found slow, or one not scanned (empty, oversize), goes the exact
       way.
    2. Its time: the time field's integer times ``factor`` (within int64), or its float times
       ``factor`` rounded (below ``_SAFE_FLOAT_TIME``); anything else goes the exact way. With
       no time field, the Kafka record's timestamp.
    3. Its key is a string or an integer, and each field has its type's kind: a number or null
       for float64, an integer for int64, true or false for bool.
    """
    count = kind.shape[0]
    times = np.zeros(count, dtype=np.int64)
    fast = np.zeros(count, dtype=np.bool_)
    for row in range(count):
        # Step 1: scanned and certain.
        taken = not slow[row] and not blocked[row]
        # Step 2: the time.
        if time_slot < 0:
            times[row] = record_ms[row] * 1_000_000
        else:
            time_kind = kind[row, time_slot]
            if time_kind == KIND_INT and -limit <= integer[row, time_slot] <= limit:
                times[row] = integer[row, time_slot] * factor
            elif time_kind == KIND_FLOAT:
                scaled = np.rint(real[row, time_slot] * float(factor))
                if abs(scaled) < _SAFE_FLOAT_TIME:
                    times[row] = np.int64(scaled)
                else:
                    taken = False
            else:
                taken = False
        # Step 3: the key's and the fields' kinds.
        key_kind = kind[row, key_slot]
        if key_kind != KIND_STRING and key_kind != KIND_INT:
            taken = False
        for index in range(field_slots.shape[0]):
            field_kind = kind[row, field_slots[index]]
            if field_types[index] == 0:
                if field_kind != KIND_FLOAT and field_kind != KIND_INT and field_kind != KIND_NULL:
                    taken = False
            elif field_types[index] == 1:
                if field_kind != KIND_INT:
                    taken = False
            elif field_kind != KIND_TRUE and field_kind != KIND_FALSE:
                taken = False
        fast[row] = taken
    return times, fast
