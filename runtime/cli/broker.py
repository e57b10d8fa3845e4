"""Start, stop or show the embedded Kafka-compatible broker (Tansu, memory storage).

``start`` returns once the broker answers and leaves it running in the background; ``stop``
ends it; ``status`` says whether it runs (exit code 1 when it does not). The broker's pid,
port and log live in the state directory, so each can be run from a different shell.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from connectors.broker import DEFAULT_STATE_DIR, EmbeddedBroker

__all__ = ["add_arguments", "main", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``start|stop|status`` and their options."""
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument(
        "--state-dir", default=str(DEFAULT_STATE_DIR),
        help=f"where the broker keeps pid, port and log (default: {DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--port", type=int, default=None,
                        help="port to listen on (default: a free one)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for start or stop (default: 30)")


def run(args: argparse.Namespace) -> int:
    """Carry out the action; 0 on success, 1 when ``status`` finds no broker."""
    if args.action == "start":
        status = EmbeddedBroker.status_of(args.state_dir)
        if status.running:
            print(status.describe())
            return 0
        broker = EmbeddedBroker.start(args.state_dir, port=args.port, ready_timeout_s=args.timeout)
        print(broker.status().describe())
        return 0
    if args.action == "stop":
        status = EmbeddedBroker.status_of(args.state_dir)
        if not status.running:
            print(status.describe())
            return 0
        EmbeddedBroker.attach(args.state_dir).stop(timeout_s=args.timeout)
        print(f"broker stopped (pid {status.pid})")
        return 0
    status = EmbeddedBroker.status_of(args.state_dir)
    print(status.describe())
    return 0 if status.running else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command on its own (``python -m runtime.cli.broker``)."""
    parser = argparse.ArgumentParser(prog="streamdag broker", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
