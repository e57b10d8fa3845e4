"""Building ``infer`` nodes in the SDK: model files by path, Python callables frozen, hashed."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from streamdag.code_freezing import freeze_function
from streamdag.codehash import frozen_code_hash
from streamdag.errors import GraphError
from streamdag.identity import canonical_encode
from streamdag.operator_registry import lookup

if TYPE_CHECKING:
    from streamdag.graph import Node

__all__ = ["CALLABLE_PREFIX", "ModelLike", "infer_node"]

#: How a node's ``model`` param names a Python callable (attached through the SDK only).
CALLABLE_PREFIX = "python:"
#: Prefix of a callable model's code hash; bump it when the encoding changes.
_CODE_SCHEME = "streamdag-inference-callable/1"

ModelLike = str | os.PathLike[str] | Callable[..., Any]


def infer_node(
    stream: Node,
    model: ModelLike,
    features: Sequence[str],
    outputs: Sequence[str] = ("prediction",),
    *,
    shareable: bool = True,
    **params_and_options: Any,
) -> Node:
    """An ``infer`` node over ``stream``: a model file by path, or a callable on numpy rows.

    A callable is frozen (``streamdag.code_freezing``) and its node's id covers its code and
    the values it sees, as a user function's does; ``shareable=False`` runs it as it is, under
    an id nothing else has.
    """
    from streamdag.graph import make_node

    options = {key: params_and_options.pop(key)
               for key in ("name", "tags") if key in params_and_options}
    params = {"features": list(features), "outputs": list(outputs), **params_and_options}
    if isinstance(model, str | os.PathLike):
        return make_node("infer", (stream,), {"model": os.fspath(model), **params}, **options)
    if not callable(model):
        raise GraphError(
            f"infer: model got {type(model).__name__}; pass the path of an ONNX (.onnx) or "
            "TorchScript (.pt) file, or a callable taking a (rows x features) numpy array")
    function: Callable[..., Any]
    if shareable:
        function = freeze_function(model)
        code_hash = _callable_code_hash(frozen_code_hash(function))
    else:
        function, code_hash = model, f"unshareable:{uuid.uuid4().hex}"
    label = f"{getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', 'model')}"
    return make_node("infer", (stream,), {"model": CALLABLE_PREFIX + label, **params},
                     function=function, code_hash=code_hash, shareable=shareable, **options)


def _callable_code_hash(function_hash: str) -> str:
    """The code of a callable-model node: the user's callable and the operator that runs it."""
    payload = canonical_encode([_CODE_SCHEME, lookup("infer").code_hash(), function_hash])
    return hashlib.sha256(payload).hexdigest()
