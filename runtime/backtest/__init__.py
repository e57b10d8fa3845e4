"""Backtests: a graph over a recorded range, equal to live, with caches, scenarios and sweeps.

``backtest(graph, start, end, ...)`` is the one call; ``streamdag backtest`` and
``streamdag cache`` are its command lines.
"""

from __future__ import annotations

from runtime.backtest.backtest import BacktestOptions, backtest, output_nodes
from runtime.backtest.cache import CacheStats, ResultCache
from runtime.backtest.digests import digest, first_difference
from runtime.backtest.errors import BacktestError, ScenarioError, TimeRangeError
from runtime.backtest.inputs import RecordedInput
from runtime.backtest.results import BacktestResult, SweepResult
from runtime.backtest.scenarios import Scenario, apply_scenario, parse_sweeps
from runtime.backtest.times import parse_time

__all__ = [
    "BacktestError",
    "BacktestOptions",
    "BacktestResult",
    "CacheStats",
    "RecordedInput",
    "ResultCache",
    "Scenario",
    "ScenarioError",
    "SweepResult",
    "TimeRangeError",
    "apply_scenario",
    "backtest",
    "digest",
    "first_difference",
    "output_nodes",
    "parse_sweeps",
    "parse_time",
]
