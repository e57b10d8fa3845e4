"""The deployment's state files: JSON documents written atomically and read back checked."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from runtime.deployment.node_registry import NodeRegistry, RegistryFileError

__all__ = [
    "load_registry",
    "read_json",
    "save_registry",
    "write_json_atomically",
]


def write_json_atomically(path: str | os.PathLike[str], document: Any) -> None:
    """Write ``document`` as JSON to ``path`` so a reader sees the old file or the new one.

    Steps: write a temp file in the same folder, fsync it, rename it over ``path``, fsync the
    folder (so the rename itself survives a power cut).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Step 1: the new content goes to a temp file beside the target.
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp:
            json.dump(document, temp, indent=1, sort_keys=True)
            temp.flush()
            # Step 2: the bytes are on disk before the name points at them.
            os.fsync(temp.fileno())
        # Step 3: the atomic switch.
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    # Step 4: persist the directory entry.
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON document at ``path``, or None when there is no file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryFileError(
            f"{path} is not valid JSON ({exc}); it was not written by streamdag's atomic "
            "writer: restore it from a backup or move it away"
        ) from None


def save_registry(path: str | os.PathLike[str], registry: NodeRegistry, deployment: str) -> None:
    """Persist ``registry`` of ``deployment`` at ``path`` atomically."""
    write_json_atomically(path, registry.to_document(deployment))


def load_registry(path: str | os.PathLike[str]) -> NodeRegistry:
    """The registry persisted at ``path`` (empty when there is none)."""
    document = read_json(path)
    return NodeRegistry() if document is None else NodeRegistry.from_document(document)
