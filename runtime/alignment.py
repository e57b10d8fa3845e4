"""Event-time alignment of a multi-input node's inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streamdag.batch import Batch
from streamdag.schema import Schema

__all__ = ["InputAligner"]

_END = np.iinfo(np.int64).max


class InputAligner:
    """Buffers each input and releases, for all inputs at once, the events below a common bound.

    An input's frontier is the larger of its watermark and the newest event time it delivered;
    events with ``ts`` below the smallest frontier are final on every input, so they are released
    together, each input's part sorted by time. An ended input no longer holds others back.

    >>> aligner = InputAligner([Schema.of(value="float64")] * 2)
    >>> aligner.add(0, Batch.from_columns(ts=[1, 2], key=["a", "a"], value=[1.0, 2.0]))
    >>> aligner.release() is None
    True
    >>> aligner.add(1, Batch.from_columns(ts=[1, 2], key=["a", "a"], value=[5.0, 6.0]))
    >>> [b.ts.tolist() for b in aligner.release()]
    [[1], [1]]
    """

    def __init__(self, schemas: Sequence[Schema]) -> None:
        self._schemas = list(schemas)
        self._pending: list[list[Batch]] = [[] for _ in schemas]
        self._frontier = [np.iinfo(np.int64).min for _ in schemas]
        self._ended = [False for _ in schemas]

    @property
    def buffered(self) -> int:
        """Events held back, over all inputs."""
        return sum(len(b) for parts in self._pending for b in parts)

    def add(self, input_index: int, batch: Batch) -> None:
        """Buffer a batch of input ``input_index``."""
        if len(batch):
            self._pending[input_index].append(batch)
            self._frontier[input_index] = max(self._frontier[input_index], int(batch.ts.max()))

    def advance(self, input_index: int, watermark: int) -> None:
        """Input ``input_index`` promises no more events below ``watermark``."""
        self._frontier[input_index] = max(self._frontier[input_index], watermark)

    def end(self, input_index: int) -> None:
        """Input ``input_index`` has ended."""
        self._ended[input_index] = True
        self._frontier[input_index] = _END

    def bound(self) -> int:
        """Events with ``ts`` below this are releasable (the end bound once all inputs ended)."""
        if all(self._ended):
            return _END
        return min(self._frontier)

    def release(self) -> list[Batch] | None:
        """The releasable events of every input (same time range), or None when there are none."""
        bound = self.bound()
        released: list[Batch] = []
        any_events = False
        for index, parts in enumerate(self._pending):
            if not parts:
                released.append(Batch.empty(self._schemas[index]))
                continue
            whole = Batch.concat(parts).sorted_by_time()
            if bound == _END:
                cut = len(whole)
            else:
                cut = int(np.searchsorted(whole.ts, bound, side="left"))
            released.append(whole.slice(0, cut))
            self._pending[index] = [whole.slice(cut, len(whole))] if cut < len(whole) else []
            any_events = any_events or cut > 0
        return released if any_events else None
