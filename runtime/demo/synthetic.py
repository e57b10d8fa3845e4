"""Synthetic market data: a random walk of prices for N symbols, as batches or a source."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from numba import njit

from streamdag.batch import Batch, encode_keys
from streamdag.connector import SourceChunk

__all__ = ["RandomWalk", "RandomWalkSource"]


@njit(cache=True)
def _walk(last: Any, slots: Any, steps: Any) -> Any:
    # Each symbol's walk continues across batches from its last price.
    prices = np.empty(slots.shape[0])
    for i in range(slots.shape[0]):
        last[slots[i]] += steps[i]
        prices[i] = last[slots[i]]
    return prices


class RandomWalk:
    """Deterministic (seeded) random-walk ticks: ``price`` and ``size`` per symbol.

    >>> walk = RandomWalk(symbols=3, seed=1)
    >>> batch = walk.next_batch(4)
    >>> batch.key.tolist(), batch.ts.tolist()
    ([b'SYM000', b'SYM001', b'SYM002', b'SYM000'], [0, 1000000, 2000000, 3000000])
    """

    def __init__(self, symbols: int = 100, seed: int = 7, step_ns: int = 1_000_000) -> None:
        self.symbols = symbols
        self.keys = encode_keys([f"SYM{i:03d}" for i in range(symbols)])
        self._prices = np.full(symbols, 100.0)
        self._rng = np.random.default_rng(seed)
        self._next = 0
        self._step_ns = step_ns

    def next_batch(self, n: int) -> Batch:
        """The next ``n`` ticks, symbols in round-robin, event times ``step_ns`` apart."""
        index = np.arange(self._next, self._next + n, dtype=np.int64)
        slots = index % self.symbols
        steps = self._rng.normal(0.0, 0.05, n)
        prices = _walk(self._prices, slots, steps)
        sizes = self._rng.integers(1, 100, n).astype(np.float64)
        self._next += n
        return Batch(index * self._step_ns, self.keys[slots], {"price": prices, "size": sizes})


class RandomWalkSource:
    """A SourceReader producing ``total`` random-walk ticks, optionally at ``rate`` events/s."""

    def __init__(
        self,
        total: int,
        *,
        symbols: int = 100,
        rate: float | None = None,
        seed: int = 7,
    ) -> None:
        self.total = total
        self.rate = rate
        self.emitted = 0
        self._walk = RandomWalk(symbols, seed)
        self._started = 0.0

    async def open(self) -> None:
        """Start the clock that paces a rated source."""
        self._started = time.perf_counter()

    async def read(self, max_records: int, linger_s: float) -> SourceChunk:
        """The next batch of ticks (paced to ``rate`` when set)."""
        n = min(max_records, self.total - self.emitted)
        if self.rate is not None:
            due = self._started + (self.emitted + n) / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                # Paced generation: hand out what is due by now, at most after `linger_s`.
                await asyncio.sleep(min(delay, max(linger_s, 0.001)))
                allowed = int((time.perf_counter() - self._started) * self.rate) - self.emitted
                n = max(1, min(n, allowed))
        if n <= 0:
            return SourceChunk(self._walk.next_batch(0), None, finished=True)
        batch = self._walk.next_batch(n)
        self.emitted += n
        return SourceChunk(batch, int(batch.ts[-1]), finished=self.emitted >= self.total)

    def position(self) -> dict[int, int]:
        """Ticks emitted so far."""
        return {0: self.emitted}

    async def close(self) -> None:
        """Nothing to release."""
