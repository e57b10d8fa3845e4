"""Stopping asyncio tasks for sure, on Python 3.11 too.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives just as the awaited
call completes (fixed in 3.12), and aiokafka awaits through it; a loop cancelled at that
moment goes on running, and whoever waits for it waits forever. ``cancel_and_wait`` cancels
again until the task has ended.

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
from typing import Any

__all__ = ["cancel_and_wait"]

#: Seconds between repeated cancellations of a task that is still running.
_RECANCEL_EVERY_S = 0.05


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (None and finished ones are skipped) and return once all have ended."""
    pending = {task for task in tasks if task is not None and not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=_RECANCEL_EVERY_S)
