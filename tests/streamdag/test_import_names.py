"""Every module of the project is importable under exactly one name, and the repo holds no links."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("streamdag", "runtime", "operators", "connectors")


def _all_module_names() -> list[str]:
    names = []
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        names.append(package_name)
        names.extend(info.name for info in pkgutil.walk_packages(package.__path__,
                                                                  prefix=f"{package_name}."))
    return sorted(names)


def test_every_module_file_is_loaded_under_one_name_only() -> None:
    for name in _all_module_names():
        importlib.import_module(name)
    by_file: dict[str, list[str]] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and any(Path(file).resolve().is_relative_to(ROOT / p) for p in PACKAGES):
            by_file.setdefault(str(Path(file).resolve()), []).append(name)
    twice = {file: names for file, names in by_file.items() if len(names) > 1}
    assert twice == {}


def test_each_package_lives_in_its_own_top_level_folder() -> None:
    for name in PACKAGES:
        module = importlib.import_module(name)
        assert Path(module.__file__ or "").resolve() == ROOT / name / "__init__.py"


@pytest.mark.parametrize("old_name", ["streamdag.runtime", "streamdag.operators",
                                      "streamdag.connectors"])
def test_the_old_mapped_names_no_longer_import(old_name: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(old_name)


def test_the_repo_tracks_no_symbolic_links() -> None:
    listing = subprocess.run(["git", "ls-files", "-s"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    links = [line.split("\t", 1)[1] for line in listing.splitlines() if line.startswith("120000")]
    assert links == []
