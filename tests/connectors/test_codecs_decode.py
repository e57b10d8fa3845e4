"""Decoding whole fetches: the compiled path equals the exact path; poison is diagnosed."""

from __future__ import annotations

import json
import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.codecs import DecodedFetch, RecordDecoder
from streamdag.schema import Schema

SCHEMA = Schema.of(price="float64", size="int64", live="bool")


def decoder(codec: str = "json", fast_path: bool = True, **options: Any) -> RecordDecoder:
    settings_ = {"key_field": "sym", "time_field": "t", "time_unit": "ms"} | options
    return RecordDecoder(SCHEMA, codec=codec, fast_path=fast_path, **settings_)  # type: ignore[arg-type]


def as_rows(fetch: DecodedFetch) -> list[tuple[Any, ...]]:
    columns = [fetch.columns[name].tolist() for name in SCHEMA.names]
    return [
        (index, ts, key, *values)
        for index, ts, key, *values in zip(
            fetch.accepted.tolist(), fetch.ts.tolist(), fetch.key.tolist(), *columns, strict=True
        )
    ]


def same_rows(a: list[tuple[Any, ...]], b: list[tuple[Any, ...]]) -> bool:
    # NaN equals NaN here, and -0.0 differs from 0.0: the two paths must agree bit for bit.
    def normal(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(
            ("nan" if math.isnan(v) else (v, math.copysign(1, v))) if isinstance(v, float) else v
            for v in row
        )

    return [normal(r) for r in a] == [normal(r) for r in b]


def test_json_fetch_decodes_every_valid_shape() -> None:
    values = [
        b'{"sym": "AAPL", "t": 5, "price": 1.5, "size": 3, "live": true}',
        b' {"live":false,"size":-7,"price":2,"t":6.5,"sym":42, "extra": [1, {"x": 2}]}\n',
        b'{"sym":"caf\\u00e9","t":7,"price":null,"size":0,"live":true}',
        b'{"sym":"b","t":8,"price":1e400,"size":9223372036854775807,"live":false}',
        b'{"sym":"c","t":9,"price":NaN,"size":1,"live":true}',
    ]
    fetch = decoder().decode(values, [0] * len(values))

    assert fetch.rejections == ()
    assert fetch.key.tolist() == [b"AAPL", b"42", "café".encode(), b"b", b"c"]
    assert fetch.ts.tolist() == [5_000_000, 6_500_000, 7_000_000, 8_000_000, 9_000_000]
    price = fetch.columns["price"].tolist()
    assert price[:2] == [1.5, 2.0] and math.isnan(price[2]) and price[3] == math.inf
    assert math.isnan(price[4])
    assert fetch.columns["size"].tolist() == [3, -7, 0, 9223372036854775807, 1]
    assert fetch.columns["live"].tolist() == [True, False, True, False, True]
    assert fetch.exact_path == 3  # the nested extra field, the escaped key, the NaN


@pytest.mark.parametrize(
    ("value", "reason", "detail"),
    [
        (b"not json", "undecodable", "not valid json: JSONDecodeError"),
        (b"", "undecodable", "the value is empty"),
        (b"[1, 2]", "schema", "the value is a list"),
        (b'{"t": 1, "price": 1, "size": 1, "live": true}', "bad_key", "'sym' is missing"),
        (b'{"sym": true, "t": 1, "price": 1, "size": 1, "live": true}', "bad_key", "bool True"),
        (b'{"sym": "a\\u0000", "t": 1, "price": 1, "size": 1, "live": true}', "bad_key", "NUL"),
        (b'{"sym": "a", "price": 1, "size": 1, "live": true}', "bad_time", "'t' is missing"),
        (b'{"sym": "a", "t": "x", "price": 1, "size": 1, "live": true}', "bad_time", "str 'x'"),
        (b'{"sym": "a", "t": 1e300, "price": 1, "size": 1, "live": true}', "bad_time", "range"),
        (b'{"sym": "a", "t": 1, "size": 1, "live": true}', "schema", "'price' is missing"),
        (b'{"sym": "a", "t": 1, "price": "1", "size": 1, "live": true}', "schema", "str '1'"),
        (b'{"sym": "a", "t": 1, "price": 1, "size": 1.0, "live": true}', "schema", "float 1.0"),
        (b'{"sym": "a", "t": 1, "price": 1, "size": 1e99, "live": true}', "schema", "(int64)"),
        (b'{"sym": "a", "t": 1, "price": 1, "size": 99999999999999999999, "live": true}',
         "schema", "int64"),
        (b'{"sym": "a", "t": 1, "price": true, "size": 1, "live": true}', "schema", "bool True"),
        (b'{"sym": "a", "t": 1, "price": 1, "size": 1, "live": 1}', "schema", "int 1"),
        (b'{"sym": "a", "t": 1, "price": 1, "size": 1, "live": true, "pad": "' + b"x" * 300
         + b'"}', "oversize", "at most 256"),
    ],
)
def test_poison_json_records_are_refused_with_their_reason(
    value: bytes, reason: str, detail: str
) -> None:
    good = b'{"sym": "ok", "t": 1, "price": 1, "size": 1, "live": true}'
    fetch = decoder(max_record_bytes=256).decode([good, value, good], [0, 0, 0])

    assert fetch.accepted.tolist() == [0, 2]
    assert [(r.index, r.reason) for r in fetch.rejections] == [(1, reason)]
    assert detail in fetch.rejections[0].detail


def test_poison_msgpack_records_are_refused_with_their_reason() -> None:
    good = msgpack.packb({"sym": "ok", "t": 1, "price": 1.0, "size": 1, "live": True})
    values = [
        good,
        b"\xc1",
        msgpack.packb([1, 2]),
        msgpack.packb({"sym": b"raw", "t": 1, "price": 1.0, "size": 1, "live": True}),
        msgpack.packb({"sym": "a", "t": 1, "price": 1.0, "size": 2**64 - 1, "live": True}),
        good + b"\x00",
    ]
    fetch = decoder("msgpack").decode(values, [0] * len(values))

    assert fetch.accepted.tolist() == [0]
    assert [(r.index, r.reason) for r in fetch.rejections] == [
        (1, "undecodable"), (2, "schema"), (3, "bad_key"), (4, "schema"), (5, "undecodable"),
    ]


_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
)
_documents = st.one_of(
    st.fixed_dictionaries(
        {
            "sym": st.one_of(st.text(max_size=5), st.integers(-(2**66), 2**66), _scalars),
            "t": st.one_of(st.integers(-(2**64), 2**64), st.floats(-1e15, 1e15), _scalars),
            "price": st.one_of(st.floats(allow_nan=False), st.integers(-(2**60), 2**60),
                               _scalars),
            "size": st.one_of(st.integers(-(2**64), 2**64), _scalars),
            "live": st.one_of(st.booleans(), _scalars),
        },
        optional={"extra": st.one_of(_scalars, st.lists(st.integers(), max_size=2))},
    ),
    _scalars,
)


