"""Failpoints: named steps of the checkpoint protocol where a test makes the next pass fail.

A test arms a step (in this process, or in a node actor's through ``NodeHost.arm_failpoint``);
the next time the protocol passes that step, it fails there once, as a crash at that moment
would: the node (or the coordinator) fails, and the region must recover.

>>> arm("mid_publish")
>>> try:
...     hit("mid_publish")
... except InjectedFaultError as fault:
...     print(fault)
failpoint mid_publish: injected fault
>>> hit("mid_publish")  # once only
"""

from __future__ import annotations

from streamdag.errors import StreamdagError

__all__ = ["STEPS", "InjectedFaultError", "arm", "armed", "disarm_all", "hit"]

#: Every step a test can arm, in protocol order.
STEPS = (
    "before_snapshot",  # a node, as its barrier is aligned, before it copies its state
    "after_persist_before_ack",  # a node whose snapshot is persisted, before it acknowledges
    "after_manifest_before_publish",  # the coordinator, once the manifest is written
    "mid_publish",  # a sink, half of an epoch published
)

_armed: set[str] = set()


class InjectedFaultError(StreamdagError):
    """A failpoint a test armed was hit."""


def arm(step: str) -> None:
    """Make the next pass through ``step`` (one of ``STEPS``) fail."""
    if step not in STEPS:
        raise StreamdagError(f"no failpoint {step!r}; the steps are {list(STEPS)}")
    _armed.add(step)


def armed(step: str) -> bool:
    """Whether ``step`` is armed (without disarming it)."""
    return step in _armed


def disarm_all() -> None:
    """Disarm every step (between tests)."""
    _armed.clear()


def hit(step: str) -> None:
    """Fail here, once, if ``step`` is armed."""
    if step in _armed:
        _armed.discard(step)
        raise InjectedFaultError(f"failpoint {step}: injected fault")
