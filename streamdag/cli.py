"""The ``streamdag`` command line: one subcommand per module; Ray and Kafka load only when run."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

__all__ = ["COMMANDS", "main"]

#: Subcommand name -> module that defines ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS: dict[str, str] = {
    "plan": "runtime.cli.plan",
    "demo": "runtime.cli.demo",
    "broker": "runtime.cli.broker",
    "up": "runtime.cli.up",
    "submit": "runtime.cli.submit",
    "ls": "runtime.cli.ls",
    "status": "runtime.cli.status",
    "rm": "runtime.cli.rm",
    "stop": "runtime.cli.stop",
    "resume": "runtime.cli.resume",
    "top": "runtime.cli.top",
    "checkpoints": "runtime.cli.checkpoints",
    "produce": "runtime.cli.produce",
    "tail": "runtime.cli.tail",
}


class _CommandModule(Protocol):
    """What a subcommand module provides."""

    __doc__: str | None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> _CommandModule:
    return cast(_CommandModule, importlib.import_module(COMMANDS[name]))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="streamdag", description="Streaming DAGs on Ray actors, fed from Kafka."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        summary = (module.__doc__ or name).strip().splitlines()[0]
        sub = commands.add_parser(name, help=summary, description=module.__doc__)
        module.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    from streamdag.errors import StreamdagError

    try:
        return _load(args.command).run(args)
    except StreamdagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
