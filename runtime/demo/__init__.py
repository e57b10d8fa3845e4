"""The demo: synthetic market data and the example graphs it submits.

The example graphs ship inside the package (``runtime/demo/graphs``), so ``streamdag demo`` runs
from an installed wheel as well as from the repo.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EXAMPLE_GRAPHS_DIR", "example_graph_names", "resolve_graph_path"]

#: Where the shipped example graph specs live.
EXAMPLE_GRAPHS_DIR = Path(__file__).parent / "graphs"


def example_graph_names() -> list[str]:
    """The names of the shipped example graphs (``momentum``, ``mean_reversion``, ...).

    >>> "momentum" in example_graph_names()
    True
    """
    return sorted({path.stem for path in EXAMPLE_GRAPHS_DIR.glob("*.toml")})


def resolve_graph_path(reference: str) -> Path:
    """A spec file's path: an existing file as given, else a shipped example graph by name.

    >>> resolve_graph_path("momentum").name
    'momentum.toml'
    """
    given = Path(reference)
    if given.is_file():
        return given
    shipped = EXAMPLE_GRAPHS_DIR / f"{reference}.toml"
    if shipped.is_file():
        return shipped
    from streamdag.errors import SpecError

    raise SpecError(
        f"no graph spec file {reference!r}, and no example graph of that name; give the path "
        f"of a .toml or .json spec, or one of the shipped examples: {example_graph_names()}"
    )
