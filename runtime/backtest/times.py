"""Points in time for backtest ranges: ISO-8601 text or epoch numbers, to nanoseconds."""

from __future__ import annotations

from datetime import UTC, datetime

from runtime.backtest.errors import TimeRangeError
from streamdag.times import time_ns

__all__ = ["format_time", "parse_time"]


def parse_time(value: str | int | float | datetime) -> int:
    """Nanoseconds since the epoch of an ISO-8601 time or an epoch number (``time_ns``).

    An epoch number's unit follows from its size (seconds, ms, µs or ns since 1970); an
    ISO-8601 time without a zone is UTC. Anything else is a TimeRangeError.

    >>> parse_time("2026-01-02T03:04:05Z")
    1767323045000000000
    >>> parse_time("1767323045.5"), parse_time(1767323045000)
    (1767323045500000000, 1767323045000000000)
    """
    ns = time_ns(value)
    if ns is None:
        raise TimeRangeError(
            f"{value!r} is not a time; give ISO-8601 (e.g. 2026-01-02T03:04:05Z) or an epoch "
            "number (seconds, ms, µs or ns since 1970)"
        )
    return ns


def format_time(ns: int) -> str:
    """ISO-8601 UTC text of a nanosecond time (microsecond precision).

    >>> format_time(1767323045500000000)
    '2026-01-02T03:04:05.500000+00:00'
    """
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()
