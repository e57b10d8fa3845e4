"""Kafka topic names: the rules a broker enforces, checked when a graph is built."""

from __future__ import annotations

import string

from streamdag.errors import TopicNameError

__all__ = [
    "MAX_TOPIC_LENGTH",
    "TOPIC_RULES",
    "shown_topic",
    "topic_name_problem",
    "validate_topic_name",
]

#: Longest topic name Kafka accepts.
MAX_TOPIC_LENGTH = 249
#: Kafka's rules, in words, for messages.
TOPIC_RULES = (
    f"1 to {MAX_TOPIC_LENGTH} characters of a-z, A-Z, 0-9, '.', '_' and '-', "
    "other than '.' and '..'"
)

_LEGAL = frozenset(string.ascii_letters + string.digits + "._-")
_SHOWN = 40


def topic_name_problem(name: object) -> str | None:
    """Why ``name`` is not a legal Kafka topic name, or None when it is one.

    >>> topic_name_problem("market.ticks") is None
    True
    >>> topic_name_problem("../../etc")
    "'/' is not allowed in a topic name"
    """
    if not isinstance(name, str):
        return f"a topic name is a string, not {type(name).__name__}"
    if not name:
        return "a topic name cannot be empty"
    if name in (".", ".."):
        return f"{name!r} alone is not allowed as a topic name"
    if len(name) > MAX_TOPIC_LENGTH:
        return f"it has {len(name)} characters, over Kafka's limit of {MAX_TOPIC_LENGTH}"
    illegal = list(dict.fromkeys(c for c in name if c not in _LEGAL))
    if illegal:
        listed = ", ".join(repr(c) for c in illegal)
        verb = "is" if len(illegal) == 1 else "are"
        return f"{listed} {verb} not allowed in a topic name"
    return None


def shown_topic(name: object) -> str:
    """``repr(name)``, cut to its first characters when it is very long."""
    text = repr(name)
    return text if len(text) <= _SHOWN + 2 else f"{text[:_SHOWN]}...' ({len(str(name))} characters)"


def validate_topic_name(name: object) -> str:
    """``name`` when it is a legal Kafka topic name; TopicNameError saying why not otherwise.

    >>> validate_topic_name("")
    Traceback (most recent call last):
    ...
    streamdag.errors.TopicNameError: topic '': a topic name cannot be empty; a Kafka topic name \
is 1 to 249 characters of a-z, A-Z, 0-9, '.', '_' and '-', other than '.' and '..'
    """
    problem = topic_name_problem(name)
    if problem is not None:
        raise TopicNameError(
            f"topic {shown_topic(name)}: {problem}; a Kafka topic name is {TOPIC_RULES}"
        )
    assert isinstance(name, str)
    return name
