"""The ``streamdag`` command line: one subcommand per module; Ray and Kafka load only when run."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, Protocol, cast

__all__ = ["COMMANDS", "EXIT_CODES", "build_parser", "main"]

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
    "backtest": "runtime.cli.backtest",
    "cache": "runtime.cli.cache",
    "produce": "runtime.cli.produce",
    "tail": "runtime.cli.tail",
    "report": "runtime.cli.report",
}


class _CommandModule(Protocol):
    """What a subcommand module provides."""

    __doc__: str | None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> _CommandModule:
    return cast(_CommandModule, importlib.import_module(COMMANDS[name]))


#: What the exit codes mean, for every subcommand (shown by ``streamdag --help``).
EXIT_CODES = (
    "exit codes: 0 done; 1 what was asked about is not there or failed (`broker status` "
    "without a broker, `ls` without a deployment, a failed submission in `submit`/`status`, "
    "a corrupt checkpoint in `checkpoints --verify`); 2 bad input or an error (the message "
    "says what to do); 130 interrupted. With --json, errors print as JSON too. Library "
    "warnings go to <state_dir>/streamdag.log unless --verbose."
)


class UsageError(Exception):
    """A command line argparse refused; printed by ``main``."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    """An argument parser that leaves printing a usage error to ``main`` (JSON or text)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self, message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(
        prog="streamdag", description="Streaming DAGs on Ray actors, fed from Kafka.",
        epilog=EXIT_CODES,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = _load(name)
        summary = (module.__doc__ or name).strip().splitlines()[0]
        sub = commands.add_parser(name, help=summary, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(sub)
        sub.add_argument("--verbose", action="store_true",
                         help="show Ray's and aiokafka's warnings here, not in "
                         "<state_dir>/streamdag.log")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    from runtime.cli.console import print_error_json, quiet_console
    from streamdag.errors import StreamdagError

    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(arguments)
    except UsageError as refused:
        if "--json" in arguments:
            print_error_json(refused)
        else:
            refused.parser.print_usage(sys.stderr)
            print(f"{refused.parser.prog}: error: {refused}", file=sys.stderr)
        return 2
    quiet = contextlib.nullcontext() if args.verbose else quiet_console(_state_dir(args))
    try:
        with quiet:
            return _load(args.command).run(args)
    except StreamdagError as exc:
        if getattr(args, "json", False):
            print_error_json(exc)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`streamdag tail T | head`): stop quietly, as kcat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _state_dir(args: argparse.Namespace) -> str:
    # The setting flag, else a client's --state-dir (broker's names the broker's own folder).
    from runtime.deployment.discovery import settings_here

    given = getattr(args, "setting_state_dir", None)
    if given is None and args.command != "broker":
        given = getattr(args, "state_dir", None)
    return str(given or settings_here().state_dir)


if __name__ == "__main__":
    sys.exit(main())
