"""The operator registry: operator type names to their declarations."""

from __future__ import annotations

import importlib
from typing import TypeVar

from streamdag.errors import UnknownOperatorError, did_you_mean
from streamdag.operator import OperatorDef

__all__ = ["available", "lookup", "register"]

_registry: dict[str, type[OperatorDef]] = {}
_builtins_loaded = False
_BUILTIN_MODULES = ("streamdag.endpoints", "streamdag.tag_query", "operators")

D = TypeVar("D", bound=type[OperatorDef])


def register(definition: D) -> D:
    """Class decorator: make an operator declaration available by its ``type_name``."""
    existing = _registry.get(definition.type_name)
    if existing is not None and existing is not definition:
        raise ValueError(
            f"operator type {definition.type_name!r} is already registered by "
            f"{existing.__module__}.{existing.__qualname__}"
        )
    _registry[definition.type_name] = definition
    return definition


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)


def lookup(type_name: str) -> type[OperatorDef]:
    """The declaration registered as ``type_name``; UnknownOperatorError otherwise."""
    _load_builtins()
    try:
        return _registry[type_name]
    except KeyError:
        raise UnknownOperatorError(
            f"unknown operator type {type_name!r}{did_you_mean(type_name, _registry)}; "
            f"installed operators are {', '.join(sorted(_registry))}"
        ) from None


def available() -> dict[str, type[OperatorDef]]:
    """Every registered declaration, by type name."""
    _load_builtins()
    return dict(sorted(_registry.items()))
