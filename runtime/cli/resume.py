"""Resume a stopped submission from its final checkpoint, as a new submission."""

from __future__ import annotations

import argparse

from runtime.cli.rm import add_arguments, print_submission
from runtime.deployment.client import client_from_args

__all__ = ["add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    """Resume and print the new submission."""
    print_submission("resumed", client_from_args(args).resume(args.id), args)
    return 0
