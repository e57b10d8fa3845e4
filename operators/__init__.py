"""Operator kernels and declarations: pure numpy/numba, no Ray, no Kafka.

Importing this package registers every built-in operator.
"""

# Each import registers the operators its module declares.
from operators import (  # noqa: F401
    asof_join,
    bars,
    combine,
    count_window,
    counting,
    crossover,
    inference,
    interval_join,
    iterate,
    lookup_join,
    map_filter,
    rolling,
    session_window,
    smoothing,
    user_function,
    vwap,
    windows,
)

__all__: list[str] = []