def _packed_or_poison(document: Any) -> bytes:
    try:
        return bytes(msgpack.packb(document))
    except OverflowError:  # msgpack has no integers beyond 64 bits
        return b"\xc1"


@settings(max_examples=60, deadline=None)
@given(st.lists(_documents, min_size=1, max_size=30), st.sampled_from(["json", "msgpack"]))
def test_compiled_path_equals_exact_path(documents: list[Any], codec: str) -> None:
    if codec == "json":
        values = [json.dumps(d).encode() for d in documents]
    else:
        values = [_packed_or_poison(d) for d in documents]
    stamps = np.arange(len(values), dtype=np.int64)
    compiled = decoder(codec).decode(values, stamps)
    exact = decoder(codec, fast_path=False).decode(values, stamps)

    assert same_rows(as_rows(compiled), as_rows(exact))
    assert compiled.rejections == exact.rejections
    assert exact.exact_path == len(values)


def test_compiled_json_floats_equal_json_loads() -> None:
    rng = np.random.default_rng(7)
    numbers = (rng.standard_normal(3000) * 10.0 ** rng.integers(-300, 300, 3000)).tolist()
    numbers += np.round(rng.normal(100, 30, 3000), 2).tolist()
    texts = [repr(n) for n in numbers] + ["1E5", "-0.0", "2.2250738585072011e-308", "4.9e-324",
                                          "123456789.123456789e-3", "0.1e1"]
    values = [b'{"sym":"a","t":1,"price":%s,"size":1,"live":true}' % t.encode() for t in texts]
    fetch = decoder().decode(values, [0] * len(values))

    expected = [json.loads(v)["price"] for v in values]
    assert fetch.exact_path == 0
    assert same_rows([(p,) for p in fetch.columns["price"].tolist()], [(p,) for p in expected])


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_a_time_that_overflows_int64_nanoseconds_is_refused_on_both_paths(codec: str) -> None:
    """Milliseconds times just inside and just outside what int64 nanoseconds hold."""
    limit = ((1 << 63) - 1) // 1_000_000
    documents = [{"sym": "a", "t": t, "price": 1.5, "size": 2, "live": True}
                 for t in (limit, limit + 1, -limit, -limit - 1)]
    values = [json.dumps(d).encode() if codec == "json" else bytes(msgpack.packb(d))
              for d in documents]
    compiled = decoder(codec).decode(values, [0] * 4)
    exact = decoder(codec, fast_path=False).decode(values, [0] * 4)

    assert compiled.accepted.tolist() == [0, 2]
    assert compiled.ts.tolist() == [limit * 1_000_000, -limit * 1_000_000]
    assert [(r.index, r.reason) for r in compiled.rejections] == [(1, "bad_time"),
                                                                   (3, "bad_time")]
    assert same_rows(as_rows(compiled), as_rows(exact))
    assert compiled.rejections == exact.rejections
    assert compiled.exact_path == 2
