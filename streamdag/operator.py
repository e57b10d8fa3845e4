"""The operator contract: a declaration (params, schemas, history) and the logic it builds."""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, Literal, Protocol

from streamdag.batch import Batch
from streamdag.errors import SchemaMismatchError
from streamdag.params import Param
from streamdag.schema import Schema

__all__ = [
    "MissingPolicy",
    "NodeConfig",
    "OperatorDef",
    "OperatorLogic",
    "Role",
    "module_code_hash",
    "operator_code_modules",
    "require_fields",
    "shard_instance_id",
]

MissingPolicy = Literal["skip", "fail", "interpolate"]
Role = Literal["source", "operator", "sink"]


@dataclass(frozen=True)
class NodeConfig:
    """Everything a node's runtime logic is built from; travels to the node's actor.

    ``function`` is set only for user-function nodes (the trusted SDK path).
    """

    node_id: str
    name: str
    operator: str
    params: Mapping[str, Any]
    input_schemas: tuple[Schema, ...]
    output_schema: Schema
    interval: int | None = None
    period: int = 1
    missing: MissingPolicy = "skip"
    tags: tuple[str, ...] = ()
    function: Callable[..., Any] | None = field(default=None, compare=False)
    #: Keyed parallelism: this is shard ``shard`` of ``shards`` (the keys whose stable hash
    #: modulo ``shards`` is ``shard``), and per input, how many upstream shards feed it
    #: (empty: one each).
    shard: int = 0
    shards: int = 1
    fan_in: tuple[int, ...] = ()

    @property
    def instance_id(self) -> str:
        """The node id, with the shard for one shard of several: names its snapshots.

        >>> NodeConfig("ab12", "n", "map", {}, (), Schema.of(), shard=1, shards=4).instance_id
        'ab12.1of4'
        """
        return shard_instance_id(self.node_id, self.shard, self.shards)


def shard_instance_id(node_id: str, shard: int, shards: int) -> str:
    """``node_id`` for an unsharded node, else ``<node_id>.<shard>of<shards>``."""
    return node_id if shards == 1 else f"{node_id}.{shard}of{shards}"


class OperatorLogic(Protocol):
    """The per-actor runtime object an operator declaration builds."""

    def process(self, inputs: Sequence[Batch]) -> Batch:
        """Consume one batch per input, aligned to the same event-time range; return output."""
        ...

    def on_watermark(self, watermark: int) -> Batch | None:
        """React to event time passing ``watermark`` (close windows); None when nothing."""
        ...

    def snapshot(self) -> bytes:
        """The logic's whole state, from which ``OperatorDef.create`` rebuilds it exactly."""
        ...


