"""Fixtures of the streamdag core tests: user modules written to disk and imported."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Write ``source`` as module ``name`` in tmp_path and import it."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(name: str, source: str, folder: Path = tmp_path) -> ModuleType:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        sys.modules.pop(name, None)
        written.append(name)
        if folder != tmp_path:
            monkeypatch.syspath_prepend(str(folder))
        return importlib.import_module(name)

    yield write
    for name in written:
        sys.modules.pop(name, None)
