"""A window node's user function: the events it folded, kept so the function sees each window's
values, and the function applied to every emitted window (the trusted SDK path).

Events are logged a batch at a time (numpy, no per-event Python); an emitted window's values
are its key's logged events in ``[start, end)`` (an early update by event time: up to its
boundary) up to the event that emitted it, in event-time order (ties by arrival). The function
is called once per emitted window and returns a number.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from operators.errors import UserFunctionOutputError
from operators.window_state import BOUND, FIRST, FIRST_SEQ, LAST_SEQ, SIDE, SLOT, START
from streamdag.code_freezing import describe_function, freeze_function
from streamdag.codehash import frozen_code_hash
from streamdag.errors import GraphError
from streamdag.identity import canonical_encode
from streamdag.operator import NodeConfig
from streamdag.operator_registry import lookup

__all__ = ["ValueLog", "WindowFunction", "window_function_code_hash"]

_CODE_SCHEME = "streamdag-window-function/1"


def window_function_code_hash(operator: str, function: Callable[..., Any]
                              ) -> tuple[Callable[..., Any], str]:
    """The frozen copy of ``function`` a node runs, and the node's code hash over it and the
    operator's own code (so a changed function or operator never shares a node id)."""
    frozen = freeze_function(function)
    payload = canonical_encode([_CODE_SCHEME, lookup(operator).code_hash(),
                                frozen_code_hash(frozen)])
    return frozen, hashlib.sha256(payload).hexdigest()


class WindowFunction:
    """The user function of a window node and the column it fills, or none."""

    def __init__(self, config: NodeConfig) -> None:
        self.output = str(config.params.get("function_output", ""))
        self.function = config.function
        if bool(self.output) != (self.function is not None):
            raise GraphError(
                f"node {config.name!r}: {config.operator} has function_output="
                f"{self.output!r} but {'no' if self.function is None else 'a'} user function; "
                "build it with the SDK, passing the function in agg= (e.g. agg=['mean', f])"
            )

    def __bool__(self) -> bool:
        return self.function is not None

    def apply(self, log: ValueLog, meta: npt.NDArray[np.int64],
              acc: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """The function over each emitted row's values (a side record: its one event)."""
        assert self.function is not None
        out = np.empty(len(meta), dtype=np.float64)
        slots, ts, seqs, values = log.sorted()
        for r in range(len(meta)):
            if meta[r, FIRST_SEQ] == SIDE:
                window = acc[r : r + 1, FIRST]
            else:
                lo, hi = np.searchsorted(slots, meta[r, SLOT], "left"), np.searchsorted(
                    slots, meta[r, SLOT], "right")
                a = lo + int(np.searchsorted(ts[lo:hi], meta[r, START], "left"))
                b = lo + int(np.searchsorted(ts[lo:hi], meta[r, BOUND], "left"))
                window = values[a:b][seqs[a:b] <= meta[r, LAST_SEQ]]
            window.flags.writeable = False
            result = self.function(window)
            try:
                out[r] = float(result)
            except (TypeError, ValueError):
                raise UserFunctionOutputError(
                    f"window function {describe_function(self.function)} returned "
                    f"{type(result).__name__} for a window of {len(window)} value(s); expected "
                    "a number"
                ) from None
        return out


class ValueLog:
    """The events a window node folded: key slot, ts, arrival and value, in arrival order."""

    def __init__(self, arrays: Mapping[str, npt.NDArray[Any]] | None = None) -> None:
        if arrays is None or "log_slot" not in arrays:
            self.slot = np.empty(0, dtype=np.int64)
            self.ts = np.empty(0, dtype=np.int64)
            self.seq = np.empty(0, dtype=np.int64)
            self.value = np.empty(0, dtype=np.float64)
        else:
            self.slot, self.ts = arrays["log_slot"], arrays["log_ts"]
            self.seq, self.value = arrays["log_seq"], arrays["log_value"]
        self._sorted: tuple[npt.NDArray[Any], ...] | None = None

    def add(self, slots: npt.NDArray[np.int64], ts: npt.NDArray[np.int64], first_seq: int,
            values: npt.NDArray[np.float64], kept: npt.NDArray[np.bool_]) -> None:
        """Log the events where ``kept`` holds (those folded into some window)."""
        seqs = np.arange(first_seq, first_seq + len(slots), dtype=np.int64)
        self.slot = np.concatenate([self.slot, slots[kept]])
        self.ts = np.concatenate([self.ts, ts[kept]])
        self.seq = np.concatenate([self.seq, seqs[kept]])
        self.value = np.concatenate([self.value, values[kept]])
        self._sorted = None

    def forget_before(self, bound: int) -> None:
        """Forget events with ts < ``bound``: every window holding them is gone."""
        keep = self.ts >= bound
        if not keep.all():
            self.slot, self.ts = self.slot[keep], self.ts[keep]
            self.seq, self.value = self.seq[keep], self.value[keep]
            self._sorted = None

    def sorted(self) -> tuple[npt.NDArray[Any], ...]:
        """(slot, ts, seq, value) ordered by key slot, ts, arrival."""
        if self._sorted is None:
            order = np.lexsort((self.seq, self.ts, self.slot))
            self._sorted = (self.slot[order], self.ts[order], self.seq[order],
                            self.value[order])
        return self._sorted

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The log as named arrays, for a snapshot."""
        return {"log_slot": self.slot, "log_ts": self.ts, "log_seq": self.seq,
                "log_value": self.value}
