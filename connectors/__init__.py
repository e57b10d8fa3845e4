"""Connectors: Kafka source and sink, codecs and scanners, dead letters, the embedded broker."""

# numba caches kernels in one known directory, set before any kernel here is decorated.
import streamdag.kernel_cache  # noqa: F401

__all__: list[str] = []
