"""Benchmarks: each module's ``main()`` prints a table; ``python -m benchmarks`` runs them all."""

__all__: list[str] = []
