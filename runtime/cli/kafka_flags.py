"""Where ``produce`` and ``tail`` find Kafka: a flag, the setting, or the state directory."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from connectors.errors import BrokerNotRunningError
from runtime.deployment.discovery import bootstrap_servers, settings_here
from streamdag.config import Settings

__all__ = ["add_kafka_flags", "kafka_answers", "kafka_from_args"]


def add_kafka_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--bootstrap-servers`` and ``--state-dir``."""
    parser.add_argument("--bootstrap-servers", default=None, metavar="HOST:PORT",
                        help="Kafka (default: STREAMDAG_KAFKA_BOOTSTRAP_SERVERS, else the broker "
                        "`streamdag broker start` or `streamdag up` started)")
    parser.add_argument("--state-dir", default=None,
                        help="where to look for a running broker or deployment (default: "
                        "state_dir setting, .state)")


def kafka_from_args(args: argparse.Namespace) -> tuple[str, Settings]:
    """Kafka's bootstrap servers and the settings, per the flags; ConfigError when none runs."""
    settings = settings_here()
    if args.bootstrap_servers:
        return args.bootstrap_servers, settings
    return bootstrap_servers(args.state_dir), settings


@contextlib.contextmanager
def kafka_answers(bootstrap: str) -> Iterator[None]:
    """Turn "nothing answers at ``bootstrap``" into BrokerNotRunningError with the fix."""
    from aiokafka.errors import KafkaConnectionError

    try:
        yield
    except KafkaConnectionError:
        raise BrokerNotRunningError(
            f"no Kafka answers at {bootstrap}: start the embedded broker with `streamdag "
            "broker start`, or check --bootstrap-servers and STREAMDAG_KAFKA_BOOTSTRAP_SERVERS"
        ) from None
