"""The errors the gateway answers with, and the shape of one entry of an error answer.

An error answer is ``{"errors": [{"node", "type", "message"}]}``: one ``ErrorDetail`` per
problem, the node at fault read from the message where the error names one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from streamdag.errors import GraphError, StreamdagError

__all__ = [
    "BodyTooLargeError",
    "ErrorDetail",
    "GatewayRequestError",
    "RouteNotFoundError",
    "SpecRejectedError",
    "UnauthorizedError",
    "UnsupportedMediaTypeError",
]

_NODE_IN_MESSAGE = re.compile(r"^node (['\"])(?P<name>.*?)\1")


class GatewayRequestError(StreamdagError):
    """A request the gateway refuses before it reaches the controller."""

    status: ClassVar[int] = 400


class UnauthorizedError(GatewayRequestError):
    """The request carries no bearer token, or the wrong one."""

    status = 401


class RouteNotFoundError(GatewayRequestError):
    """No route answers this method and path."""

    status = 404


class BodyTooLargeError(GatewayRequestError):
    """The request body is larger than ``gateway.max_body_bytes``."""

    status = 413


class UnsupportedMediaTypeError(GatewayRequestError):
    """The request body is neither JSON nor TOML."""

    status = 415


@dataclass(frozen=True)
class ErrorDetail:
    """One entry of an error answer: the node at fault (None: the request as a whole)."""

    node: str | None
    type: str
    message: str

    @classmethod
    def of(cls, error: StreamdagError, node: str | None = None) -> ErrorDetail:
        """The problem ``error`` reports; the node is read from its message when not given."""
        message = str(error)
        if node is None:
            named = _NODE_IN_MESSAGE.match(message)
            node = named.group("name") if named else None
        return cls(node, type(error).__name__, message)


class SpecRejectedError(GraphError):
    """A submitted spec is malformed or invalid; ``details`` says what, node by node."""

    def __init__(self, details: Sequence[ErrorDetail]) -> None:
        self.details = tuple(details)
        super().__init__("; ".join(detail.message for detail in self.details))
