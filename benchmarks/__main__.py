"""Run every benchmark module's ``main()``, in name order (``make bench``)."""

from __future__ import annotations

import importlib
import pkgutil

import benchmarks


def main() -> None:
    """Import each ``benchmarks/*.py`` module and run its ``main()``."""
    for module in sorted(info.name for info in pkgutil.iter_modules(benchmarks.__path__)):
        if not module.startswith("_"):
            print(f"== benchmarks.{module}", flush=True)
            importlib.import_module(f"benchmarks.{module}").main()


if __name__ == "__main__":
    main()
