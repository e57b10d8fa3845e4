"""Whether a region's sources went quiet, so its coordinator checkpoints at once.

An exactly-once sink publishes an epoch only when a checkpoint completes. While data flows, a
checkpoint every ``interval_s`` bounds how long output waits. When the data stops, the last
output is released once the sources go idle (their watermark then passes it) and would wait for
the next interval on top: up to a whole ``interval_s`` for nothing. So each source tells its
coordinator when it goes quiet (``QuietWatch``, in the source's process), and the coordinator
starts a checkpoint as soon as every source of its region is idle and one of them emitted
something since its last barrier (``QuietSources``). That barrier follows the source's IDLE on
every edge, so whatever the idleness released is in the epoch the checkpoint closes.

A checkpoint started early is an ordinary one (one in flight, same timeout, same ids); the
next interval counts from its end.

>>> watch = QuietWatch()
>>> watch.read(records=3, idle=False, barrier=None)
>>> watch.read(records=0, idle=True, barrier=None)
>>> watch.state
SourceQuiet(idle=True, news=True, barrier=0)
>>> watch.read(records=0, idle=True, barrier=7)
>>> watch.state
SourceQuiet(idle=True, news=False, barrier=7)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

__all__ = ["QUIET_POLL_S", "QuietSources", "QuietWatch", "SourceQuiet"]

_log = logging.getLogger("streamdag.checkpoints")

#: The longest a coordinator's question to a source waits for a change before it is answered
#: anyway (a question left behind by a stopped coordinator ends by then).
QUIET_POLL_S = 5.0


@dataclass(frozen=True)
class SourceQuiet:
    """What a source last did, as far as checkpoints care."""

    #: Every partition of the source is idle (its last read said so).
    idle: bool = False
    #: Records, or the change to idle (which releases what the watermark held), went out
    #: after the source's last barrier: a checkpoint now would complete output.
    news: bool = False
    #: The id of the last barrier the source emitted (0: none yet).
    barrier: int = 0


class QuietWatch:
    """A source's ``SourceQuiet``, updated after each read; its coordinator waits on changes."""

    def __init__(self) -> None:
        self.state = SourceQuiet()
        self._changed = asyncio.Event()

    def read(self, *, records: int, idle: bool, barrier: int | None) -> None:
        """The source emitted a read of ``records`` records and its idleness, then
        ``Barrier(barrier)`` when not None (which covers everything emitted before it)."""
        state = self.state
        if barrier is not None:
            new = SourceQuiet(idle, False, barrier)
        else:
            news = state.news or records > 0 or (idle and not state.idle)
            new = SourceQuiet(idle, news, state.barrier)
        if new != state:
            self.state = new
            self._changed.set()
            self._changed = asyncio.Event()

    async def changed(self, known: SourceQuiet | None,
                      timeout_s: float = QUIET_POLL_S) -> SourceQuiet:
        """The state once it differs from ``known`` (at once if it does), or after
        ``timeout_s`` whatever it is."""
        if self.state == known:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout_s)
        return self.state


#: Asks source ``key`` for its state once it differs from the one given (a long poll).
AskQuiet = Callable[[str, SourceQuiet | None], Awaitable[SourceQuiet]]


class QuietSources:
    """What a coordinator knows of its region's sources: when all of them are quiet.

    One long poll per source runs from ``start`` to ``stop``; a source that cannot be asked
    (its actor died: the region recovers) is not quiet, and asked again ``retry_s`` later.
    """

    def __init__(self, sources: Sequence[str], ask: AskQuiet, *, retry_s: float = 1.0) -> None:
        self._sources = list(sources)
        self._ask = ask
        self._retry_s = retry_s
        self._states: dict[str, SourceQuiet] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: When (``time.time()``) every source was last heard to have gone idle; 0: never.
        self.quiet_at = 0.0

    def start(self) -> None:
        """Start asking every source."""
        self._tasks = [asyncio.ensure_future(self._follow(key)) for key in self._sources]

    def stop(self) -> None:
        """Stop asking: the questions in flight are cancelled, not waited for (a coordinator
        cancelled as its loop closes must end without waiting for anything)."""
        for task in self._tasks:
            if not task.done() and not task.get_loop().is_closed():
                task.cancel()
        self._tasks = []

    def quiet(self, last_barrier: int) -> bool:
        """Whether every source is idle, has emitted ``Barrier(last_barrier)`` (the last one
        asked for), and one of them emitted something since."""
        states = [self._states.get(key) for key in self._sources]
        return (bool(states) and all(s is not None and s.idle and s.barrier >= last_barrier
                                     for s in states)
                and any(s is not None and s.news for s in states))

    async def until_quiet(self, last_barrier: int) -> None:
        """Return once ``quiet(last_barrier)``."""
        while not self.quiet(last_barrier):
            await self._changed.wait()

    async def _follow(self, key: str) -> None:
        known: SourceQuiet | None = None
        while True:
            try:
                state = await self._ask(key, known)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dead source's region recovers, with a new coordinator
                _log.debug("source %s cannot say whether it is quiet: %s", key, exc)
                await asyncio.sleep(self._retry_s)
                continue
            if state != known:
                was_idle = self._all_idle()
                known = self._states[key] = state
                if not was_idle and self._all_idle():
                    self.quiet_at = time.time()
                self._changed.set()
                self._changed = asyncio.Event()

    def _all_idle(self) -> bool:
        return all(key in self._states and self._states[key].idle for key in self._sources)
