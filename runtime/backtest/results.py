"""What a backtest returns: every sink's output as columns, digests, and optional DataFrames."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.backtest.digests import digest
from runtime.backtest.errors import BacktestError
from streamdag.batch import Batch

__all__ = ["BacktestResult", "SweepResult"]


@dataclass(frozen=True)
class BacktestResult:
    """Each output node's records in the range, by node name, and how the run went.

    ``figures`` holds ``events`` (recorded input events replayed, warm-up included),
    ``warm_up_events``, ``warm_up`` (per source, in words), ``seconds``, ``executor``, and the
    names of nodes ``computed`` and read from the cache (``cached``).
    """

    outputs: Mapping[str, Batch]
    figures: Mapping[str, Any] = field(default_factory=dict)
    scenario: str = "base"

    def __getitem__(self, name: str) -> dict[str, npt.NDArray[Any]]:
        """The output of ``name`` as columns: ``ts``, ``key`` (str) and every field."""
        return self.columns(name)

    def _batch(self, name: str) -> Batch:
        if name not in self.outputs:
            raise KeyError(f"no output {name!r}; the outputs are {sorted(self.outputs)}")
        return self.outputs[name]

    def columns(self, name: str) -> dict[str, npt.NDArray[Any]]:
        """``{"ts": int64, "key": str, <field>: ...}`` arrays of output ``name``."""
        batch = self._batch(name)
        return {"ts": batch.ts, "key": np.char.decode(batch.key, "utf-8")
                if len(batch) else np.empty(0, dtype=str), **batch.columns}

    def records(self, name: str) -> list[dict[str, object]]:
        """The records of output ``name``, as dicts."""
        return self._batch(name).to_records()

    def digests(self) -> dict[str, str]:
        """sha256 of every output in canonical per-key order (``runtime.backtest.digests``)."""
        return {name: digest(batch) for name, batch in sorted(self.outputs.items())}

    def to_pandas(self, name: str) -> Any:
        """Output ``name`` as a pandas DataFrame (needs pandas: ``pip install pandas``)."""
        return _optional("pandas").DataFrame(self.columns(name))

    def to_arrow(self, name: str) -> Any:
        """Output ``name`` as a pyarrow Table (needs pyarrow: ``pip install pyarrow``)."""
        return _optional("pyarrow").table(self.columns(name))


@dataclass(frozen=True)
class SweepResult:
    """The result of every variant of a sweep, by scenario name, and the shared figures."""

    variants: Mapping[str, BacktestResult]
    figures: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, scenario: str) -> BacktestResult:
        """The result of one variant."""
        if scenario not in self.variants:
            raise KeyError(f"no variant {scenario!r}; the variants are {list(self.variants)}")
        return self.variants[scenario]


def _optional(module: str) -> Any:
    # An optional extra: imported only when asked for, never a dependency of streamdag.
    if importlib.util.find_spec(module) is None:
        raise BacktestError(f"{module} is not installed; `pip install {module}` to convert "
                            "backtest outputs, or read .columns(name) as numpy arrays")
    return importlib.import_module(module)
