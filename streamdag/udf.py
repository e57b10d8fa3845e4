"""User function nodes: a decorator that turns a function of window views into an operator."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from typing import Any

from streamdag.codehash import function_code_hash
from streamdag.errors import CodeHashError, GraphError
from streamdag.graph import Column, Node, make_node
from streamdag.operator import MissingPolicy

__all__ = ["UserFunction", "udf"]


class UserFunction:
    """A user function ready to be applied to streams; calling it builds a node.

    The function receives one array per input, shaped (events, period): for every event of a
    batch, the last ``period`` values of that input's field for the event's key, oldest first.
    It returns one float per event.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        *,
        period: int,
        output: str = "value",
        interval: int | str | None = None,
        missing: MissingPolicy = "skip",
        shareable: bool = True,
    ) -> None:
        self.function = function
        self.period = period
        self.output = output
        self.interval = interval
        self.missing = missing
        self.__name__ = getattr(function, "__name__", "user_function")
        self.__doc__ = function.__doc__
        try:
            self.code_hash = function_code_hash(function)
            self.shareable = shareable
        except CodeHashError:
            if shareable:
                raise  # its message already names the function and the shareable=False fix
            self.code_hash = f"unshareable:{uuid.uuid4().hex}"
            self.shareable = False

    def __call__(
        self,
        *inputs: Node | Column,
        name: str | None = None,
        tags: Iterable[str] = (),
    ) -> Node:
        """Apply the function to streams (their ``value`` field) or columns (``ticks['price']``)."""
        if not inputs:
            raise GraphError(f"user function {self.__name__!r} needs at least one input stream")
        nodes: list[Node] = []
        fields: list[str] = []
        for item in inputs:
            if isinstance(item, Column):
                nodes.append(item.node)
                fields.append(item.field)
            elif isinstance(item, Node):
                nodes.append(item)
                fields.append("value")
            else:
                raise GraphError(
                    f"user function {self.__name__!r} got {type(item).__name__}; pass streams "
                    "or columns such as ticks['price']"
                )
        return make_node(
            "user_function",
            nodes,
            {"fields": fields, "output": self.output, "function_name": self.__name__},
            name=name or self.__name__,
            interval=self.interval,
            period=self.period,
            missing=self.missing,
            tags=tags,
            function=self.function,
            code_hash=self.code_hash,
            shareable=self.shareable,
        )


def udf(
    *,
    period: int,
    output: str = "value",
    interval: int | str | None = None,
    missing: MissingPolicy = "skip",
    shareable: bool = True,
) -> Callable[[Callable[..., Any]], UserFunction]:
    """Decorator: a function of window views (events x period per input) becomes an operator.

    >>> import streamdag as sd
    >>> @sd.udf(period=3)
    ... def momentum(prices):
    ...     return prices[:, -1] - prices[:, 0]
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> momentum(ticks["price"]).period
    3
    """

    def wrap(function: Callable[..., Any]) -> UserFunction:
        return UserFunction(
            function,
            period=period,
            output=output,
            interval=interval,
            missing=missing,
            shareable=shareable,
        )

    return wrap
