"""Operator kernels and declarations: pure numpy/numba, no Ray, no Kafka.

Importing this package registers every built-in operator.
"""

__all__: list[str] = []
