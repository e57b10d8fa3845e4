"""BackgroundLoop: async work for sync callers, closed with nothing left pending."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from runtime.runners.recovery import BackgroundLoop


def test_close_lets_every_task_unwind_before_the_loop_closes(
        caplog: pytest.LogCaptureFixture) -> None:
    loop = BackgroundLoop("test-background")
    unwound: list[str] = []
    started = threading.Event()

    async def child() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            unwound.append("child")

    async def parent() -> None:  # like a coordinator: it stops the task it started
        task = asyncio.ensure_future(child())
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            task.cancel()
            unwound.append("parent")

    running = loop.submit(parent())
    assert started.wait(10)
    running.cancel()  # what RunningGraph does: the task itself is still cancelling
    loop.close()
    gc.collect()
    assert sorted(unwound) == ["child", "parent"]
    assert loop.loop.is_closed()
    assert "Task was destroyed but it is pending" not in caplog.text


def test_a_closed_loop_closes_again_quietly() -> None:
    loop = BackgroundLoop("test-background")
    assert loop.run(asyncio.sleep(0, result=7)) == 7
    loop.close()
    loop.close()
    assert loop.loop.is_closed()
