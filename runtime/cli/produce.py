"""Write records to a topic: synthetic ticks at a rate, or a file of JSON lines or CSV.

Without ``--file``, writes the demo's random-walk ticks (``{"symbol", "ts", "price", "size"}``,
``ts`` the wall clock in ns) for ``--symbols`` symbols at ``--rate`` ticks/s for ``--duration``
seconds (0: until Ctrl-C). With ``--file``, writes each JSON line (``.jsonl``/``.json``) or CSV
row (``.csv``; numbers become numbers) as one JSON record, keyed by ``--key``, at ``--rate``
when given. The topic is created when missing (``kafka.partitions`` partitions). Kafka is
``--bootstrap-servers``, else STREAMDAG_KAFKA_BOOTSTRAP_SERVERS, else the broker that
``streamdag broker start`` or ``streamdag up`` started from the state directory.
Exit codes: 0 done (also after Ctrl-C), 2 bad input or no Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from runtime.cli.kafka_flags import add_kafka_flags, kafka_answers, kafka_from_args
from streamdag.config import ConfigError

__all__ = ["add_arguments", "read_records", "run"]

_PROGRESS_EVERY_S = 0.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare TOPIC, the tick settings, ``--file`` and where Kafka is."""
    parser.add_argument("topic", metavar="TOPIC", help="topic to write to (created if missing)")
    parser.add_argument("--rate", type=float, default=None,
                        help="records per second (ticks: default 1000; files: as fast as "
                        "possible)")
    parser.add_argument("--symbols", type=int, default=10,
                        help="ticks: how many symbols (SYM000, SYM001, ...; default 10)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="ticks: seconds to produce, 0 until Ctrl-C (default 10)")
    parser.add_argument("--file", type=Path, default=None,
                        help="write this file's records instead: .jsonl/.json (one object a "
                        "line) or .csv (a header row)")
    parser.add_argument("--key", default="symbol",
                        help="file: the field whose value is the record key (default symbol)")
    add_kafka_flags(parser)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines or CSV file, as dicts; numbers in CSV become numbers.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "ticks.csv"
    >>> _ = path.write_text("symbol,ts,price\\nAAPL,1,101.5\\n")
    >>> list(read_records(path))
    [{'symbol': 'AAPL', 'ts': 1, 'price': 101.5}]
    """
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".ndjson", ".csv"):
        raise ConfigError(f"cannot tell the format of {str(path)!r} from its suffix "
                          f"{suffix!r}; name it *.jsonl (JSON lines) or *.csv")
    try:
        file = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror}") from None
    with file:
        if suffix == ".csv":
            for row in csv.DictReader(file):
                yield {name: _number_or_text(value) for name, value in row.items()}
            return
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number} is not JSON ({exc.msg}); write one JSON "
                                  "object per line") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{number} is a JSON {type(record).__name__}, not an "
                                  "object; write one JSON object per line")
            yield record


def _number_or_text(value: str | None) -> Any:
    if value is None:
        return None
    for kind in (int, float):
        with contextlib.suppress(ValueError):
            return kind(value)
    return value


def run(args: argparse.Namespace) -> int:
    """Produce until done (or Ctrl-C); prints a progress line and a final count."""
    bootstrap, settings = kafka_from_args(args)
    if args.file is not None and not args.file.exists():
        raise ConfigError(f"file {str(args.file)!r} does not exist")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError(f"--rate {args.rate:g}: give a positive number of records per second")
    try:
        with kafka_answers(bootstrap):
            return asyncio.run(_produce(args, bootstrap, settings.kafka.partitions, sys.stdout))
    except KeyboardInterrupt:
        return 0


async def _produce(args: argparse.Namespace, bootstrap: str, partitions: int,
                   out: TextIO) -> int:
    from connectors.topics import ensure_topics

    await ensure_topics(bootstrap, {args.topic: partitions}, strict=False)
    progress = _Progress(args.topic, out)
    if args.file is None:
        await _produce_ticks(args, bootstrap, progress)
    else:
        await _produce_file(args, bootstrap, progress)
    progress.finish()
    return 0


async def _produce_ticks(args: argparse.Namespace, bootstrap: str, progress: _Progress) -> None:
    from runtime.demo.job import TickProducer

    producer = TickProducer(bootstrap, args.topic, args.rate or 1000.0, args.symbols)
    task = asyncio.create_task(producer.run())
    # The duration and the shown rate count from when the producer is connected.
    connected = asyncio.create_task(producer.connected.wait())
    await asyncio.wait({task, connected}, return_when=asyncio.FIRST_COMPLETED)
    connected.cancel()
    progress.restart()
    started = time.monotonic()
    try:
        while not task.done() and (args.duration <= 0
                                   or time.monotonic() - started < args.duration):
            await asyncio.wait({task}, timeout=_PROGRESS_EVERY_S)
            progress.show(producer.produced)
    finally:
        producer.stop()
        await task
        progress.show(producer.produced)


async def _produce_file(args: argparse.Namespace, bootstrap: str, progress: _Progress) -> None:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks=1)
    await producer.start()
    sent = 0
    started = time.monotonic()
    try:
        pending = []
        for record in read_records(args.file):
            key = record.get(args.key)
            value = json.dumps(record).encode()
            pending.append(await producer.send(args.topic, value,
                                               key=None if key is None else str(key).encode()))
            sent += 1
            if args.rate is not None:
                # Paced: wait until this record is due.
                delay = started + sent / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.gather(*pending)
                    pending.clear()
                    progress.show(sent)
                    await asyncio.sleep(delay)
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
                progress.show(sent)
        await asyncio.gather(*pending)
        progress.show(sent, force=True)
    finally:
        await producer.stop()


class _Progress:
    """One line, rewritten in place on a terminal: records written, rate, elapsed time."""

    def __init__(self, topic: str, out: TextIO) -> None:
        self.topic = topic
        self.out = out
        self.count = 0
        self._started = time.monotonic()
        self._shown = 0.0
        self._live = out.isatty()

    def restart(self) -> None:
        """Count the elapsed time from now."""
        self._started = time.monotonic()

    def _line(self) -> str:
        elapsed = max(time.monotonic() - self._started, 1e-9)
        return (f"produced {self.count:,} records to {self.topic} in {elapsed:.1f} s "
                f"({self.count / elapsed:,.0f}/s)")

    def show(self, count: int, *, force: bool = False) -> None:
        """Remember ``count``; redraw the line at most every half second on a terminal."""
        self.count = count
        now = time.monotonic()
        if self._live and (force or now - self._shown >= _PROGRESS_EVERY_S):
            self._shown = now
            print("\r" + self._line(), end="", file=self.out, flush=True)

    def finish(self) -> None:
        """The final line."""
        print(("\r" if self._live else "") + self._line(), file=self.out, flush=True)
