"""The ``map`` and ``filter`` operators: safe vectorized expressions over a stream's fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from operators.expressions import (
    CompiledExpression,
    ExpressionParam,
    compile_expression,
)
from streamdag.batch import Batch
from streamdag.errors import ParamError
from streamdag.operator import NodeConfig, OperatorDef
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = ["FilterDef", "FilterLogic", "MapDef", "MapLogic", "StatelessLogic"]


class StatelessLogic:
    """Base of logic that keeps no state between batches: no windows, an empty snapshot."""

    def on_watermark(self, watermark: int) -> Batch | None:
        """Nothing here waits for event time."""
        return None

    def snapshot(self) -> bytes:
        """The empty snapshot: there is nothing to restore."""
        return b""


def _compile_expression_param(
    operator: str, params: Mapping[str, Any], schema: Schema
) -> CompiledExpression:
    return compile_expression(
        params["expression"], schema.to_dict(), context=f"{operator} param 'expression'"
    )


@register
class MapDef(OperatorDef):
    """A float64 field computed per event by an expression over the input's fields.

    The output carries every input field plus ``output``; an input field of the same name is
    replaced in place. Booleans become 0.0/1.0 and integers floats.

    >>> import streamdag as sd
    >>> from streamdag.batch import Batch
    >>> ticks = sd.source("ticks", topic="t", schema={"price": "float64", "size": "int64"})
    >>> notional = ticks.map("price * size", output="notional")
    >>> notional.output_schema
    Schema(price: float64, size: int64, notional: float64)
    >>> logic = MapDef.create(notional.config())
    >>> batch = Batch.from_columns(ts=[1, 2], key=["a", "b"], price=[10.0, 2.5], size=[3, 4])
    >>> logic.process([batch]).to_records()
    [{'ts': 1, 'key': 'a', 'price': 10.0, 'size': 3, 'notional': 30.0},
     {'ts': 2, 'key': 'b', 'price': 2.5, 'size': 4, 'notional': 10.0}]
    """

    type_name: ClassVar[str] = "map"
    needs_time_order: ClassVar[bool] = False  # each event is computed alone
    handles_events: ClassVar[str] = (
        "computes each event from that event alone and does not bucket events by interval"
    )
    summary: ClassVar[str] = "a float64 field computed by an expression over the input's fields"
    params: ClassVar[tuple[Param, ...]] = (
        ExpressionParam(
            "expression", "str", doc="expression over the input's fields, e.g. 'price * size'"
        ),
        Param("output", "str", default="value", doc="name of the computed float64 field"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """The input's fields plus ``output`` as float64; the expression is checked here."""
        _compile_expression_param(cls.type_name, params, inputs[0])
        output = params["output"]
        if not output.isidentifier():
            raise ParamError(
                f"map param 'output' = {output!r} is not a valid field name; use letters, "
                "digits and _ (not starting with a digit)"
            )
        fields = dict(inputs[0].fields)
        fields[output] = "float64"
        return Schema.from_mapping(fields)

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> MapLogic:
        """Compile the expression once for this node; ``map`` has no state to restore."""
        expression = _compile_expression_param(
            cls.type_name, config.params, config.input_schemas[0]
        )
        return MapLogic(expression, str(config.params["output"]), config.output_schema.names)


class MapLogic(StatelessLogic):
    """Runtime of ``map``: one vectorized evaluation per batch."""

    def __init__(
        self, expression: CompiledExpression, output: str, field_names: Sequence[str]
    ) -> None:
        self.expression = expression
        self.output = output
        self.field_names = tuple(field_names)

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The batch with the computed field added (or replaced); ts, keys, lineage kept."""
        batch = inputs[0]
        values = self.expression.evaluate(batch.columns, len(batch))
        computed = values.astype(np.float64, copy=False)
        columns = {
            name: computed if name == self.output else batch.columns[name]
            for name in self.field_names
        }
        return batch.with_columns(columns)


@register
class FilterDef(OperatorDef):
    """The events for which a boolean expression over the input's fields holds.

    >>> import streamdag as sd
    >>> from streamdag.batch import Batch
    >>> ticks = sd.source("ticks", topic="t", schema={"price": "float64", "size": "int64"})
    >>> large = ticks.filter("price * size >= 20 and not isnan(price)")
    >>> logic = FilterDef.create(large.config())
    >>> batch = Batch.from_columns(
    ...     ts=[1, 2, 3], key=["a", "b", "a"], price=[10.0, 2.5, float("nan")], size=[3, 4, 9]
    ... )
    >>> logic.process([batch]).to_records()
    [{'ts': 1, 'key': 'a', 'price': 10.0, 'size': 3}]
    """

    type_name: ClassVar[str] = "filter"
    needs_time_order: ClassVar[bool] = False  # each event is computed alone
    handles_events: ClassVar[str] = (
        "keeps or drops each event on its own and does not bucket events by interval"
    )
    summary: ClassVar[str] = "the events for which a boolean expression holds"
    params: ClassVar[tuple[Param, ...]] = (
        ExpressionParam("expression", "str", doc="boolean expression over the input's fields"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """The input schema, unchanged; the expression must be boolean."""
        expression = _compile_expression_param(cls.type_name, params, inputs[0])
        if expression.result_type != "bool":
            raise ParamError(
                f"filter param 'expression' = {expression.text!r} computes "
                f"{expression.result_type} values, but a filter needs a boolean; use a "
                "comparison such as 'price > 10', combined with and/or/not"
            )
        return inputs[0]

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> FilterLogic:
        """Compile the predicate once for this node; ``filter`` has no state to restore."""
        return FilterLogic(
            _compile_expression_param(cls.type_name, config.params, config.input_schemas[0])
        )


class FilterLogic(StatelessLogic):
    """Runtime of ``filter``: one vectorized predicate and one boolean take per batch."""

    def __init__(self, predicate: CompiledExpression) -> None:
        self.predicate = predicate

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The events of the batch whose predicate is True, in their order, with lineage."""
        batch = inputs[0]
        keep = self.predicate.evaluate(batch.columns, len(batch))
        if bool(keep.all()):
            return batch
        return batch.take(keep)
