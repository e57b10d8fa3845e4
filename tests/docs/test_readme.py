"""The README's examples run: every python block in order, and the shell blocks marked to run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"(<!-- readme-test: run -->\n)?```(\w*)\n(.*?)```", re.S)


def _blocks() -> list[tuple[str, str, bool]]:
    text = (ROOT / "README.md").read_text()
    return [(lang, body, bool(marker)) for marker, lang, body in _BLOCK.findall(text)]


def test_readme_has_python_examples() -> None:
    assert sum(1 for lang, _, _ in _blocks() if lang == "python") >= 4


@pytest.mark.integration
def test_readme_python_examples_run_in_order(
    ray_session: None, bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The examples find Kafka themselves (runtime.deployment.discovery): here the setting.
    monkeypatch.setenv("STREAMDAG_KAFKA_BOOTSTRAP_SERVERS", bootstrap)
    namespace: dict[str, object] = {"__name__": "readme"}
    for index, (lang, body, _) in enumerate(_blocks()):
        if lang == "python":
            # A real file per block, so user functions defined there have source to hash.
            path = tmp_path / f"readme_block_{index}.py"
            path.write_text(body)
            exec(compile(body, str(path), "exec"), namespace)


def test_readme_shell_examples_marked_to_run_succeed() -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    marked = [body for _, body, run in _blocks() if run]
    assert marked, "no shell example is marked <!-- readme-test: run -->"
    for body in marked:
        for command in filter(None, (line.strip() for line in body.splitlines())):
            done = subprocess.run(command, shell=True, cwd=ROOT, env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"
