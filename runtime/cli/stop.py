"""Stop a submission with a final checkpoint; `streamdag resume ID` goes on from it.

Needs ``[checkpoint] enabled = true``. Sources go on from their checkpointed offsets when the
graph resumes (or is submitted again), and exactly-once sinks publish nothing twice.
"""

from __future__ import annotations

import argparse

from runtime.cli.rm import add_arguments, print_submission
from runtime.deployment.client import client_from_args

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    """Stop and print the submission's final state and checkpoint."""
    print_submission("stopped", client_from_args(args).stop(args.id), args)
    return 0
