"""Points in time for backtest ranges: ISO-8601 text or epoch numbers, to nanoseconds."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from runtime.backtest.errors import TimeRangeError

__all__ = ["format_time", "parse_time"]

#: Epoch numbers below these magnitudes are seconds, milliseconds, microseconds (else ns).
_SECONDS_BELOW = 10**11
_MILLIS_BELOW = 10**14
_MICROS_BELOW = 10**17


def parse_time(value: str | int | float | datetime) -> int:
    """Nanoseconds since the epoch of an ISO-8601 time or an epoch number.

    An epoch number's unit follows from its size (seconds, ms, µs or ns since 1970); an
    ISO-8601 time without a zone is UTC.

    >>> parse_time("2026-01-02T03:04:05Z")
    1767323045000000000
    >>> parse_time("1767323045.5"), parse_time(1767323045000)
    (1767323045500000000, 1767323045000000000)
    """
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return _datetime_ns(moment)
    if isinstance(value, int | float):
        return _epoch_ns(Decimal(repr(value)))
    text = str(value).strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        number = None
    if number is not None and number.is_finite():
        return _epoch_ns(number)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise TimeRangeError(
            f"{value!r} is not a time; give ISO-8601 (e.g. 2026-01-02T03:04:05Z) or an epoch "
            "number (seconds, ms, µs or ns since 1970)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _datetime_ns(moment)


def format_time(ns: int) -> str:
    """ISO-8601 UTC text of a nanosecond time (microsecond precision).

    >>> format_time(1767323045500000000)
    '2026-01-02T03:04:05.500000+00:00'
    """
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat()


def _datetime_ns(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


def _epoch_ns(number: Decimal) -> int:
    # Decimal, not float: a float of nanoseconds since 1970 is off by up to 256 ns.
    magnitude = abs(number)
    scale = (10**9 if magnitude < _SECONDS_BELOW else 10**6 if magnitude < _MILLIS_BELOW
             else 10**3 if magnitude < _MICROS_BELOW else 1)
    return int((number * scale).to_integral_value())
