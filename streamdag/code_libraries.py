"""Installed libraries, as code hashing sees them: code identified by name and version.

A value that an installed library (numpy, the standard library, ...) exports by name is not
hashed or copied by content: it is named, and the library's version and installed files stand
for its code. Everything else (the user's own modules, editable installs) is the user's code,
hashed and frozen by content. Modules through which code reaches the interpreter's own state
(``sys.modules``, frames, the garbage collector) are "reflective": no content hash can see what
code reaches through them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import site
import sys
import sysconfig
from typing import Any

__all__ = [
    "REFLECTIVE_MODULES",
    "is_library_module",
    "library_token",
    "library_version",
    "library_version_of_import",
]

#: Library modules whose functions reach values no code hash can see (other modules' globals,
#: frames, every live object, raw memory).
REFLECTIVE_MODULES = frozenset({"builtins", "ctypes", "gc", "importlib", "inspect", "sys"})


def library_token(value: Any) -> Any:
    """``[library, module, name, version]`` for a value importable by name from a library.

    >>> import math
    >>> library_token(math.sqrt)[:3]
    ['library', 'math', 'sqrt']
    >>> library_token(lambda x: x) is None
    True
    """
    module_name = getattr(value, "__module__", None)
    qualname = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        return None
    version = library_version(module_name)
    if version is None or not _importable_as(value, module_name, qualname):
        return None
    return ["library", module_name, qualname, version]


def is_library_module(module_name: str) -> bool:
    """Whether the imported module ``module_name`` belongs to an installed library or Python."""
    return library_version(module_name) is not None


def _importable_as(value: Any, module_name: str, qualname: str) -> bool:
    target: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return False
    return target is value


@functools.cache
def library_version(module_name: str) -> str | None:
    """The version of the installed library or Python that ships ``module_name``; else None.

    Code outside the interpreter's and site-packages' folders (the user's own modules, editable
    installs) is not a library: it is hashed by content.
    """
    module = sys.modules.get(module_name)
    if module is None:
        return None
    return _version_of_file(module_name, getattr(module, "__file__", None))


def library_version_of_import(module_name: str) -> str | None:
    """Like ``library_version``, for a module that code imports when it runs (maybe not yet)."""
    if module_name in sys.modules:
        return library_version(module_name)
    top = module_name.partition(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    origin = spec.origin if spec.has_location else None
    return _version_of_file(top, origin)


def _version_of_file(module_name: str, file: str | None) -> str | None:
    python = f"{sys.implementation.name}-{platform.python_version()}"
    top = module_name.partition(".")[0]
    if file is None:
        return python if top in sys.builtin_module_names else None
    path = os.path.realpath(file)
    if not any(path.startswith(root) for root in _installed_roots()):
        return None
    distributions = sorted(set(_distributions_by_package().get(top, ())))
    if distributions:
        return ",".join(_distribution_fingerprint(d) for d in distributions)
    return python if top in sys.stdlib_module_names else None


@functools.lru_cache(maxsize=1)
def _distributions_by_package() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


@functools.cache
def _distribution_fingerprint(name: str) -> str:
    """``name==version`` plus a digest of the installed files' hashes.

    The digest tells apart two installs of one version with different code (a package rebuilt
    and reinstalled without a version bump). RECORD lines without a hash (bytecode caches) and
    outside the package folder (scripts) are left out, and the rest sorted, so that the same
    wheel gives the same fingerprint whatever installed it.
    """
    distribution = importlib.metadata.distribution(name)
    record = distribution.read_text("RECORD") or ""
    entries = sorted(
        line for line in record.splitlines()
        if not line.startswith("..") and line.count(",") >= 2 and line.split(",")[1]
    )
    digest = hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()[:16]
    return f"{name}=={distribution.version}#{digest}"


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    roots.update(site.getsitepackages())
    roots.add(site.getusersitepackages())
    return tuple(sorted(os.path.join(os.path.realpath(r), "") for r in roots))
