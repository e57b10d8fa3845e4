"""Smoothing and normalizing per key: exponential moving average and rolling z-score.

``ema`` keeps one running average per key and updates it in O(1) per event. ``zscore`` is a
statistic of the rolling-moments kernel in ``operators.rolling`` (compensated running
sums, recomputed from the window once per window of events).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.keyed_state import (
    MIN_PERIODS,
    KeyedState,
    KeyedStateLogic,
    NumericFieldDef,
    StateArray,
    check_min_periods,
    float_column,
)
from operators.rolling import RollingLogic
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorLogic
from streamdag.operator_registry import register
from streamdag.params import MAX_EVENTS, Param
from streamdag.schema import Schema

__all__ = ["EmaDef", "EmaLogic", "ZScoreDef"]


@njit(cache=True)
def _ema_kernel(alpha: float, slots: Any, xs: Any, average: Any, out: Any) -> None:
    for r in range(slots.shape[0]):
        s, x = slots[r], xs[r]
        if np.isfinite(x):
            previous = average[s, 0]
            # NaN marks a key without a finite value yet; its first value starts the average.
            average[s, 0] = x if np.isnan(previous) else previous + alpha * (x - previous)
        out[r] = average[s, 0]


class EmaLogic(KeyedStateLogic):
    """Runtime of ``ema``: one running average per key."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._name = config.name
        self._field = str(config.params["field"])
        self._alpha = 2.0 / (int(config.params["span"]) + 1.0)
        self._state = KeyedState(inputs=1, period=1, features=1,
                                 per_key={"average": StateArray(1, np.float64, np.nan)},
                                 snapshot=snapshot)

    def update(self, slots: npt.NDArray[np.int64],
               xs: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Fold events (keys already mapped by ``slots``) in; the average after each event."""
        self._state.check_slots(slots)
        out = np.empty(len(slots), dtype=np.float64)
        _ema_kernel(self._alpha, slots, xs, self._state.per_key["average"], out)
        return out

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The key's average after every event, at that event's ts and key."""
        batch = inputs[0]
        values = self.update(self.slots(batch.key), float_column(batch, self._field, self._name))
        return batch.with_columns({"value": values})


@register
class EmaDef(NumericFieldDef):
    """Exponential moving average of a field per key: alpha = 2 / (span + 1), emitted every event.

    A key's first value starts its average. NaN and infinite inputs leave the average unchanged
    (the event emits the current average, NaN before the key's first finite value).

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> node = ticks.ema("price", span=3, name="e")
    >>> logic = lookup(node.operator).create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a", "a", "b"], price=[2.0, 4.0, 8.0])
    >>> logic.process([batch]).to_records()
    [{'ts': 1, 'key': 'a', 'value': 2.0}, {'ts': 2, 'key': 'a', 'value': 3.0},
     {'ts': 3, 'key': 'b', 'value': 8.0}]
    """

    type_name: ClassVar[str] = "ema"
    summary: ClassVar[str] = "exponential moving average per key"
    params: ClassVar[tuple[Param, ...]] = (
        Param("field", "str", default="value", doc="input field to average"),
        Param("span", "int", minimum=1, maximum=MAX_EVENTS, size=True,
              doc="span in events; alpha = 2 / (span + 1)"),
    )

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """An ``EmaLogic``, fresh or restored from ``snapshot``."""
        return EmaLogic(config, snapshot)


@register
class ZScoreDef(NumericFieldDef):
    """(x - mean) / std (ddof=1) of a field over each key's last ``window`` events, x included.

    Emits once the key's window is full (or holds ``min_periods`` events); a window of equal
    values gives 0.0, and a NaN or infinite value in the window gives NaN.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> ticks = sd.source("ticks", topic="ticks", key="symbol", schema={"price": "float64"})
    >>> node = ticks.zscore("price", window=3, name="z")
    >>> logic = lookup(node.operator).create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3, 4], key=["a"] * 4, price=[1.0, 2.0, 3.0, 3.0])
    >>> [round(r["value"], 6) for r in logic.process([batch]).to_records()]
    [1.0, 0.57735]
    """

    type_name: ClassVar[str] = "zscore"
    summary: ClassVar[str] = "rolling z-score per key"
    params: ClassVar[tuple[Param, ...]] = (
        Param("field", "str", default="value", doc="input field to normalize"),
        Param("window", "int", minimum=2, maximum=MAX_EVENTS, size=True,
              doc="window length in events, the event included"),
        MIN_PERIODS,
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """``{value: float64}``; the field must be numeric and min_periods within the window."""
        check_min_periods(cls.type_name, params)
        return super().output_schema(params, inputs)

    @classmethod
    def history(cls, params: Mapping[str, Any]) -> int:
        """The last ``window`` events per key."""
        return int(params["window"])

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """A ``RollingLogic`` computing the z-score, fresh or restored from ``snapshot``."""
        return RollingLogic(config, "zscore", snapshot)