class OperatorDef(ABC):
    """Declaration of an operator type: name, version, params, arity and schemas.

    Subclasses are registered with ``streamdag.operator_registry.register`` and never instantiated;
    everything is a classmethod, so a declaration is pure data plus functions of it.
    """

    type_name: ClassVar[str]
    version: ClassVar[int] = 1
    params: ClassVar[tuple[Param, ...]] = ()
    #: Number of inputs; None means one or more.
    arity: ClassVar[int | None] = 1
    role: ClassVar[Role] = "operator"
    #: Whether the node's inputs come and go while it runs (a tag query): it starts with none,
    #: and each one it follows later is connected with the name of the node it comes from.
    dynamic_inputs: ClassVar[bool] = False
    summary: ClassVar[str] = ""
    #: Whether results depend on the order of events: if so, the runtime holds the input until
    #: the watermark passes it and hands it over sorted by event time; if not (kernels that
    #: compute each event alone), a one-input node gets every batch at once, as it arrives.
    needs_time_order: ClassVar[bool] = True
    #: Whether each key's output depends on that key's events alone, in event-time order (not
    #: on other keys' events nor on the watermark): then, over a source ``partitioned_by_key``,
    #: a one-input node releases each partition's events by that partition's own watermark.
    keys_apart: ClassVar[bool] = False
    #: Whether the kernel has its own policy for events that arrive after the watermark passed
    #: them (they are handed to it at once); if not, the runtime drops them and counts them.
    handles_late_events: ClassVar[bool] = False
    #: Whether the kernel buckets events by the node's ``interval``; if not, one is refused when
    #: the node is built (opt in, so a new kernel cannot silently ignore one).
    supports_interval: ClassVar[bool] = False
    #: The missing-data policies the kernel honours; any other is refused when built. ``skip``,
    #: the default, holds everywhere: a kernel without interval buckets has no gap to skip.
    missing_policies: ClassVar[tuple[MissingPolicy, ...]] = ("skip",)
    #: What the kernel does with events, in the message refusing an interval or a policy.
    handles_events: ClassVar[str] = "updates on every event and does not bucket events by interval"
    #: Whether the runtime may warm the kernel up on a throwaway copy before the node is ready;
    #: not for operators whose logic is costly to build twice (a model loads once).
    warms_up: ClassVar[bool] = True
    #: The fix that message offers for a refused interval.
    interval_hint: ClassVar[str] = (
        "bucket upstream instead, e.g. with ohlcv bars (.ohlcv(bar='1s')) or a user function "
        "built with sd.udf(interval=...)"
    )

    @classmethod
    @abstractmethod
    def output_schema(cls, params: Mapping[str, Any], inputs: Sequence[Schema]) -> Schema:
        """The output schema for these params and input schemas; SchemaMismatchError if unfit."""

    @classmethod
    def resolve_params(
        cls, params: dict[str, Any], function: Callable[..., Any] | None
    ) -> dict[str, Any]:
        """Params derived from the validated ones (e.g. a model file's sha256), before the
        node's id is computed; ParamError if they cannot be. By default: as given."""
        return params

    @classmethod
    def history(cls, params: Mapping[str, Any]) -> int:
        """Events of history the node keeps per input and key (its default period)."""
        return 1

    @classmethod
    def code_hash(cls) -> str:
        """sha256 over the name and source of every module in ``operator_code_modules(cls)``."""
        listing = "".join(f"{name} {module_code_hash(name)}\n"
                          for name in operator_code_modules(cls))
        return hashlib.sha256(listing.encode("utf-8")).hexdigest()

    @classmethod
    @abstractmethod
    def create(cls, config: NodeConfig, snapshot: bytes | None = None) -> OperatorLogic:
        """Build the runtime logic, fresh or from a snapshot taken by ``snapshot()``."""


_module_hashes: dict[str, str] = {}
#: Modules of the built-in operators; a declaration's hash covers those its module uses.
_OPERATOR_MODULES = "operators."


def module_code_hash(module_name: str) -> str:
    """sha256 of a module's source text; stable across processes."""
    cached = _module_hashes.get(module_name)
    if cached is None:
        source = inspect.getsource(sys.modules[module_name])
        cached = hashlib.sha256(source.encode("utf-8")).hexdigest()
        _module_hashes[module_name] = cached
    return cached


def operator_code_modules(definition: type[OperatorDef]) -> tuple[str, ...]:
    """Sorted names of the modules whose code ``definition`` runs, for its code hash.

    That is its own module and every ``operators`` module it uses, directly or through
    another: a module object, function or class in a module's globals, or a constant's class.

    >>> from streamdag.operator_registry import lookup
    >>> operator_code_modules(lookup("ohlcv"))
    ('operators.bars', 'operators.errors', 'operators.key_labels', 'operators.key_slots',
     'operators.row_index')
    """
    return _code_modules(definition.__module__)


@functools.cache
def _code_modules(module_name: str) -> tuple[str, ...]:
    found = {module_name}
    pending = [module_name]
    while pending:
        for value in vars(sys.modules[pending.pop()]).values():
            used = _operator_module_of(value)
            if used is not None and used not in found:
                found.add(used)
                pending.append(used)
    return tuple(sorted(found))


def _operator_module_of(value: Any) -> str | None:
    # A module, or the module defining a function, class or (for constants) the value's class.
    name: object
    if isinstance(value, ModuleType):
        name = value.__name__
    elif isinstance(value, type) or callable(value):
        name = getattr(value, "__module__", None)
    else:
        name = type(value).__module__
    return name if isinstance(name, str) and name.startswith(_OPERATOR_MODULES) else None


def require_fields(
    operator: str, schema: Schema, fields: Sequence[str], types: Sequence[str] = ("float64",)
) -> None:
    """Raise SchemaMismatchError unless ``schema`` has every field, of one of ``types``."""
    for name in fields:
        if name not in schema:
            raise SchemaMismatchError(
                f"{operator} needs field {name!r} but its input carries {list(schema.names)}; "
                f"pass one of those as the field"
            )
        if schema.type_of(name) not in types:
            raise SchemaMismatchError(
                f"{operator} needs field {name!r} of type {' or '.join(types)}, "
                f"but the input's {name!r} is {schema.type_of(name)}"
            )
