"""The ``map`` and ``filter`` operators: safe vectorized expressions over a stream's fields."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from operators.expressions import (
    CompiledExpression,
    ExpressionParam,
    canonical_expression,
    compile_expression,
)
from streamdag.batch import Batch
from streamdag.errors import ParamError
from streamdag.operator import NodeConfig, OperatorDef
from streamdag.operator_registry import register
from streamdag.params import OrderedMapParam, Param
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


@dataclass(frozen=True)
class _ExpressionMapParam(OrderedMapParam):
    """Output name -> expression, in order, each expression in its canonical spelling."""

    def coerce(self, node: str, value: Any) -> Any:
        """The pairs in the order given, each expression spelled canonically."""
        return tuple((name, canonical_expression(text))
                     for name, text in super().coerce(node, value))


def _map_outputs(params: Mapping[str, Any], schema: Schema) -> list[tuple[str, CompiledExpression]]:
    """Each computed field and its compiled expression; ParamError when the params are unfit."""
    expression, named = params["expression"], params["expressions"]
    if bool(expression) == bool(named):
        raise ParamError(
            "map needs param 'expression' (one field: map('price * size', output='notional')) "
            "or param 'expressions' (several: map(mid='(bid + ask) / 2', spread='ask - bid')), "
            f"one of the two; got expression={expression!r} and expressions={dict(named)!r}"
        )
    pairs = named or ((params["output"], expression),)
    outputs = []
    for output, text in pairs:
        if not output.isidentifier():
            what = "param 'output' =" if not named else "param 'expressions' output"
            raise ParamError(
                f"map {what} {output!r} is not a valid field name; use letters, digits and _ "
                "(not starting with a digit)"
            )
        where = "param 'expression'" if not named else f"expression {output!r}"
        outputs.append((output, compile_expression(text, schema.to_dict(),
                                                   context=f"map {where}")))
    return outputs


@register
class MapDef(OperatorDef):
    """Float64 fields computed per event by expressions over the input's fields.

    The output carries every input field plus each computed one; an input field of the same
    name is replaced in place. Booleans become 0.0/1.0 and integers floats. Every expression
    reads the input's fields, never another computed field.

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
    >>> quotes = sd.source("quotes", topic="q", schema={"bid": "float64", "ask": "float64"})
    >>> both = quotes.map(mid="(bid + ask) / 2", spread="ask - bid")
    >>> both.output_schema
    Schema(bid: float64, ask: float64, mid: float64, spread: float64)
    >>> MapDef.create(both.config()).process(
    ...     [Batch.from_columns(ts=[1], key=["a"], bid=[1.0], ask=[2.0])]).to_records()
    [{'ts': 1, 'key': 'a', 'bid': 1.0, 'ask': 2.0, 'mid': 1.5, 'spread': 1.0}]
    """

    type_name: ClassVar[str] = "map"
    needs_time_order: ClassVar[bool] = False  # each event is computed alone
    handles_events: ClassVar[str] = (
        "computes each event from that event alone and does not bucket events by interval"
    )
    summary: ClassVar[str] = "float64 fields computed by expressions over the input's fields"
    params: ClassVar[tuple[Param, ...]] = (
        ExpressionParam(
            "expression", "str", default="",
            doc="expression over the input's fields, e.g. 'price * size'",
        ),
        Param("output", "str", default="value", doc="name of the computed float64 field"),
        _ExpressionMapParam("expressions", "str_map", default=(),
                            doc="several computed fields: name -> expression, in order"),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """The input's fields plus each output as float64; the expressions are checked here."""
        fields = dict(inputs[0].fields)
        for output, _ in _map_outputs(params, inputs[0]):
            fields[output] = "float64"
        return Schema.from_mapping(fields)

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> MapLogic:
        """Compile the expressions once for this node; ``map`` has no state to restore."""
        return MapLogic(_map_outputs(config.params, config.input_schemas[0]),
                        config.output_schema.names)


class MapLogic(StatelessLogic):
    """Runtime of ``map``: one vectorized evaluation per expression and batch."""

    def __init__(self, outputs: Sequence[tuple[str, CompiledExpression]],
                 field_names: Sequence[str]) -> None:
        self.outputs = tuple(outputs)
        self.field_names = tuple(field_names)

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The batch with the computed fields added (or replaced); ts, keys, lineage kept."""
        batch = inputs[0]
        computed = {
            output: expression.evaluate(batch.columns, len(batch)).astype(np.float64, copy=False)
            for output, expression in self.outputs
        }
        columns = {name: computed[name] if name in computed else batch.columns[name]
                   for name in self.field_names}
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
