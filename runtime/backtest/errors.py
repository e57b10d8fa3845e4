"""Errors of backtests: bad ranges, scenarios, outputs and verifications."""

from __future__ import annotations

from streamdag.errors import StreamdagError

__all__ = ["BacktestError", "ScenarioError", "TimeRangeError"]


class BacktestError(StreamdagError):
    """A backtest cannot run as asked (its message says what to change)."""


class TimeRangeError(BacktestError):
    """``--from`` / ``--to`` is not a time, or the range is empty."""


class ScenarioError(BacktestError):
    """A scenario or sweep names a node or param the graph does not have, or is malformed."""
