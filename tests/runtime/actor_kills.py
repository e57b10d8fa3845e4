"""Killing a node actor as a crash does (SIGKILL to its worker process), and waiting on it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import ray


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30.0,
             explain: Callable[[], str] | None = None) -> None:
    """Poll ``condition`` until it holds, or fail after ``timeout_s`` (saying what ``explain``
    finds then, when given)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            found = f"; {explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{found}")
        time.sleep(0.05)


def kill_actor_process(actor: Any) -> None:
    """SIGKILL the worker process hosting ``actor``, then wait until Ray knows it is dead."""
    pid = ray.get(actor.__ray_call__.remote(lambda _: os.getpid()))
    os.kill(pid, signal.SIGKILL)

    def dead() -> bool:
        try:
            ray.get(actor.is_finished.remote(), timeout=5)
        except ray.exceptions.ActorDiedError:
            return True
        except ray.exceptions.RayActorError:
            return False  # unreachable for now, not yet known to be dead
        return False

    wait_for(dead, "Ray to report the killed actor dead")


def is_held(actor: Any) -> bool:
    """Whether a node actor stopped (it holds its input) or finished."""
    return bool(ray.get(actor.is_finished.remote()))
