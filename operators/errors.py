"""Errors raised by operator kernels and declarations."""

from __future__ import annotations

from streamdag.errors import ParamError, SchemaMismatchError, StreamdagError

__all__ = [
    "SnapshotCorruptError",
    "SnapshotMismatchError",
    "UnknownFieldError",
    "UserFunctionOutputError",
]


class SnapshotMismatchError(StreamdagError):
    """A snapshot belongs to another node configuration (other inputs, period or features)."""


class UnknownFieldError(SchemaMismatchError, ParamError):
    """An expression names a field (or var) its node does not have.

    It is both a schema mismatch (the input lacks the field) and a bad parameter (the expression
    is wrong), so either ``except`` clause catches it.
    """


class UserFunctionOutputError(StreamdagError):
    """A user function returned something other than one float per event."""


class SnapshotCorruptError(StreamdagError):
    """A snapshot's bytes do not describe a valid state (e.g. a key table with duplicate keys)."""
