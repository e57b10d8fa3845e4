"""Operator kernels and declarations: pure numpy/numba, no Ray, no Kafka.

Importing this package registers every built-in operator.
"""

from streamdag.operators import map_filter  # noqa: F401  (registers map and filter)

__all__: list[str] = []
