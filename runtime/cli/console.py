"""A clean console for ``streamdag`` commands: library warnings go to a log file.

Unless ``--verbose`` is given, the log records of Ray, aiokafka and Python's ``warnings`` go to
``<state_dir>/streamdag.log`` instead of the terminal, and Ray does not copy its workers'
output to the terminal (it stays in Ray's session logs, ``/tmp/ray/session_latest/logs``).
Errors are printed as one JSON object when the command was asked for ``--json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["LOG_FILE", "QUIET_LOGGERS", "error_document", "print_error_json", "quiet_console"]

#: Name of the log file, in the state directory, that library warnings go to.
LOG_FILE = "streamdag.log"

#: Loggers whose records leave the terminal for the log file.
QUIET_LOGGERS = ("ray", "aiokafka", "kafka", "py.warnings", "asyncio", "filelock")

_RAY_SWITCH = "STREAMDAG_RAY_LOG_TO_DRIVER"


@contextlib.contextmanager
def quiet_console(state_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """While open, the noisy libraries' records go to ``<state_dir>/streamdag.log`` (yielded).

    Sets ``STREAMDAG_RAY_LOG_TO_DRIVER=0`` so a Ray started meanwhile keeps its workers' output
    in its own log files. On exit the loggers, the last-resort handler and the variable are as
    they were (a command run inside a test leaves nothing behind).
    """
    path = Path(state_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in QUIET_LOGGERS]
    saved = [(logger.handlers[:], logger.propagate) for logger in loggers]
    last_resort, switch = logging.lastResort, os.environ.get(_RAY_SWITCH)
    logging.captureWarnings(True)
    # Ray clears its logger's handlers in ray.init (configure_logging=False) and stops
    # propagation, so its records reach Python's last-resort handler (stderr): make that ours.
    logging.lastResort = handler
    for logger in loggers:
        logger.handlers = [handler]
        logger.propagate = False
    os.environ.setdefault(_RAY_SWITCH, "0")
    try:
        yield path
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate
        logging.lastResort = last_resort
        logging.captureWarnings(False)
        if switch is None:
            os.environ.pop(_RAY_SWITCH, None)
        else:
            os.environ[_RAY_SWITCH] = switch
        handler.close()


def error_document(error: BaseException) -> dict[str, Any]:
    """The JSON a ``--json`` command prints for an error: its type, message and problems.

    >>> error_document(ValueError("bad"))
    {'error': {'type': 'ValueError', 'message': 'bad'}}
    """
    document: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    problems = getattr(error, "problems", None)
    if problems:
        document["problems"] = problems
    status = getattr(error, "status", None)
    if isinstance(status, int):
        document["status"] = status
    return {"error": document}


def print_error_json(error: BaseException) -> None:
    """Print ``error_document(error)`` on stdout."""
    print(json.dumps(error_document(error), indent=2))
