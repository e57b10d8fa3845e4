"""Sink record formats: chosen and renamed fields, the key's and event time's names, the event
time's unit (by default the sources'), in JSON and msgpack; refused when they cannot fit."""

from __future__ import annotations

import json

import msgpack
import pytest

import streamdag as sd
from connectors.codecs import encode_values
from runtime.runners.kafka_binding import KafkaBinding
from streamdag import spec
from streamdag.errors import GraphError, SchemaMismatchError
from streamdag.record_format import RecordFormat, record_format_of

TICKS_MS = sd.source("ticks", topic="ticks", key="symbol", time_unit="ms",
                     schema={"price": "float64", "size": "int64"})


def _batch() -> sd.Batch:
    return sd.Batch.from_columns(ts=[1_700_000_000_123_000_000, 5_999_999], key=["AAPL", "MSFT"],
                                 price=[1.5, 2.0], size=[3, 4])


def test_json_and_msgpack_write_the_chosen_shape() -> None:
    shape = RecordFormat((("p", "price"), ("qty", "size")), key_field="symbol",
                         time_field="time", time_unit="ms")
    assert encode_values(_batch(), "json", shape) == [
        b'{"time":1700000000123,"symbol":"AAPL","p":1.5,"qty":3}',
        b'{"time":5,"symbol":"MSFT","p":2.0,"qty":4}',
    ]
    assert [msgpack.unpackb(v) for v in encode_values(_batch(), "msgpack", shape)] == [
        {"time": 1700000000123, "symbol": "AAPL", "p": 1.5, "qty": 3},
        {"time": 5, "symbol": "MSFT", "p": 2.0, "qty": 4},
    ]


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_the_key_may_lead(codec: str) -> None:
    shape = RecordFormat((("p", "price"),), key_field="symbol", time_unit="ms", key_first=True)
    values = encode_values(_batch(), codec, shape)  # type: ignore[arg-type]
    decoded = [json.loads(v) if codec == "json" else msgpack.unpackb(v) for v in values]
    assert [list(record.items()) for record in decoded] == [
        [("symbol", "AAPL"), ("ts", 1700000000123), ("p", 1.5)],
        [("symbol", "MSFT"), ("ts", 5), ("p", 2.0)],
    ]
    if codec == "json":
        assert values[0] == b'{"symbol":"AAPL","ts":1700000000123,"p":1.5}'


def test_a_subset_of_fields_in_the_order_given() -> None:
    shape = RecordFormat((("size", "size"),), time_unit="s")
    assert encode_values(_batch(), "json", shape) == [
        b'{"ts":1700000000,"key":"AAPL","size":3}', b'{"ts":0,"key":"MSFT","size":4}']


def test_sink_writes_its_sources_unit_by_default() -> None:
    sink = TICKS_MS.to_topic("out", fields={"p": "price"}, key_field="symbol")
    assert record_format_of(sink) == RecordFormat((("p", "price"),), "symbol", "ts", "ms")
    assert record_format_of(TICKS_MS.to_topic("o", key_first=True)).key_first
    config = KafkaBinding("127.0.0.1:1").sink_for(sink).config
    record = json.loads(encode_values(_batch(), config.codec, config.record_format)[0])
    assert record == {"ts": 1700000000123, "symbol": "AAPL", "p": 1.5}
    plain = sd.source("t", topic="t", schema={"price": "float64"}).to_topic("o")
    assert record_format_of(plain) == RecordFormat()
    assert record_format_of(TICKS_MS.to_topic("o", time_unit="us")).time_unit == "us"


def test_sources_of_different_units_need_an_explicit_unit() -> None:
    quotes = sd.source("quotes", topic="quotes", key="symbol", time_unit="us",
                       schema={"price": "float64"})
    both = sd.combine(a=TICKS_MS["price"], b=quotes["price"]).to_topic("out", name="sink")
    with pytest.raises(GraphError, match=r"read different units: ticks \(ms\), quotes \(us\); "
                                         r"pass time_unit="):
        record_format_of(both)
    with pytest.raises(GraphError, match="sink 'sink' writes event time in its sources' unit"):
        sd.Graph("mixed", outputs=[both])
    explicit = sd.combine(a=TICKS_MS["price"], b=quotes["price"]).to_topic("o", time_unit="ns")
    assert record_format_of(explicit).time_unit == "ns"


def test_record_params_are_checked_when_built() -> None:
    with pytest.raises(SchemaMismatchError, match=r"takes stream field 'bid', but the stream "
                                                  r"carries \['price', 'size'\]"):
        TICKS_MS.to_topic("out", fields={"b": "bid"})
    with pytest.raises(SchemaMismatchError, match="writes the key as 'price', and a field"):
        TICKS_MS.to_topic("out", key_field="price")
    with pytest.raises(SchemaMismatchError, match="key_field and time_field are both 'ts'"):
        TICKS_MS.to_topic("out", key_field="ts")
    with pytest.raises(SchemaMismatchError, match="is not a valid field name"):
        TICKS_MS.to_topic("out", time_field="event time")


def test_record_params_are_part_of_the_id_and_round_trip_a_spec() -> None:
    base = TICKS_MS.to_topic("out", fields={"p": "price"}, name="sink")
    assert TICKS_MS.to_topic("out", fields={"q": "price"}, name="sink").node_id != base.node_id
    assert TICKS_MS.to_topic("out", fields={"p": "price"}, time_unit="ns",
                             name="sink").node_id != base.node_id
    graph = sd.Graph("g", outputs=[TICKS_MS.to_topic("out", fields={"p": "price", "s": "size"},
                                                     key_field="symbol", name="sink")])
    loaded = spec.loads(spec.dumps(graph, "toml"), "toml")
    assert loaded.node("sink").node_id == graph.node("sink").node_id
    assert record_format_of(loaded.node("sink")).fields == (("p", "price"), ("s", "size"))
