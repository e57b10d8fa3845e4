"""A lock of the deployment controller that says which task holds it when a wait for it
grows long (the task ends the controller gives up on are logged by
``streamdag.cancellation.cancel_and_wait``, with a deadline).
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Any

from streamdag.cancellation import task_stack

__all__ = ["WatchedLock"]

_log = logging.getLogger("streamdag.controller")


class WatchedLock:
    """An ``asyncio.Lock`` that logs the holder's stack (``task_stack``) each time a task has
    waited for it another ``warn_after_s`` seconds: a controller stuck in one operation says
    in its log which await does not return, instead of just not answering.

    >>> async def scenario() -> bool:
    ...     lock = WatchedLock("the lock", warn_after_s=30.0)
    ...     async with lock:
    ...         held = lock.locked()
    ...     return held and not lock.locked()
    >>> asyncio.run(scenario())
    True
    """

    def __init__(self, name: str, warn_after_s: float = 30.0) -> None:
        self.name = name
        self.warn_after_s = warn_after_s
        self._lock = asyncio.Lock()
        self._holder: asyncio.Task[Any] | None = None
        self._held_since = 0.0

    def locked(self) -> bool:
        """Whether a task holds the lock."""
        return self._lock.locked()

    async def __aenter__(self) -> None:
        """Acquire the lock, reporting the holder every ``warn_after_s`` of waiting."""
        loop = asyncio.get_running_loop()
        waiter = asyncio.current_task()
        started = time.monotonic()
        timer: asyncio.TimerHandle | None = None

        def report() -> None:
            nonlocal timer
            holder = self._holder
            _log.warning(
                "task %s has waited %.0f s for %s, held for %.0f s by %s",
                waiter.get_name() if waiter is not None else "?", time.monotonic() - started,
                self.name, time.monotonic() - self._held_since,
                task_stack(holder) if holder is not None else "no task (being handed over)")
            timer = loop.call_later(self.warn_after_s, report)

        if self.warn_after_s > 0:
            timer = loop.call_later(self.warn_after_s, report)
        try:
            await self._lock.acquire()
        finally:
            if timer is not None:
                timer.cancel()
        self._holder, self._held_since = waiter, time.monotonic()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        """Release the lock."""
        self._holder = None
        self._lock.release()
