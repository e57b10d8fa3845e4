"""Print a topic's records readably: partition and offset, key, event time (ISO-8601), fields.

Like ``kcat -C``: reads every partition from ``--from`` (``earliest``, the default; ``latest``;
an ISO-8601 time such as ``2026-01-02T09:30:00Z``; an epoch number; or a time back from now
such as ``30s``, ``5m``, ``2h``; times select by the records' Kafka timestamps), prints one line
per record, and stops at the end of the topic, after ``-n N`` records, or never with
``--follow`` (Ctrl-C ends it). The event time is the record's
``--time-field`` (default ``ts``, in ``--time-unit`` ns, as sources read it), else the Kafka
timestamp. ``--json`` prints each record as one JSON object instead.
Exit codes: 0 done (also after Ctrl-C), 2 bad input, no Kafka or no such topic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from connectors.errors import TopicError
from runtime.cli.kafka_flags import add_kafka_flags, kafka_answers, kafka_from_args
from streamdag.config import ConfigError
from streamdag.times import time_ns

__all__ = ["add_arguments", "decode_value", "format_record", "iso_time", "parse_start", "run"]

_UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_BACK = re.compile(r"^-?(\d+(?:\.\d+)?)(s|m|h|d)$")
_BACK_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Without --follow, the topic has ended once a fetch waits this long and gets nothing.
_END_AFTER_IDLE_MS = 1500


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare TOPIC, ``--from``, ``-n``, ``--follow``, the time field and where Kafka is."""
    parser.add_argument("topic", metavar="TOPIC")
    parser.add_argument("--from", dest="start", default="earliest", metavar="WHERE",
                        help="earliest (default), latest, an ISO-8601 time, an epoch number, "
                        "or a time back from now: 30s, 5m, 2h, 1d")
    parser.add_argument("-n", "--count", type=int, default=None, metavar="N",
                        help="stop after N records")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep waiting for new records (Ctrl-C ends)")
    parser.add_argument("--time-field", default="ts",
                        help="the record field holding its event time (default ts)")
    parser.add_argument("--time-unit", choices=tuple(_UNITS_NS), default="ns",
                        help="unit of the time field (default ns)")
    parser.add_argument("--json", action="store_true", help="one JSON object per record")
    add_kafka_flags(parser)


def parse_start(start: str, now_ns: int | None = None) -> str | int:
    """``earliest``/``latest``, or the start time in ns since the epoch (``time_ns``).

    >>> parse_start("2026-01-02T09:30:00Z")
    1767346200000000000
    >>> parse_start("1767346200")
    1767346200000000000
    >>> parse_start("5m", now_ns=600_000_000_000)
    300000000000
    """
    if start in ("earliest", "latest"):
        return start
    back = _BACK.match(start)
    if back:
        now = time.time_ns() if now_ns is None else now_ns
        return now - int(float(back.group(1)) * _BACK_SECONDS[back.group(2)] * 1e9)
    moment = time_ns(start)
    if moment is None:
        raise ConfigError(
            f"--from {start!r}: give earliest, latest, an ISO-8601 time such as "
            "2026-01-02T09:30:00Z, an epoch number (seconds, ms, µs or ns since 1970), or a "
            "time back from now such as 30s, 5m or 2h"
        )
    return moment


