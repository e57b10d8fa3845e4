"""Bounded waits of the deployment controller: ending a task for good, and a lock that says
which task holds it when a wait for it grows long.

Before Python 3.12, ``asyncio.wait_for`` drops a cancellation that lands just as its inner
awaitable completes: it returns the inner result instead. A region's checkpoint coordinator
(a loop of ``wait_for`` calls) so cancelled went on checkpointing, and whatever awaited its
end (a controller's ``shutdown`` holding the controller's lock) waited forever.
``cancel_and_wait`` cancels such a task again until it ends, within a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Any

__all__ = ["WatchedLock", "cancel_and_wait", "task_stack"]

_log = logging.getLogger("streamdag.controller")
#: Seconds between two cancellations of a task that went on after the last one.
RECANCEL_AFTER_S = 0.05


async def cancel_and_wait(task: asyncio.Future[Any], timeout_s: float, what: str) -> bool:
    """Cancel ``task`` and wait until it has ended, cancelling it again while it runs on;
    False (logged, with its stack) when it is still running after ``timeout_s``.

    The caller's own cancellation is never swallowed, and what ``task`` ended with (a result,
    an error, its cancellation) is not raised: the caller wanted it gone.

    >>> async def swallows_one_cancellation() -> None:
    ...     try:
    ...         await asyncio.sleep(60)
    ...     except asyncio.CancelledError:
    ...         pass  # as wait_for does when the cancellation lands as its awaitable completes
    ...     await asyncio.sleep(60)
    >>> async def scenario() -> tuple[bool, bool]:
    ...     task = asyncio.ensure_future(swallows_one_cancellation())
    ...     await asyncio.sleep(0)
    ...     return await cancel_and_wait(task, 5.0, "a loop"), task.cancelled()
    >>> asyncio.run(scenario())
    (True, True)
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            stack = task_stack(task) if isinstance(task, asyncio.Task) else repr(task)
            _log.warning("%s did not end within %g s of being cancelled; it is left running:\n%s",
                         what, timeout_s, stack)
            return False
        task.cancel()
        await asyncio.wait([task], timeout=min(left, RECANCEL_AFTER_S))
    if not task.cancelled():
        task.exception()  # retrieved: the caller wanted it gone, whatever it ended with
    return True


def task_stack(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits now: each coroutine of its ``await`` chain, innermost last, then
    what the innermost one awaits (a future, another task).

    ``Task.get_stack`` shows only a suspended task's outermost coroutine; this follows the
    chain down to the call that does not return.
    """
    lines = [f"task {task.get_name()}:"]
    awaited: Any = task.get_coro()
    while awaited is not None and (hasattr(awaited, "cr_frame") or hasattr(awaited, "gi_frame")):
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno}, '
                         f"in {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    if awaited is not None:
        lines.append(f"  awaiting {awaited!r}"[:500])
    return "\n".join(lines)


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
