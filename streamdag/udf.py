"""User function nodes: a decorator that turns a function of window views into an operator."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from streamdag.code_freezing import FrozenFunction, describe_function, freeze_function
from streamdag.codehash import frozen_code_hash
from streamdag.errors import CodeHashError, GraphError
from streamdag.graph import Column, Node, make_node
from streamdag.identity import canonical_encode
from streamdag.operator import MissingPolicy
from streamdag.operator_registry import lookup

__all__ = ["UserFunction", "udf"]

#: Prefix of a user-function node's code hash; bump it when the encoding changes.
_CODE_SCHEME = "streamdag-user-function/1"


class UserFunction:
    """A user function ready to be applied to streams; calling it builds a node.

    The function receives one array per input, shaped (events, period): for every event of a
    batch, the last ``period`` values of that input's field for the event's key, oldest first.
    It returns one float per event, or, with ``outputs`` (several field names), a dict of
    those names to arrays or a tuple of arrays in that order.

    A shareable function is frozen when it is decorated: ``function`` is a copy whose globals,
    closure cells, defaults and attributes hold read-only copies of the values the original
    sees then (``streamdag.code_freezing``), and ``code_hash`` is computed over that copy, which
    is what every node built from it runs. Rebinding or changing those values afterwards
    changes neither. An unshareable function (``shareable=False``) runs as it is, and its nodes
    get ids that nothing else has.
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
        outputs: Sequence[str] = (),
    ) -> None:
        self.period = period
        self.output = output
        self.outputs = tuple(outputs)
        self.interval = interval
        self.missing = missing
        self.shareable = shareable
        self.__name__ = getattr(function, "__name__", "user_function")
        self.__doc__ = function.__doc__
        self.function: Callable[..., Any]
        if shareable:
            # Raises CodeHashError naming the function and the shareable=False fix.
            self.function = freeze_function(function)
            self.code_hash = _node_code_hash(frozen_code_hash(self.function))
        else:
            # It runs unfrozen, so no hash can vouch for what it computes: never share it.
            self.function = function
            self.code_hash = f"unshareable:{uuid.uuid4().hex}"

    def __call__(
        self,
        *inputs: Node | Column,
        name: str | None = None,
        tags: Iterable[str] = (),
        parallelism: int | None = None,
    ) -> Node:
        """Apply the function to streams (their ``value`` field) or columns (``ticks['price']``);
        ``parallelism`` shards the node's keys over that many actors."""
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
        self._check_unchanged()
        return make_node(
            "user_function",
            nodes,
            {"fields": fields, "output": self.output, "outputs": self.outputs},
            name=name or self.__name__,
            interval=self.interval,
            period=self.period,
            missing=self.missing,
            tags=tags,
            function=self.function,
            code_hash=self.code_hash,
            shareable=self.shareable,
            parallelism=parallelism,
        )

    def _check_unchanged(self) -> None:
        """Refuse a frozen copy that no longer hashes as it did when it was frozen."""
        if not isinstance(self.function, FrozenFunction):
            return
        if _node_code_hash(frozen_code_hash(self.function)) != self.code_hash:
            raise CodeHashError(
                f"user function {describe_function(self.function)}: its frozen copy no longer "
                "hashes as it did when sd.udf froze it, so nodes built from it would run "
                "something other than what their id names (a value inside the copy was "
                "changed through its __globals__, __closure__ or a base-class method). Apply "
                "sd.udf to the function again, or build it with shareable=False"
            )


def _node_code_hash(function_hash: str) -> str:
    """The code of a user-function node: the user's function and the operator that runs it."""
    operator_hash = lookup("user_function").code_hash()
    payload = canonical_encode([_CODE_SCHEME, operator_hash, function_hash])
    return hashlib.sha256(payload).hexdigest()


def udf(
    *,
    period: int,
    output: str = "value",
    interval: int | str | None = None,
    missing: MissingPolicy = "skip",
    shareable: bool = True,
    outputs: Sequence[str] = (),
) -> Callable[[Callable[..., Any]], UserFunction]:
    """Decorator: a function of window views (events x period per input) becomes an operator.

    With ``outputs``, the function returns several named arrays (a dict, or a tuple in that
    order) and its node has one float64 field per name.

    >>> import streamdag as sd
    >>> @sd.udf(period=3)
    ... def momentum(prices):
    ...     return prices[:, -1] - prices[:, 0]
    >>> ticks = sd.source("ticks", topic="t", key="symbol", schema={"price": "float64"})
    >>> momentum(ticks["price"]).period
    3
    >>> @sd.udf(period=3, outputs=("low", "high"))
    ... def band(prices):
    ...     return {"low": prices.min(axis=1), "high": prices.max(axis=1)}
    >>> band(ticks["price"]).output_schema
    Schema(low: float64, high: float64)
    """

    def wrap(function: Callable[..., Any]) -> UserFunction:
        return UserFunction(
            function,
            period=period,
            output=output,
            interval=interval,
            missing=missing,
            shareable=shareable,
            outputs=outputs,
        )

    return wrap
