"""Errors raised by the connectors: the broker, topics, sources, sinks and codecs."""

from __future__ import annotations

from streamdag.errors import StreamdagError

__all__ = [
    "BrokerError",
    "BrokerNotRunningError",
    "BrokerStartError",
    "ConnectorConfigError",
    "ConnectorError",
    "EncodeError",
    "ProduceError",
    "TopicError",
]


class ConnectorError(StreamdagError):
    """Root of the errors raised by ``connectors``."""


class ConnectorConfigError(ConnectorError):
    """A source or sink config holds a value that cannot work."""


class BrokerError(ConnectorError):
    """The embedded broker could not be managed as asked."""


class BrokerStartError(BrokerError):
    """The embedded broker did not start or did not answer before its deadline."""


class BrokerNotRunningError(BrokerError):
    """No embedded broker is running for the given state directory."""


class TopicError(ConnectorError):
    """A topic is missing, or exists with a partition count other than the one required."""


class EncodeError(ConnectorError):
    """A batch cannot be encoded for a sink (e.g. a key that is not UTF-8 for JSON)."""

    @classmethod
    def column_type(cls, name: str, dtype: object) -> EncodeError:
        """The error for a column a sink cannot write (not float64, int64 or bool)."""
        return cls(f"column {name!r} has dtype {dtype}; a sink writes float64, int64 and bool "
                   "columns only")


class ProduceError(ConnectorError):
    """Records could not be delivered to Kafka after every allowed attempt.

    The undelivered records stay pending in the writer, so a later ``flush`` retries them.
    """

    def __init__(
        self, topic: str, partition: int, attempts: int, pending: int, cause: BaseException
    ) -> None:
        self.topic = topic
        self.partition = partition
        self.attempts = attempts
        self.pending = pending
        self.cause = cause
        super().__init__(
            f"could not deliver to {topic}[{partition}] after {attempts} attempt(s): "
            f"{type(cause).__name__}: {cause}; {pending} record(s) stay pending. Check that the "
            "broker is reachable and the topic exists, then flush again."
        )
