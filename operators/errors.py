"""Errors raised by operator kernels and declarations."""

from __future__ import annotations

from streamdag.batch import Batch
from streamdag.errors import MissingDataError, ParamError, SchemaMismatchError, StreamdagError

__all__ = [
    "DataGapError",
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


class DataGapError(MissingDataError):
    """A gap under the ``fail`` policy, raised mid-batch with the node's output before it.

    ``emitted`` holds the output for the events before the gap, so what a node emitted before
    failing does not depend on where its input was cut into batches.
    """

    def __init__(self, message: str, emitted: Batch | None = None) -> None:
        super().__init__(message)
        self.emitted = emitted
