"""Stopping asyncio tasks for sure, on Python 3.11 too.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives just as the awaited
call completes (fixed in 3.12), and aiokafka awaits through it; a loop cancelled at that
moment goes on running, and whoever waits for it waits forever. ``cancel_and_wait`` cancels
again until the task has ended, or, given a deadline, gives up and logs where it hangs
(``task_stack``).

>>> import asyncio
>>> async def stubborn():
...     for _ in range(3):  # swallows two cancellations, as a racing wait_for would
...         try:
...             await asyncio.sleep(10)
...         except asyncio.CancelledError:
...             pass
>>> async def main():
...     task = asyncio.ensure_future(stubborn())
...     await asyncio.sleep(0)
...     await cancel_and_wait(task)
...     return task.cancelled() or task.done()
>>> asyncio.run(main())
True
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["cancel_and_wait", "task_stack"]

_log = logging.getLogger(__name__)

#: Seconds between repeated cancellations of a task that is still running.
_RECANCEL_EVERY_S = 0.05


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None, timeout_s: float | None = None,
                          what: str = "a task") -> bool:
    """Cancel ``tasks`` (None and finished ones are skipped) and return once all have ended:
    True. With ``timeout_s``, give up on those still running after it: False, and each one's
    stack (``task_stack``) is logged as ``what``'s.

    The caller's own cancellation is never swallowed, and what a task ended with (a result,
    an error, its cancellation) is not raised: the caller wanted it gone.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    pending = {task for task in tasks if task is not None and not task.done()}
    while pending:
        left = _RECANCEL_EVERY_S if deadline is None else deadline - loop.time()
        if left <= 0:
            for task in pending:
                stack = task_stack(task) if isinstance(task, asyncio.Task) else repr(task)
                _log.warning("%s did not end within %g s of being cancelled; it is left "
                             "running:\n%s", what, timeout_s, stack)
            return False
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(left, _RECANCEL_EVERY_S))
    for ended in tasks:
        if ended is not None and not ended.cancelled():
            ended.exception()  # retrieved: the caller wanted it gone, whatever it ended with
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
