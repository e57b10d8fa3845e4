"""Operator kernels and declarations: pure numpy/numba, no Ray, no Kafka.

Importing this package registers every built-in operator.
"""

# Each import registers the operators its module declares.
from operators import (  # noqa: F401
    asof_join,
    bars,
    combine,
    counting,
    crossover,
    iterate,
    map_filter,
    rolling,
    smoothing,
    user_function,
    vwap,
)

__all__: list[str] = []
