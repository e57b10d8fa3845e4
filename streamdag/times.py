"""Points in time written as text or numbers: ISO-8601 or epoch numbers, to nanoseconds.

The one parser behind every ``--from``/``--to`` (``streamdag backtest``, ``cache``, ``tail``,
``report``) and ``backtest(start=, end=)``; each caller words its own error for what is not a
time, since only it knows the flag or argument the user wrote.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

__all__ = ["time_ns"]

#: Epoch numbers below these magnitudes are seconds, milliseconds, microseconds (else ns).
_SECONDS_BELOW = 10**11
_MILLIS_BELOW = 10**14
_MICROS_BELOW = 10**17


def time_ns(value: str | int | float | datetime) -> int | None:
    """Nanoseconds since the epoch of an ISO-8601 time or an epoch number; None if neither.

    An epoch number's unit follows from its size (seconds, ms, µs or ns since 1970); an
    ISO-8601 time without a zone is UTC.

    >>> time_ns("2026-01-02T03:04:05Z"), time_ns("2026-01-02T04:04:05+01:00")
    (1767323045000000000, 1767323045000000000)
    >>> time_ns("1767323045.5"), time_ns(1767323045000), time_ns("yesterday")
    (1767323045500000000, 1767323045000000000, None)
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
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return _datetime_ns(moment)


def _datetime_ns(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1_000


def _epoch_ns(number: Decimal) -> int:
    # Decimal, not float: a float of nanoseconds since 1970 is off by up to 256 ns.
    magnitude = abs(number)
    scale = (10**9 if magnitude < _SECONDS_BELOW else 10**6 if magnitude < _MILLIS_BELOW
             else 10**3 if magnitude < _MICROS_BELOW else 1)
    return int((number * scale).to_integral_value())
