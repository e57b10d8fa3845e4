"""A clean console: warnings in the log file, JSON errors with --json, ls with nothing running."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.cli.console import QUIET_LOGGERS, quiet_console
from streamdag.cli import main


@pytest.fixture
def loggers_restored() -> Iterator[None]:
    """Put back the library loggers and the Ray switch that ``quiet_console`` changes."""
    saved = {name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
             for name in QUIET_LOGGERS}
    switch = os.environ.get("STREAMDAG_RAY_LOG_TO_DRIVER")
    last_resort = logging.lastResort
    yield
    logging.lastResort = last_resort
    for name, (handlers, propagate) in saved.items():
        logging.getLogger(name).handlers = handlers
        logging.getLogger(name).propagate = propagate
    logging.captureWarnings(False)
    if switch is None:
        os.environ.pop("STREAMDAG_RAY_LOG_TO_DRIVER", None)
    else:
        os.environ["STREAMDAG_RAY_LOG_TO_DRIVER"] = switch


def test_library_warnings_go_to_the_log_file_not_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loggers_restored: None
) -> None:
    ray_logger = logging.getLogger("ray")
    before = (ray_logger.handlers[:], ray_logger.propagate, logging.lastResort,
              os.environ.get("STREAMDAG_RAY_LOG_TO_DRIVER"))
    with quiet_console(tmp_path) as path:
        say_warnings()
        assert os.environ["STREAMDAG_RAY_LOG_TO_DRIVER"] in ("0", before[3])
        assert capsys.readouterr() == ("", "")
    # Everything is as it was.
    assert (ray_logger.handlers, ray_logger.propagate, logging.lastResort,
            os.environ.get("STREAMDAG_RAY_LOG_TO_DRIVER")) == before
    logged = path.read_text().splitlines()
    assert [line.split(" ", 2)[2] for line in logged] == [
        "WARNING aiokafka.consumer: Unable connect to node with id 1",
        "WARNING ray: Ray is using a lot of memory",
        "WARNING ray._private.authentication: Token authentication is enabled"]


def say_warnings() -> None:
    """What the libraries say while a command runs."""
    logging.getLogger("aiokafka.consumer").warning("Unable connect to node with id 1")
    logging.getLogger("ray").warning("Ray is using a lot of memory")
    # What ray.init does to its logger (configure_logging=False): its records then reach the
    # last-resort handler, which is the log file too.
    logging.getLogger("ray").handlers.clear()
    logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")


def test_ls_without_a_deployment_says_so_and_how_to_start_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loggers_restored: None
) -> None:
    message = (f"no deployment is running (none started from state directory "
               f"{str(tmp_path)!r}); start one with `streamdag up` in another shell, then "
               "`streamdag submit FILE`")
    assert main(["ls", "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().out == message + "\n"
    assert main(["ls", "--state-dir", str(tmp_path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out) == {"error": {
        "type": "NoDeploymentRunning", "message": message}}


def test_json_errors_are_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], loggers_restored: None
) -> None:
    assert main(["status", "x-1", "--state-dir", str(tmp_path), "--url", "http://127.0.0.1:1",
                 "--token", "t", "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {"error": {
        "type": "GatewayUnreachableError",
        "message": "no gateway answers at http://127.0.0.1:1 ([Errno 111] Connection refused); "
                   "start one with `streamdag up`, or point --url at a running one"}}
    assert main(["tail", "t", "--bootstrap-servers", "127.0.0.1:1", "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {"error": {
        "type": "BrokerNotRunningError",
        "message": "no Kafka answers at 127.0.0.1:1: start the embedded broker with `streamdag "
                   "broker start`, or check --bootstrap-servers and "
                   "STREAMDAG_KAFKA_BOOTSTRAP_SERVERS"}}
    assert main(["ls", "--json", "--bogus"]) == 2
    assert json.loads(capsys.readouterr().out) == {"error": {
        "type": "UsageError", "message": "unrecognized arguments: --bogus"}}
    assert main(["ls", "--bogus"]) == 2
    assert capsys.readouterr().err.endswith("streamdag: error: unrecognized arguments: --bogus\n")


def test_help_states_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "exit codes: 0 done; 1 what was asked about is not there or failed" in text
    assert "2 bad input or an error (the message says what to do); 130 interrupted" in text
