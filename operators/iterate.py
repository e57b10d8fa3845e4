"""The ``iterate`` operator: a fixed-point block, the one place a cycle is allowed.

The cycle lives inside one node: vars start from ``initial`` expressions over the input fields,
then ``update`` expressions (over the vars and the fields, vars referencing each other) are applied
all at once (Jacobi style) until no var changes by ``tolerance`` or more, or ``max_iterations``
steps have run. Every event converges on its own: a row stops iterating as soon as its own change
is below the tolerance, so an event's result never depends on which other events share its batch
(live and replayed runs batch events differently but must agree).
"""

from __future__ import annotations

import functools
import keyword
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from operators.expressions import CompiledExpression, compile_expression
from operators.map_filter import StatelessLogic
from streamdag.batch import Batch
from streamdag.errors import ParamError
from streamdag.operator import NodeConfig, OperatorDef
from streamdag.operator_registry import register
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = ["FixedPointBlock", "IterateDef", "IterateLogic"]

_RECORDED = ("iterations", "delta")


@dataclass(frozen=True)
class FixedPointBlock:
    """A validated, compiled ``iterate`` block: vars, their expressions and the stop rule."""

    variables: tuple[str, ...]
    initial: Mapping[str, CompiledExpression]
    update: Mapping[str, CompiledExpression]
    output: str
    tolerance: float
    max_iterations: int

    @classmethod
    def build(cls, params: Mapping[str, Any], schema: Schema) -> FixedPointBlock:
        """Check ``params`` against the input ``schema`` and compile every expression.

        Raises ParamError naming the var or expression at fault.
        """
        initial, update = dict(params["initial"]), dict(params["update"])
        output, tolerance = str(params["output"]), float(params["tolerance"])
        _check_variables(initial, update, output, tolerance, schema)
        variables = tuple(sorted(initial))
        fields = schema.to_dict()
        # Vars are float64 whatever their initial expression computes, so updates type-check
        # against float64 vars.
        scope = {**fields, **dict.fromkeys(variables, "float64")}
        return cls(
            variables=variables,
            initial={
                var: compile_expression(
                    initial[var], fields, context=f"iterate initial value of var {var!r}"
                )
                for var in variables
            },
            update={
                var: compile_expression(
                    update[var], scope, context=f"iterate update of var {var!r}"
                )
                for var in variables
            },
            output=output,
            tolerance=tolerance,
            max_iterations=int(params["max_iterations"]),
        )


def _check_variables(
    initial: Mapping[str, str],
    update: Mapping[str, str],
    output: str,
    tolerance: float,
    schema: Schema,
) -> None:
    if not initial:
        raise ParamError(
            "iterate param 'initial' is empty; give at least one var, e.g. "
            "initial={'x': 'value'}, update={'x': '0.5 * (x + value / x)'}"
        )
    if set(initial) != set(update):
        raise ParamError(
            f"iterate params 'initial' and 'update' must define the same vars; initial defines "
            f"{sorted(initial)} and update defines {sorted(update)}; give every var both a "
            "starting value and an update"
        )
    for var in initial:
        if not var.isidentifier() or keyword.iskeyword(var):
            raise ParamError(
                f"iterate var {var!r} is not a valid name; use letters, digits and _ "
                "(not starting with a digit, not a Python keyword)"
            )
        if var in schema:
            raise ParamError(
                f"iterate var {var!r} has the name of an input field, so updates could not tell "
                f"them apart; rename the var (input fields: {list(schema.names)}) and pass "
                "output= with its new name"
            )
    if output not in initial:
        raise ParamError(
            f"iterate param 'output' = {output!r} is not a var of the block; its vars are "
            f"{sorted(initial)}; pass output= one of them"
        )
    if output in _RECORDED:
        raise ParamError(
            f"iterate param 'output' = {output!r} clashes with the recorded column of that "
            f"name (the output carries {[output, *_RECORDED]}); rename the var"
        )
    if not tolerance > 0.0:
        raise ParamError(
            f"iterate param 'tolerance' = {tolerance!r}; expected a float > 0 (e.g. 1e-9), "
            "since a block that must reach an exact zero change may never stop early"
        )


