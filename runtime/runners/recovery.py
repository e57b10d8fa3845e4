"""What the runners share to recover a failed region: the restart policy, a background loop.

>>> now = [0.0]
>>> policy = RestartPolicy(CheckpointSettings(max_failures=2, failure_window_s=60, backoff_s=1,
...                                           max_backoff_s=3), clock=lambda: now[0])
>>> policy.next_delay("boom", completed_checkpoints=0), policy.next_delay("boom", 0)
(1.0, 2.0)
>>> try:  # a checkpoint completed since the last restart: the backoff starts over, but ...
...     policy.next_delay("boom", completed_checkpoints=1)
... except GraphFailedError as gave_up:
...     print(gave_up)
boom (3 failures within 60 s: more than checkpoint.max_failures = 2, so the graph is not
restarted again)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from streamdag.config import CheckpointSettings
from streamdag.errors import StreamdagError

__all__ = ["BackgroundLoop", "GraphFailedError", "RestartPolicy"]

T = TypeVar("T")


class GraphFailedError(StreamdagError):
    """A running graph stopped before its outputs finished: a node failed or its actor died,
    and it was not (or could no longer be) recovered."""


class RestartPolicy:
    """Backoff between restarts (doubling up to a maximum), and when to give up.

    The backoff doubles with every failure since the graph last ran stably (a checkpoint
    completed after its restart), as Flink's exponential-delay strategy resets; every failure
    within the window counts toward ``max_failures`` regardless.
    """

    def __init__(self, settings: CheckpointSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._failures: list[float] = []
        #: Failures since the graph last ran stably.
        self._streak = 0
        #: The graph's completed checkpoints at the last failure.
        self._completed_at_failure = 0

    def next_delay(self, cause: str, completed_checkpoints: int) -> float:
        """Seconds to wait before restarting after a failure caused by ``cause``, given how
        many checkpoints the graph has completed in all (more than at the last failure: it
        ran stably, and the backoff starts over).

        Raises GraphFailedError once more than ``max_failures`` fell within the window.
        """
        now = self._clock()
        window = self.settings.failure_window_s
        self._failures = [at for at in self._failures if now - at <= window] + [now]
        if len(self._failures) > self.settings.max_failures:
            raise GraphFailedError(
                f"{cause} ({len(self._failures)} failures within {window:g} s: more than "
                f"checkpoint.max_failures = {self.settings.max_failures}, so the graph is not "
                "restarted again)")
        if completed_checkpoints > self._completed_at_failure:
            self._streak = 0
        self._completed_at_failure = completed_checkpoints
        self._streak += 1
        delay = self.settings.backoff_s * 2 ** (self._streak - 1)
        return float(min(delay, self.settings.max_backoff_s))


class BackgroundLoop:
    """An event loop in a thread of its own: async work (the coordinator) for sync callers."""

    def __init__(self, name: str = "streamdag-background") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` on the loop; its future can be waited for or cancelled."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and wait for its result."""
        return self.submit(coroutine).result()

    def close(self, timeout_s: float = 10.0) -> None:
        """Cancel what still runs on the loop, then stop the loop and its thread.

        Steps:
        1. Every task still there is cancelled and left to unwind (its ``finally`` blocks,
           the tasks it stops), as ``asyncio.run`` does, for up to ``timeout_s``: a task
           closed unfinished would be lost with a "Task was destroyed but it is pending!".
        2. The loop stops, its thread ends, and the loop is closed.
        """
        if self.loop.is_closed():
            return
        # Step 1: cancel and unwind.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_cancel_all_tasks(), self.loop).result(timeout_s)
        # Step 2: stop.
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=timeout_s)
        self.loop.close()


async def _cancel_all_tasks() -> None:
    """Cancel every other task of the running loop and wait until each has ended."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
