"""Code hashes of user functions: normalized AST plus the values the function closes over."""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from streamdag.errors import CodeHashError

__all__ = ["function_code_hash"]


def function_code_hash(function: Callable[..., Any]) -> str:
    """sha256 of ``function``'s normalized AST; CodeHashError when it cannot be hashed."""
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as exc:
        raise CodeHashError(
            f"cannot read the source of {getattr(function, '__qualname__', function)!r}: {exc}"
        ) from None
    tree = ast.parse(source)
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()
