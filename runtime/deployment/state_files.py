"""The deployment's state files: JSON documents written atomically and read back checked."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.checkpoints.store import write_file_durably
from runtime.deployment.node_registry import NodeRegistry, RegistryFileError

if TYPE_CHECKING:
    from streamdag.graph import Graph

__all__ = [
    "load_graph",
    "load_registry",
    "read_json",
    "save_graph",
    "save_registry",
    "write_json_atomically",
]


def write_json_atomically(path: str | os.PathLike[str], document: Any) -> None:
    """Write ``document`` as JSON to ``path`` so a reader sees the old file or the new one."""
    write_file_durably(Path(path), json.dumps(document, indent=1, sort_keys=True).encode())


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


def save_graph(folder: str | os.PathLike[str], submission: str, graph: Graph) -> None:
    """Keep ``graph`` of ``submission`` (cloudpickled, as Ray sends it) so that a restarted
    controller can re-create its nodes."""
    from ray import cloudpickle

    data = cloudpickle.dumps(graph)  # type: ignore[no-untyped-call]
    write_file_durably(Path(folder) / f"{submission}.graph", data)


def load_graph(folder: str | os.PathLike[str], submission: str) -> Graph | None:
    """The graph ``save_graph`` kept for ``submission``; None when there is none."""
    from ray import cloudpickle

    try:
        data = (Path(folder) / f"{submission}.graph").read_bytes()
    except FileNotFoundError:
        return None
    graph: Graph = cloudpickle.loads(data)
    return graph