def iso_time(ns: int) -> str:
    """ISO-8601 UTC with microseconds for ``ns`` since the epoch.

    >>> iso_time(1767346200123456789)
    '2026-01-02T09:30:00.123456Z'
    """
    seconds, rest = divmod(ns, 1_000_000_000)
    moment = datetime.fromtimestamp(seconds, UTC).replace(microsecond=rest // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def decode_value(value: bytes | None) -> Any:
    """A record's value as JSON, else msgpack, else its text."""
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError:
        pass
    import msgpack

    try:
        return msgpack.unpackb(value)
    except Exception:  # any undecodable value is shown as text
        return value.decode("utf-8", errors="replace")


def format_record(
    partition: int, offset: int, key: bytes | None, value: Any, timestamp_ms: int,
    time_field: str = "ts", time_unit: str = "ns",
) -> str:
    """One line: ``p<partition>@<offset>  <key>  <event time>  field=value ...``.

    >>> format_record(1, 7, b"AAPL", {"ts": 1767346200000000000, "key": "AAPL", "value": 1.0},
    ...               0)
    'p1@7  AAPL  2026-01-02T09:30:00.000000Z  value=1.0'
    """
    fields = dict(value) if isinstance(value, dict) else {"value": value}
    event = fields.pop(time_field, None)
    shown_key = key.decode("utf-8", errors="replace") if key is not None else "-"
    if fields.get("key") == shown_key:
        fields.pop("key")
    if isinstance(event, int | float) and not isinstance(event, bool):
        when = iso_time(int(event * _UNITS_NS[time_unit]))
    else:
        when = iso_time(timestamp_ms * 1_000_000) + " (broker time)"
    parts = " ".join(f"{name}={_shown(field)}" for name, field in fields.items())
    return f"p{partition}@{offset}  {shown_key}  {when}  {parts}".rstrip()


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def run(args: argparse.Namespace) -> int:
    """Read and print; 0 at the end (or Ctrl-C)."""
    bootstrap, _ = kafka_from_args(args)
    start = parse_start(args.start)
    if args.count is not None and args.count < 1:
        raise ConfigError(f"-n {args.count}: give at least 1 record")
    with contextlib.suppress(KeyboardInterrupt), kafka_answers(bootstrap):
        asyncio.run(_tail(args, bootstrap, start, lambda line: print(line, flush=True)))
    return 0


async def _tail(args: argparse.Namespace, bootstrap: str, start: str | int,
                emit: Callable[[str], None]) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=10)
    await consumer.start()
    try:
        # Step 1: every partition of the topic, assigned (no consumer group).
        found = await consumer.topics()
        if args.topic not in found:
            raise TopicError(f"topic {args.topic!r} does not exist on {bootstrap}; write to it "
                             f"with `streamdag produce {args.topic}` first, or check the name "
                             f"(topics there: {', '.join(sorted(found)) or 'none'})")
        partitions = [TopicPartition(args.topic, p)
                      for p in sorted(consumer.partitions_for_topic(args.topic) or [])]
        consumer.assign(partitions)
        # Step 2: seek to the start.
        since_ms = None
        if start == "earliest":
            await consumer.seek_to_beginning(*partitions)
        elif start == "latest":
            # Some brokers (Tansu) seek "latest" to the last batch's start: filter by time too.
            since_ms = time.time_ns() // 1_000_000
            await consumer.seek_to_end(*partitions)
        else:
            assert isinstance(start, int)
            since_ms = start // 1_000_000
            offsets = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            for tp in partitions:
                found_offset = offsets.get(tp)
                if found_offset is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, found_offset.offset)
        # Step 3: print until the end (or N records, or forever with --follow).
        printed = 0
        while args.count is None or printed < args.count:
            fetched = await consumer.getmany(timeout_ms=_END_AFTER_IDLE_MS, max_records=1000)
            if not fetched and not args.follow:
                return
            for messages in fetched.values():
                for message in messages:
                    # Some brokers answer a time lookup with too early an offset: filter here.
                    if since_ms is not None and message.timestamp < since_ms:
                        continue
                    value = decode_value(message.value)
                    if args.json:
                        emit(json.dumps({"partition": message.partition,
                                         "offset": message.offset,
                                         "key": None if message.key is None
                                         else message.key.decode("utf-8", errors="replace"),
                                         "timestamp_ms": message.timestamp, "value": value}))
                    else:
                        emit(format_record(message.partition, message.offset, message.key,
                                           value, message.timestamp, args.time_field,
                                           args.time_unit))
                    printed += 1
                    if args.count is not None and printed >= args.count:
                        return
    finally:
        await consumer.stop()

