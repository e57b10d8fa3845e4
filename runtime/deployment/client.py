"""The gateway's HTTP client, used by the CLI, and where a running gateway is found.

``streamdag up`` writes the gateway's URL and token to ``<state_dir>/gateway.json`` (readable by
its owner only); the other commands read it unless ``--url`` / ``--token`` (or the
``STREAMDAG_GATEWAY_TOKEN`` variable) say otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.deployment.state_files import write_json_atomically
from streamdag.config import ConfigError, Settings, load_settings
from streamdag.errors import StreamdagError

__all__ = [
    "GATEWAY_FILE",
    "GatewayAddress",
    "GatewayClient",
    "GatewayUnreachableError",
    "RequestRefusedError",
    "add_connection_flags",
    "client_for",
    "client_from_args",
]

#: Name of the file, in the state directory, holding a running gateway's URL and token.
GATEWAY_FILE = "gateway.json"

_CONTENT_TYPES = {".json": "application/json", ".toml": "application/toml"}


class GatewayUnreachableError(StreamdagError):
    """Nothing answers at the gateway's URL."""


class RequestRefusedError(StreamdagError):
    """The gateway answered with an error status; ``problems`` are its structured errors."""

    def __init__(self, status: int, problems: Sequence[Mapping[str, Any]]) -> None:
        self.status = status
        self.problems = [dict(problem) for problem in problems]
        lines = []
        for problem in self.problems:
            node = problem.get("node")
            where = f"node {node!r}: " if node and not str(problem.get("message", "")
                                                         ).startswith("node ") else ""
            lines.append(f"{where}{problem.get('type')}: {problem.get('message')}")
        super().__init__(f"the gateway refused the request ({status}): " + "; ".join(lines))


