"""Node options a kernel would ignore (interval, missing) are refused when a graph is built.

The same rule holds on every way in: the SDK, ``with_options``, graph specs read from TOML or
JSON, and the gateway's spec check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import streamdag as sd
from runtime.deployment.gateway import ErrorDetail, SpecRejectedError, check_spec
from streamdag.errors import GraphError
from streamdag.operator_registry import available
from streamdag.spec import graph_from_dict, loads

TICKS = sd.source("ticks", topic="ticks", key="symbol",
                  schema={"price": "float64", "size": "float64"})
QUOTES = sd.source("quotes", topic="quotes", key="symbol", schema={"bid": "float64"})
UPSTREAM = ("bucket upstream instead, e.g. with ohlcv bars (.ohlcv(bar='1s')) or a user "
            "function built with sd.udf(interval=...)")

# operator -> (a builder taking node options, what the kernel does, the fix for an interval)
BUILDERS: dict[str, tuple[Callable[..., sd.Node], str, str]] = {
    "map": (
        lambda **options: TICKS.map("price * 2", name="n", **options),
        "computes each event from that event alone and does not bucket events by interval",
        UPSTREAM,
    ),
    "filter": (
        lambda **options: TICKS.filter("price > 1", name="n", **options),
        "keeps or drops each event on its own and does not bucket events by interval",
        UPSTREAM,
    ),
    "asof_join": (
        lambda **options: TICKS.asof_join(QUOTES, name="n", **options),
        "joins each left event with its key's latest right event and does not bucket events "
        "by interval",
        UPSTREAM,
    ),
    "iterate": (
        lambda **options: TICKS.iterate({"x": "price"}, {"x": "0.5 * x"}, output="x", name="n",
                                        **options),
        "iterates each event on its own and does not bucket events by interval",
        UPSTREAM,
    ),
    "ohlcv": (
        lambda **options: TICKS.ohlcv(bar="1s", name="n", **options),
        "buckets events into bars of its own bar= length, not by a node interval, and emits a "
        "bar only where there were trades, as a Flink tumbling window does",
        "set the bar length with bar= instead, e.g. .ohlcv(bar='1s')",
    ),
    "kafka_source": (
        lambda **options: sd.source("n", topic="trades", schema={"price": "float64"},
                                    **options),
        "hands on events as they are read and does not bucket events by interval",
        "bucket downstream instead, e.g. with ohlcv bars (.ohlcv(bar='1s')) or a user function "
        "built with sd.udf(interval=...)",
    ),
    "rolling_mean": (
        lambda **options: TICKS.rolling_mean("price", window=3, name="n", **options),
        "updates on every event and does not bucket events by interval",
        UPSTREAM,
    ),
}


def last_value(prices: np.ndarray) -> np.ndarray:
    """The newest value of each window."""
    newest: np.ndarray = prices[:, -1]
    return newest


def _interval_refusal(operator: str) -> str:
    _, handles, fix = BUILDERS[operator]
    return (f"node 'n': {operator} {handles}, but interval=1000000000 ns was given; remove "
            f"interval= from this node and {fix}")


def _missing_refusal(operator: str, missing: str) -> str:
    _, handles, _ = BUILDERS[operator]
    return (f"node 'n': {operator} {handles}, so it has no gap between interval buckets to "
            f"handle, but missing={missing!r} was given; remove missing= from this node (the "
            "default, 'skip', then applies) or set the policy on a node that buckets events by "
            f"interval, e.g. a user function built with sd.udf(interval=..., missing={missing!r})")


@pytest.mark.parametrize("operator", list(BUILDERS))
def test_an_interval_the_kernel_ignores_is_refused(operator: str) -> None:
    build = BUILDERS[operator][0]
    with pytest.raises(GraphError) as caught:
        build(interval="1s")
    assert str(caught.value) == _interval_refusal(operator)
    # Given with a missing policy too, the interval is what is reported first.
    with pytest.raises(GraphError) as caught:
        build(interval="1s", missing="fail")
    assert str(caught.value) == _interval_refusal(operator)


@pytest.mark.parametrize("missing", ["fail", "interpolate"])
@pytest.mark.parametrize("operator", list(BUILDERS))
def test_a_missing_policy_the_kernel_ignores_is_refused(operator: str, missing: str) -> None:
    build = BUILDERS[operator][0]
    with pytest.raises(GraphError) as caught:
        build(missing=missing)
    assert str(caught.value) == _missing_refusal(operator, missing)
    assert build(missing="skip").missing == "skip"


def test_with_options_is_checked_like_a_new_node() -> None:
    doubled = TICKS.map("price * 2", name="n")
    with pytest.raises(GraphError) as caught:
        doubled.with_options(missing="fail")
    assert str(caught.value) == _missing_refusal("map", "fail")
    with pytest.raises(GraphError) as caught:
        doubled.with_options(interval="1s")
    assert str(caught.value) == _interval_refusal("map")


def test_only_user_functions_take_an_interval_or_a_policy() -> None:
    # A kernel opts in; every other registered operator refuses both options.
    builtin = {name: d for name, d in available().items()
               if d.__module__.startswith("operators.")}
    honouring = {name: (d.supports_interval, d.missing_policies) for name, d in builtin.items()
                 if d.supports_interval or d.missing_policies != ("skip",)}
    assert honouring == {"user_function": (True, ("skip", "fail", "interpolate"))}


def test_fail_without_an_interval_is_refused_because_it_could_never_fail() -> None:
    with pytest.raises(GraphError) as caught:
        sd.udf(period=3, missing="fail")(last_value)(TICKS["price"], name="n")
    assert str(caught.value) == (
        "node 'n': missing='fail' fails on a gap between interval buckets, but this node has no "
        "interval, so it could never fail; give it one as well (e.g. sd.udf(interval='1s', "
        "missing='fail')) or remove missing="
    )
    node = sd.udf(period=3, interval="1s", missing="fail")(last_value)(TICKS["price"])
    assert (node.interval, node.period, node.missing) == (1_000_000_000, 3, "fail")
    interpolating = sd.udf(period=3, missing="interpolate")(last_value)(TICKS["price"])
    assert (interpolating.interval, interpolating.missing) == (None, "interpolate")


def _spec(**map_options: Any) -> dict[str, Any]:
    return {
        "name": "g",
        "nodes": [
            {"name": "ticks", "type": "kafka_source",
             "params": {"topic": "ticks", "schema": {"price": "float64"}, "key": "symbol"}},
            {"name": "n", "type": "map", "inputs": ["ticks"],
             "params": {"expression": "price * 2"}, **map_options},
        ],
    }


@pytest.mark.parametrize(
    ("options", "expected"),
    [({"interval": "1s"}, _interval_refusal("map")),
     ({"interval": 1_000_000_000}, _interval_refusal("map")),
     ({"missing": "fail"}, _missing_refusal("map", "fail"))],
)
def test_specs_from_files_and_the_gateway_are_refused_the_same_way(
    options: dict[str, Any], expected: str
) -> None:
    data = _spec(**options)
    with pytest.raises(GraphError) as caught:
        graph_from_dict(data)
    assert str(caught.value) == expected
    with pytest.raises(GraphError) as caught:
        loads(json.dumps(data), "json")
    assert str(caught.value) == expected
    with pytest.raises(SpecRejectedError) as rejected:
        check_spec(data)
    assert rejected.value.details == (ErrorDetail("n", "GraphError", expected),)


def test_a_spec_source_with_an_interval_is_refused_from_toml() -> None:
    text = """\
name = "g"

[[nodes]]
name = "n"
type = "kafka_source"
interval = "1s"

[nodes.params]
topic = "trades"
schema = { price = "float64" }
"""
    with pytest.raises(GraphError) as caught:
        loads(text, "toml")
    assert str(caught.value) == _interval_refusal("kafka_source")

