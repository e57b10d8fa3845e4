"""Failure causes in one line: what a node, a runner and the lifecycle say went wrong."""

from __future__ import annotations

from streamdag.errors import StreamdagError

__all__ = ["NodeHeldError", "SubscriberFailedError", "failure_cause", "followed_a_failure"]


class SubscriberFailedError(StreamdagError):
    """A node stopped because a subscriber did not take a push (it died, failed or holds)."""


class NodeHeldError(StreamdagError):
    """A node holds its input: it, or the region it belongs to, failed."""


def followed_a_failure(error: BaseException) -> bool:
    """Whether ``error`` only says that a node stopped because another one failed first.

    >>> followed_a_failure(NodeHeldError("node 'a' refused a push")), followed_a_failure(
    ...     ValueError("window must be positive"))
    (True, False)
    """
    cause = getattr(error, "cause", None)  # a Ray task error wraps the actor's own exception
    own = cause if isinstance(cause, BaseException) else error
    return isinstance(own, SubscriberFailedError | NodeHeldError)


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
