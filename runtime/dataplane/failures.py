"""Failure causes in one line: what a node, a runner and the lifecycle say went wrong."""

from __future__ import annotations

__all__ = ["failure_cause"]


def failure_cause(exc: BaseException) -> str:
    """A transition's cause from an exception, as ``Type: message`` without Ray's wrapping.

    >>> failure_cause(ValueError("window must be positive"))
    'ValueError: window must be positive'
    """
    cause = getattr(exc, "cause", None)  # a Ray task error wraps the actor's own exception
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {' '.join(str(cause).split())}"[:1000]
    # Ray's own errors put the message first and a long description after it.
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:1000]