@register
class IterateDef(OperatorDef):
    """A fixed-point block: vars iterated per event until they stop changing.

    Outputs the ``output`` var plus ``iterations`` (steps taken) and ``delta`` (the last step's
    largest change over the vars) for every event; an event that did not converge shows
    ``iterations == max_iterations`` and ``delta >= tolerance``.

    >>> import streamdag as sd
    >>> from streamdag.batch import Batch
    >>> numbers = sd.source("numbers", topic="n", schema={"value": "float64"})
    >>> roots = numbers.apply(
    ...     "iterate", initial={"x": "value"}, update={"x": "0.5 * (x + value / x)"}, output="x"
    ... )
    >>> roots.output_schema
    Schema(x: float64, iterations: int64, delta: float64)
    >>> logic = IterateDef.create(roots.config())
    >>> batch = Batch.from_columns(ts=[1, 2], key=["a", "b"], value=[4.0, 1.0])
    >>> logic.process([batch]).to_records()
    [{'ts': 1, 'key': 'a', 'x': 2.0, 'iterations': 6, 'delta': 2.220446049250313e-15},
     {'ts': 2, 'key': 'b', 'x': 1.0, 'iterations': 1, 'delta': 0.0}]
    """

    type_name: ClassVar[str] = "iterate"
    needs_time_order: ClassVar[bool] = False  # each event is computed alone
    summary: ClassVar[str] = "a fixed-point block iterated per event until |change| < tolerance"
    handles_events: ClassVar[str] = (
        "iterates each event on its own and does not bucket events by interval"
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("initial", "str_map", doc="var -> expression over the input fields"),
        Param("update", "str_map", doc="var -> expression over the vars and the input fields"),
        Param("output", "str", default="value", doc="the var emitted"),
        Param("tolerance", "float", default=1e-9, minimum=0.0, doc="stop when max |change| < it"),
        # Bounded because specs are data from the network: an iteration budget is CPU time.
        Param("max_iterations", "int", default=100, minimum=1, maximum=100_000, size=True),
    )

    @classmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """``{output: float64, iterations: int64, delta: float64}``; the block is checked here."""
        block = FixedPointBlock.build(params, inputs[0])
        return Schema(((block.output, "float64"), ("iterations", "int64"), ("delta", "float64")))

    @classmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> IterateLogic:
        """Compile the block once for this node; ``iterate`` has no state to restore."""
        return IterateLogic(FixedPointBlock.build(config.params, config.input_schemas[0]))


class IterateLogic(StatelessLogic):
    """Runtime of ``iterate``: vectorized steps over a shrinking working set of events.

    Every step evaluates the updates over the working set. An event whose change drops below
    the tolerance has its result recorded at that step; it stays in the working set (computed
    but ignored) until at least half of the set has converged, when the set is compacted, so the
    cost of gathering rows stays proportional to the batch rather than to the steps.
    """

    def __init__(self, block: FixedPointBlock) -> None:
        self.block = block
        read = {name for expression in block.update.values() for name in expression.names}
        self.fields_read = tuple(sorted(read - set(block.variables)))

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """The output var, iterations and delta for every event of the batch, in order."""
        block = self.block
        batch = inputs[0]
        length = len(batch)
        # Vars are never written in place (each step binds new arrays), so a var may start
        # as, or become, the very array of an input column.
        values = {
            var: block.initial[var].evaluate(batch.columns, length).astype(np.float64, copy=False)
            for var in block.variables
        }
        fields = {name: batch.columns[name] for name in self.fields_read}
        rows = np.arange(length)  # the batch row of each event of the working set
        pending = np.ones(length, dtype=np.bool_)  # per working-set event: not yet recorded
        pending_count = length
        change = np.full(length, np.nan)
        result = np.full(length, np.nan)
        iterations = np.full(length, block.max_iterations, dtype=np.int64)
        delta = np.full(length, np.nan)
        for step in range(1, block.max_iterations + 1):
            if pending_count == 0:
                break
            scope = {**fields, **values}
            new = {
                var: block.update[var].evaluate(scope, len(rows)).astype(np.float64, copy=False)
                for var in block.variables
            }
            change = functools.reduce(
                np.maximum, [_change(values[var], new[var]) for var in block.variables]
            )
            values = new
            # Integer positions rather than boolean masks: only the few events that converge
            # at this step are gathered and scattered.
            converged = np.flatnonzero((change < block.tolerance) & pending)
            if len(converged) == 0:
                continue
            converged_rows = rows[converged]
            result[converged_rows] = values[block.output][converged]
            iterations[converged_rows] = step
            delta[converged_rows] = change[converged]
            pending[converged] = False
            pending_count -= len(converged)
            if 0 < pending_count <= len(rows) // 2:
                keep = np.flatnonzero(pending)
                rows = rows[keep]
                fields = {name: column[keep] for name, column in fields.items()}
                values = {var: column[keep] for var, column in values.items()}
                change = change[keep]
                pending = np.ones(len(rows), dtype=np.bool_)
        # Events still unrecorded ran out of iterations: their last values and change stand.
        unconverged = np.flatnonzero(pending)
        result[rows[unconverged]] = values[block.output][unconverged]
        delta[rows[unconverged]] = change[unconverged]
        columns = {block.output: result, "iterations": iterations, "delta": delta}
        return batch.with_columns(columns)


def _change(old: npt.NDArray[np.float64], new: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
    """``|new - old|`` where a value that stays NaN (or the same infinity) changed by 0.

    A value that becomes or stops being NaN changed by inf, so it never counts as converged.
    """
    with np.errstate(invalid="ignore"):
        difference = np.subtract(new, old)
        np.abs(difference, out=difference)
    undefined = np.isnan(difference)
    # Only NaN, or infinities of one sign, give a NaN difference: fix those few up.
    if undefined.any():
        unchanged = (old == new) | (np.isnan(old) & np.isnan(new))
        difference[undefined] = np.where(unchanged[undefined], 0.0, np.inf)
    return difference
