"""The operator contract: code hashes cover every operator module a declaration runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

import streamdag as sd
import streamdag.operator
from streamdag.errors import GraphError
from streamdag.operator import module_code_hash, operator_code_modules
from streamdag.operator_registry import lookup

KEYED_STATE_MODULES = (
    "operators.errors",
    "operators.key_slots",
    "operators.keyed_state",
    "operators.node_cache",
)
TICKS = sd.source("ticks", topic="ticks", key="symbol",
                  schema={"price": "float64", "size": "float64"})


@pytest.mark.parametrize(
    ("operator", "modules"),
    [
        ("rolling_mean", (*KEYED_STATE_MODULES, "operators.rolling",
                          "operators.rolling_extremes")),
        ("rolling_max", (*KEYED_STATE_MODULES, "operators.rolling",
                         "operators.rolling_extremes")),
        # zscore runs the rolling kernel; ema only shares the module that declares zscore.
        ("zscore", (*KEYED_STATE_MODULES, "operators.rolling",
                    "operators.rolling_extremes", "operators.smoothing")),
        ("ema", (*KEYED_STATE_MODULES, "operators.rolling",
                 "operators.rolling_extremes", "operators.smoothing")),
        ("vwap", (*KEYED_STATE_MODULES, "operators.vwap")),
        ("crossover", ("operators.crossover", *KEYED_STATE_MODULES)),
        ("ohlcv", ("operators.bars", "operators.errors", "operators.key_labels",
                   "operators.key_slots", "operators.row_index")),
        ("map", ("operators.errors", "operators.expressions",
                 "operators.map_filter")),
        ("kafka_source", ("streamdag.endpoints",)),
    ],
)
def test_code_modules_are_the_operator_modules_a_declaration_runs(
    operator: str, modules: tuple[str, ...]
) -> None:
    assert operator_code_modules(lookup(operator)) == modules


def _with_changed_module(monkeypatch: pytest.MonkeyPatch, changed: str) -> None:
    """Make ``code_hash`` see module ``changed`` as if its source text had been edited."""

    def edited(module_name: str) -> str:
        real = module_code_hash(module_name)
        return real[::-1] if module_name == changed else real

    monkeypatch.setattr(streamdag.operator, "module_code_hash", edited)


def _ids() -> dict[str, str]:
    nodes = {
        "mean": TICKS.rolling_mean("price", window=3, name="mean"),
        "vwap": TICKS.vwap(window=3, name="vwap"),
        "bars": TICKS.ohlcv(bar="1s", name="bars"),
        "map": TICKS.map("price * 2", name="doubled"),
    }
    return {name: node.node_id for name, node in nodes.items()}


@pytest.mark.parametrize(
    ("changed", "moved"),
    [
        ("operators.node_cache", {"mean", "vwap"}),
        ("operators.key_slots", {"mean", "vwap", "bars"}),
        ("operators.keyed_state", {"mean", "vwap"}),
        ("operators.rolling", {"mean"}),
        ("operators.expressions", {"map"}),
    ],
)
def test_node_ids_change_with_every_module_their_code_runs(
    monkeypatch: pytest.MonkeyPatch, changed: str, moved: set[str]
) -> None:
    before = _ids()
    _with_changed_module(monkeypatch, changed)
    after = _ids()
    assert {name for name in before if before[name] != after[name]} == moved


_PRINT_HASHES = (
    "import json; from streamdag.operator_registry import lookup; "
    "print(json.dumps({n: lookup(n).code_hash() for n in "
    "['rolling_mean', 'zscore', 'vwap', 'crossover', 'ohlcv']}))"
)


def test_code_hashes_are_identical_across_processes_and_hash_seeds() -> None:
    runs = []
    for seed in ("0", "1"):
        done = subprocess.run([sys.executable, "-c", _PRINT_HASHES],
                              env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True,
                              text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        runs.append(json.loads(done.stdout))
    here = {name: lookup(name).code_hash() for name in runs[0]}
    assert runs[0] == runs[1] == here
    assert len(set(here.values())) == len(here)


@pytest.mark.parametrize(
    "build",
    [
        lambda: TICKS.rolling_sum("price", window=3, name="n", interval="1s"),
        lambda: TICKS.rolling_min("price", time_window="5s", name="n", interval="1s"),
        lambda: TICKS.ema("price", span=3, name="n", interval="1s"),
        lambda: TICKS.zscore("price", window=3, name="n", interval="1s"),
        lambda: TICKS.vwap(window=3, name="n", interval="1s"),
        lambda: TICKS.ema("price", span=2).crossover(TICKS.ema("price", span=5), name="n",
                                                     interval="1s"),
        lambda: TICKS.rolling_std("price", window=3, name="n").with_options(interval="1s"),
    ],
)
def test_event_by_event_kernels_refuse_an_interval_when_built(build: Callable[[], sd.Node],
                                                               ) -> None:
    with pytest.raises(GraphError) as caught:
        build()
    operator = str(caught.value).split()[2]
    assert str(caught.value) == (
        f"node 'n': {operator} updates on every event and does not bucket events by interval, "
        "but interval=1000000000 ns was given; remove interval= from this node and bucket "
        "upstream instead, e.g. with ohlcv bars (.ohlcv(bar='1s')) or a user function built "
        "with sd.udf(interval=...)"
    )


def test_interval_is_kept_where_the_operator_supports_it() -> None:
    # ohlcv buckets by its own bar= length and ignored a node interval: it refuses one now.
    assert not lookup("ohlcv").supports_interval
    assert not lookup("rolling_mean").supports_interval
    assert lookup("user_function").supports_interval
    node = sd.udf(period=2, interval="1s")(lambda prices: prices[:, -1])(TICKS["price"])
    assert node.interval == 1_000_000_000
