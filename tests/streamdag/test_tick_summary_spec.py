"""Issue 12's job written as a data-only spec: it loads to the very nodes the SDK builds."""

from __future__ import annotations

import streamdag as sd
from streamdag.record_format import RecordFormat, record_format_of
from streamdag.spec import loads

SPEC = """
name = "tick_summary"
outputs = ["out"]

[[nodes]]
name = "ticks"
type = "kafka_source"
[nodes.params]
topic = "market.ticks"
key = "symbol"
time_unit = "ms"
schema = { price = "float64" }

[[nodes]]
name = "sma"
type = "rolling_mean"
inputs = ["ticks"]
params = { field = "price", window = 20, min_periods = 1 }

[[nodes]]
name = "n"
type = "running_count"
inputs = ["ticks"]

[[nodes]]
name = "row"
type = "combine"
inputs = ["sma", "n"]
params = { columns = { sma = "0.value", n = "1.value" } }

[[nodes]]
name = "out"
type = "kafka_sink"
inputs = ["row"]
params = { topic = "ticks.summary", key_field = "symbol" }
"""


def test_the_job_as_a_spec_is_the_sdk_graph() -> None:
    ticks = sd.source("ticks", topic="market.ticks", key="symbol", time_unit="ms",
                      schema={"price": "float64"})
    row = sd.combine(sma=ticks.rolling_mean("price", window=20, min_periods=1, name="sma"),
                     n=ticks.running_count(name="n"), name="row")
    graph = sd.Graph("tick_summary", outputs=[row.to_topic("ticks.summary", key_field="symbol",
                                                           name="out")])
    loaded = loads(SPEC, "toml")
    assert loaded.node_ids == graph.node_ids
    assert record_format_of(loaded.node("out")) == RecordFormat((), "symbol", "ts", "ms")
    assert loaded.node("row").output_schema == sd.Schema.of(sma="float64", n="int64")
