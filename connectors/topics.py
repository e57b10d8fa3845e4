"""Topic administration: create topics if missing and read their partition counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from connectors.errors import TopicError
from streamdag.topic_names import TOPIC_RULES, shown_topic, topic_name_problem

__all__ = ["ensure_topics", "topic_partition_counts"]

_TOPIC_ALREADY_EXISTS = 36


async def ensure_topics(
    bootstrap_servers: str,
    partitions: Mapping[str, int],
    *,
    replication_factor: int = 1,
    configs: Mapping[str, Mapping[str, str]] | None = None,
    strict: bool = True,
    timeout_s: float = 30.0,
) -> dict[str, int]:
    """Create each topic of ``partitions`` that is missing; return every topic's partition count.

    Names are checked against Kafka's rules first (``streamdag.topic_names``), so a bad one is
    refused here rather than by the broker. Idempotent: an existing topic is left as it is.
    With ``strict`` an existing topic whose partition count differs from the one asked raises
    TopicError, since key partitioning depends on the count. ``configs`` sets topic configs at
    creation (name -> {key: value}).
    """
    for name, count in partitions.items():
        problem = topic_name_problem(name)
        if problem is not None:
            raise TopicError(
                f"topic {shown_topic(name)} cannot be created: {problem}; a Kafka topic name "
                f"is {TOPIC_RULES}"
            )
        if count < 1:
            raise TopicError(
                f"topic {name!r} was asked with {count} partition(s); give at least 1 partition"
            )
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                count,
                replication_factor,
                topic_configs=dict((configs or {}).get(name, {})),
            )
            for name, count in partitions.items()
            if name not in existing
        ]
        if missing:
            response = await admin.create_topics(missing)
            for topic_error in response.topic_errors:
                topic, code = topic_error[0], topic_error[1]
                # Another client may create the same topic between our list and create.
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    detail = topic_error[2] if len(topic_error) > 2 else ""
                    raise TopicError(
                        f"creating topic {topic!r} failed with Kafka error {code} ({detail}); "
                        "check the broker's limits (partitions, replication factor) and ACLs"
                    )
        counts = await _wait_for_leaders(admin, list(partitions), time.monotonic() + timeout_s)
    finally:
        await admin.close()
    if strict:
        for name, count in partitions.items():
            if counts[name] != count:
                raise TopicError(
                    f"topic {name!r} exists with {counts[name]} partition(s), but {count} were "
                    "asked; use the existing count, or delete and recreate the topic"
                )
    return counts


async def topic_partition_counts(bootstrap_servers: str, topics: list[str]) -> dict[str, int]:
    """The partition count of each existing topic in ``topics`` (missing topics are left out)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        present = set(await admin.list_topics())
        wanted = [name for name in topics if name in present]
        if not wanted:
            return {}
        described = await admin.describe_topics(wanted)
    finally:
        await admin.close()
    return {entry["topic"]: len(entry["partitions"]) for entry in described}


async def _wait_for_leaders(
    admin: AIOKafkaAdminClient, names: list[str], deadline: float
) -> dict[str, int]:
    # A created topic shows up in metadata, with a leader for each partition, a little later.
    while True:
        described = await admin.describe_topics(names)
        counts: dict[str, int] = {}
        for entry in described:
            partitions = entry["partitions"]
            if entry["error_code"] == 0 and partitions and all(
                p["leader"] >= 0 for p in partitions
            ):
                counts[entry["topic"]] = len(partitions)
        if all(name in counts for name in names):
            return counts
        if time.monotonic() > deadline:
            waiting = sorted(set(names) - set(counts))
            raise TopicError(
                f"topics {waiting} have no leader for every partition yet after the deadline; "
                "check that the broker is healthy"
            )
        await asyncio.sleep(0.05)
