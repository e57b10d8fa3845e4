"""A one-line progress bar for terminals: events, percent of the range, ETA."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["ProgressBar"]

_WIDTH = 30


class ProgressBar:
    """Redraws ``label [#####.....] done/total unit  pct%  ETA m:ss`` in place on a terminal.

    Off (draws nothing) when the stream is not a terminal, unless ``force``.

    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(out, force=True, clock=iter([0.0, 1.0, 2.0]).__next__)
    >>> bar.start("reading", 200, "events")
    >>> bar.advance(50)
    >>> out.getvalue().split("\\r")[-1]
    'reading [#######.......................] 50/200 events   25%  ETA 0:03'
    """

    def __init__(self, stream: TextIO | None = None, *, force: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = force or bool(getattr(self._stream, "isatty", lambda: False)())
        self._clock = clock
        self._label, self._total, self._unit = "", 0, ""
        self._done = 0
        self._started = 0.0
        self._drawn = 0.0

    def start(self, label: str, total: int, unit: str) -> None:
        """Begin a phase of ``total`` units."""
        self._label, self._total, self._unit, self._done = label, max(total, 0), unit, 0
        self._started = self._clock() if self.enabled else 0.0
        self._drawn = 0.0

    def expect(self, amount: int) -> None:
        """Add ``amount`` units to the phase's total (learnt as it goes, e.g. per topic)."""
        self._total += max(amount, 0)

    def advance(self, amount: int) -> None:
        """Count ``amount`` more units done (redraws at most 10 times a second)."""
        self._done += amount
        if not self.enabled:
            return
        now = self._clock()
        if now - self._drawn < 0.1 and self._done < self._total:
            return
        self._drawn = now
        if not self._total:  # unknown size: a count alone
            self._stream.write(f"\r{self._label} {self._done:,} {self._unit}")
            self._stream.flush()
            return
        share = min(1.0, self._done / self._total) if self._total else 1.0
        filled = int(share * _WIDTH)
        elapsed = now - self._started
        remaining = elapsed * (1 - share) / share if share > 0 else 0.0
        minutes, seconds = divmod(int(remaining), 60)
        self._stream.write(f"\r{self._label} [{'#' * filled}{'.' * (_WIDTH - filled)}] "
                           f"{self._done:,}/{self._total:,} {self._unit}  {share:4.0%}  "
                           f"ETA {minutes}:{seconds:02d}")
        self._stream.flush()

    def finish(self) -> None:
        """End the line."""
        if self.enabled:
            self._stream.write("\n")
            self._stream.flush()