@dataclass(frozen=True)
class GatewayAddress:
    """Where a gateway listens and the token it wants."""

    url: str
    token: str

    def save(self, state_dir: str | os.PathLike[str]) -> Path:
        """Write ``<state_dir>/gateway.json``, readable by its owner only; returns its path."""
        path = Path(state_dir) / GATEWAY_FILE
        # The atomic writer's temp file is created 0600 (mkstemp) and renamed into place, so
        # the token is never readable by others, not even for a moment.
        write_json_atomically(path, {"url": self.url, "token": self.token, "pid": os.getpid()})
        return path

    @classmethod
    def load(cls, state_dir: str | os.PathLike[str]) -> GatewayAddress | None:
        """The address in ``<state_dir>/gateway.json``; None when there is none."""
        try:
            raw = json.loads((Path(state_dir) / GATEWAY_FILE).read_text())
            return cls(str(raw["url"]), str(raw["token"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


class GatewayClient:
    """Synchronous calls to a gateway's HTTP API; errors raise StreamdagError subclasses."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s

    @property
    def token(self) -> str:
        """The bearer token this client sends."""
        return self._token

    def submit(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Submit the graph spec file ``path`` (``.json`` or ``.toml``); the new submission."""
        file = Path(path)
        content_type = _CONTENT_TYPES.get(file.suffix.lower())
        if content_type is None:
            raise ConfigError(
                f"cannot tell the format of graph spec {str(file)!r} from its suffix "
                f"{file.suffix!r}; name it *.toml or *.json"
            )
        try:
            body = file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read graph spec {str(file)!r}: {exc.strerror}") from None
        return dict(self._request("POST", "/graphs", body, content_type))

    def list_submissions(self) -> list[dict[str, Any]]:
        """Every submission."""
        return list(self._request("GET", "/graphs")["graphs"])

    def status(self, submission_id: str) -> dict[str, Any]:
        """One submission: state, cause, diff and its nodes with their figures."""
        return dict(self._request("GET", f"/graphs/{_quote(submission_id)}"))

    def remove(self, submission_id: str) -> dict[str, Any]:
        """Remove a submission."""
        return dict(self._request("DELETE", f"/graphs/{_quote(submission_id)}"))

    def stop(self, submission_id: str) -> dict[str, Any]:
        """Stop a submission with a final checkpoint."""
        return dict(self._request("POST", f"/graphs/{_quote(submission_id)}/stop"))

    def resume(self, submission_id: str) -> dict[str, Any]:
        """Resume a stopped submission from its final checkpoint."""
        return dict(self._request("POST", f"/graphs/{_quote(submission_id)}/resume"))

    def checkpoints(self, submission_id: str) -> list[dict[str, Any]]:
        """Per region of a submission: checkpoints, the last one, recoveries."""
        return list(self._request("GET", f"/graphs/{_quote(submission_id)}/checkpoints")
                    ["regions"])

    def nodes(self) -> list[dict[str, Any]]:
        """Every node of the deployment."""
        return list(self._request("GET", "/nodes")["nodes"])

    def node(self, node_id: str) -> dict[str, Any]:
        """One node by id; a tag query says what it follows and skips."""
        return dict(self._request("GET", f"/nodes/{_quote(node_id)}"))

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` answer."""
        return dict(self._request("GET", "/healthz"))

    def metrics(self) -> str:
        """The ``/metrics`` text (Prometheus exposition format)."""
        return self._send("GET", "/metrics", None, None).decode("utf-8")

    def infer(self, node: str, features: Mapping[str, Any],
              timeout_ms: float = 10_000) -> dict[str, Any]:
        """Run inference node ``node`` on ``features`` (name -> values), ahead of its streams."""
        body = json.dumps({"features": dict(features), "timeout_ms": timeout_ms}).encode()
        return dict(self._request("POST", f"/infer/{_quote(node)}", body, "application/json"))

    def _request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None
    ) -> Any:
        return json.loads(self._send(method, path, body, content_type))

    def _send(
        self, method: str, path: str, body: bytes | None, content_type: str | None
    ) -> bytes:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        request = urllib.request.Request(self.url + path, body, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
                answer: bytes = response.read()
                return answer
        except urllib.error.HTTPError as exc:
            raise RequestRefusedError(exc.code, _problems(exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GatewayUnreachableError(
                f"no gateway answers at {self.url} ({reason}); start one with `streamdag up`, "
                "or point --url at a running one"
            ) from None


def _problems(error: urllib.error.HTTPError) -> list[Mapping[str, Any]]:
    text = error.read().decode("utf-8", errors="replace")
    try:
        problems = json.loads(text)["errors"]
        if isinstance(problems, list) and all(isinstance(p, Mapping) for p in problems):
            return problems
    except (ValueError, KeyError, TypeError):
        pass
    return [{"node": None, "type": f"HTTP {error.code}", "message": text or error.reason}]


def _quote(submission_id: str) -> str:
    return urllib.parse.quote(submission_id, safe="")


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--url``, ``--token``, ``--state-dir`` and ``--timeout`` to a client command."""
    parser.add_argument("--url", default=None,
                        help="gateway URL (default: from <state-dir>/gateway.json, written by "
                        "`streamdag up`, else http://gateway.host:gateway.port)")
    parser.add_argument("--token", default=None,
                        help="bearer token (default: STREAMDAG_GATEWAY_TOKEN, else "
                        "gateway.json)")
    parser.add_argument("--state-dir", default=None,
                        help="where `streamdag up` wrote gateway.json (default: state_dir "
                        "setting, .state)")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for an answer (default: 60)")


def client_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> GatewayClient:
    """The client a command's flags, STREAMDAG_* variables and gateway.json point at."""
    overrides = [f"state_dir={args.state_dir}"] if args.state_dir else []
    settings = load_settings(environ=environ, overrides=overrides)
    return client_for(settings, args.url, args.token, args.timeout)


def client_for(settings: Settings, url: str | None = None, token: str | None = None,
               timeout_s: float = 60.0) -> GatewayClient:
    """The client of the gateway ``settings`` point at (gateway.json, unless ``url``)."""
    saved = GatewayAddress.load(settings.state_dir)
    url = url or (saved.url if saved else
                  f"http://{settings.gateway.host}:{settings.gateway.port}")
    # A saved token belongs to the saved URL only: never send it to another gateway.
    saved_token = saved.token if saved and saved.url.rstrip("/") == url.rstrip("/") else ""
    token = token or settings.gateway.token or saved_token
    if not token:
        raise ConfigError(
            f"no token for the gateway at {url}: pass --token, set STREAMDAG_GATEWAY_TOKEN, or "
            f"start the gateway with `streamdag up` (it writes {settings.state_dir}/"
            f"{GATEWAY_FILE})"
        )
    return GatewayClient(url, token, timeout_s=timeout_s)
