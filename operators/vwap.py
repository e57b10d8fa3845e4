"""Volume-weighted average price per key over the last N events.

Price and size of the last ``window`` events live in the node's ``NodeCache`` ring (two
features). Running sums of price x size and of size are Neumaier-compensated, like the rolling
sums (``operators.rolling``): a trade leaving the window leaves no trace and error
does not accumulate over the stream. A NaN or infinite price or size is kept out of the sums,
and while one is in the window the result is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from numba import njit

from operators.keyed_state import (
    MIN_PERIODS,
    NUMERIC_TYPES,
    VALUE_SCHEMA,
    KeyedState,
    KeyedStateLogic,
    StateArray,
    check_min_periods,
    compensated_add,
    float_column,
    min_periods_of,
    rows_emitted,
)
from streamdag.batch import Batch
from streamdag.operator import NodeConfig, OperatorDef, OperatorLogic, require_fields
from streamdag.operator_registry import register
from streamdag.params import MAX_EVENTS, Param
from streamdag.schema import Schema

__all__ = ["VwapDef", "VwapLogic"]

# Columns of the per-key ``sums`` (float64) and ``tally`` (int64) arrays; _BAD_AFTER holds
# 1 + the sequence number of the latest trade with a non-finite price, size or product.
_NOTIONAL, _NOTIONAL_COMP, _SIZE, _SIZE_COMP = 0, 1, 2, 3
_SEQUENCE, _BAD_AFTER = 0, 1
_PRICE, _QUANTITY = 0, 1


@njit(cache=True, inline="always")
def _slide_trade(sums: Any, s: int, price: float, size: float, sign: float) -> None:
    # A trade with a non-finite price, size or notional never enters the sums.
    if math.isfinite(price * size) and math.isfinite(size):
        sums[s, _NOTIONAL], sums[s, _NOTIONAL_COMP] = compensated_add(
            sums[s, _NOTIONAL], sums[s, _NOTIONAL_COMP], sign * price * size)
        sums[s, _SIZE], sums[s, _SIZE_COMP] = compensated_add(
            sums[s, _SIZE], sums[s, _SIZE_COMP], sign * size)


@njit(cache=True)
def _vwap_kernel(window: int, min_periods: int, slots: Any, ts: Any, prices: Any, sizes: Any,
                 times: Any, values: Any, head: Any, count: Any, sums: Any, tally: Any, out: Any,
                 emitted: Any) -> None:
    for r in range(slots.shape[0]):
        s, price, size = slots[r], prices[r], sizes[r]
        h, n = head[0, s], count[0, s]
        if n == window:
            _slide_trade(sums, s, values[0, s, h, _PRICE], values[0, s, h, _QUANTITY], -1.0)
        n = n + 1 if n < window else n
        count[0, s] = n
        times[0, s, h] = ts[r]
        values[0, s, h, _PRICE] = price
        values[0, s, h, _QUANTITY] = size
        head[0, s] = h + 1 if h + 1 < window else 0
        _slide_trade(sums, s, price, size, 1.0)
        sequence = tally[s, _SEQUENCE] + 1
        tally[s, _SEQUENCE] = sequence
        # An unconditional select: a store under a branch slows the whole loop down.
        bad = not (math.isfinite(price * size) and math.isfinite(size))
        tally[s, _BAD_AFTER] = sequence if bad else tally[s, _BAD_AFTER]
        total_size = sums[s, _SIZE] + sums[s, _SIZE_COMP]
        nan = tally[s, _BAD_AFTER] > sequence - n or total_size == 0.0
        emitted[r] = n >= min_periods
        out[r] = np.nan if nan else (sums[s, _NOTIONAL] + sums[s, _NOTIONAL_COMP]) / total_size


class VwapLogic(KeyedStateLogic):
    """Runtime of ``vwap``: a price/size ring and compensated sums per key."""

    def __init__(self, config: NodeConfig, snapshot: bytes | None = None) -> None:
        self._name = config.name
        self._price = str(config.params["price"])
        self._size = str(config.params["size"])
        self._window = int(config.params["window"])
        self._min_periods = min_periods_of(config.params)
        self._state = KeyedState(inputs=1, period=self._window, features=2,
                                 per_key={"sums": StateArray(4, np.float64, 0.0),
                                          "tally": StateArray(2, np.int64, 0)},
                                 snapshot=snapshot)

    def update(
        self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64],
        prices: npt.NDArray[np.float64], sizes: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
        """Fold trades (keys already mapped by ``slots``) in; each one's VWAP and emit flag."""
        state, cache = self._state, self._state.cache
        state.check_slots(slots)
        out = np.empty(len(slots), dtype=np.float64)
        emitted = np.empty(len(slots), dtype=np.bool_)
        _vwap_kernel(self._window, self._min_periods, slots, ts, prices, sizes, cache.times,
                     cache.values, cache.head, cache.count, state.per_key["sums"],
                     state.per_key["tally"], out, emitted)
        return out, emitted

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The VWAP for every trade whose key's window is full, at that trade's ts and key."""
        batch = inputs[0]
        values, emitted = self.update(
            self.slots(batch.key), batch.ts, float_column(batch, self._price, self._name),
            float_column(batch, self._size, self._name))
        return rows_emitted(batch, values, emitted)


@register
class VwapDef(OperatorDef):
    """sum(price x size) / sum(size) over each key's last ``window`` events; emits once full.

    With ``min_periods`` it emits from the key's ``min_periods``-th trade on, over fewer.

    The result is NaN while a NaN or infinite price or size is in the window, and when the
    window's sizes sum to 0.

    >>> import streamdag as sd
    >>> from streamdag.operator_registry import lookup
    >>> trades = sd.source("trades", topic="trades", key="symbol",
    ...                    schema={"price": "float64", "size": "float64"})
    >>> node = trades.vwap(window=2, name="v")
    >>> logic = lookup(node.operator).create(node.config())
    >>> batch = sd.Batch.from_columns(ts=[1, 2, 3], key=["a"] * 3, price=[10.0, 20.0, 40.0],
    ...                               size=[1.0, 3.0, 1.0])
    >>> logic.process([batch]).to_records()
    [{'ts': 2, 'key': 'a', 'value': 17.5}, {'ts': 3, 'key': 'a', 'value': 25.0}]
    """

    type_name: ClassVar[str] = "vwap"
    keys_apart: ClassVar[bool] = True  # per-key state, moved by the key's events alone
    summary: ClassVar[str] = "volume-weighted average price per key over a count window"
    params: ClassVar[tuple[Param, ...]] = (
        Param("price", "str", default="price", doc="input field holding the price"),
        Param("size", "str", default="size", doc="input field holding the traded size"),
        Param("window", "int", minimum=1, maximum=MAX_EVENTS, size=True,
              doc="window length in events"),
        MIN_PERIODS,
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """``{value: float64}``; price and size must be numeric fields."""
        check_min_periods(cls.type_name, params)
        require_fields(cls.type_name, inputs[0], [params["price"], params["size"]],
                       NUMERIC_TYPES)
        return VALUE_SCHEMA

    @classmethod
    def history(cls, params: Mapping[str, Any]) -> int:
        """The last ``window`` trades per key."""
        return int(params["window"])

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """A ``VwapLogic``, fresh or restored from ``snapshot``."""
        return VwapLogic(config, snapshot)
