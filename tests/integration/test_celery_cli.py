"""Celery's own command line against a real worker: `celery call`, `celery result` and
`celery inspect ping`, from a project directory where only the package is importable (with
`--config orchestrator.client.celeryconfig`, beside the project's own `celeryconfig.py`) and
from a checkout of the repository (no option: Celery finds the worker's `celeryconfig.py`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BROKER_URL, REDIS_URL, ROOT, TEST_IMAGE, WorkerProcess

CLIENT_CONFIG = ("--config", "orchestrator.client.celeryconfig")


def celery(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def base_env() -> dict[str, str]:
    """This process's environment without Celery's or the orchestrator's settings, plus the
    broker and result backend of the workers under test."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ORCHESTRATOR_", "CELERY_", "PYTHONPATH"))
    }
    env["ORCHESTRATOR_BROKER_URL"] = BROKER_URL
    env["ORCHESTRATOR_RESULT_BACKEND"] = REDIS_URL
    return env


@pytest.fixture
def project(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A user's project with its own `celeryconfig.py`, where the orchestrator package is
    importable as if installed and none of the repository's top-level modules are."""
    site = tmp_path / "site-packages"
    site.mkdir()
    (site / "orchestrator").symlink_to(ROOT / "orchestrator", target_is_directory=True)
    directory = tmp_path / "project"
    directory.mkdir()
    (directory / "celeryconfig.py").write_text("raise RuntimeError('the project config')\n")
    yield directory, {**base_env(), "PYTHONPATH": str(site)}


def request(session_id: str, text: str) -> str:
    return json.dumps(
        [
            {
                "tool_name": "celery-cli",
                "session_id": session_id,
                "image": TEST_IMAGE,
                "command": ["echo", text],
            }
        ]
    )


def call_and_wait(cwd: Path, env: dict[str, str], options: tuple[str, ...], text: str) -> str:
    """`celery call` a tool run and `celery result` it: the result as printed."""
    session_id = f"it-cli-{uuid.uuid4().hex[:8]}"
    call_args = ("call", "orchestrator.tools.execute", "--args", request(session_id, text))
    called = celery(*options, *call_args, cwd=cwd, env=env)
    assert called.returncode == 0, called.stderr
    execution_id = called.stdout.strip()
    assert str(uuid.UUID(execution_id)) == execution_id

    shown = celery(*options, "result", execution_id, cwd=cwd, env=env)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def test_celery_call_and_result_where_the_package_is_installed(
    worker: WorkerProcess, project: tuple[Path, dict[str, str]]
) -> None:
    directory, env = project

    printed = call_and_wait(directory, env, CLIENT_CONFIG, "from the celery command")

    assert "'status': 'succeeded'" in printed
    assert "'stdout': 'from the celery command\\n'" in printed
    assert f"'host': '{worker.host_name}'" in printed


def test_celery_inspect_ping_where_the_package_is_installed(
    worker: WorkerProcess, project: tuple[Path, dict[str, str]]
) -> None:
    directory, env = project

    pinged = celery(*CLIENT_CONFIG, "inspect", "ping", "-t", "5", cwd=directory, env=env)

    assert pinged.returncode == 0, pinged.stderr
    assert "pong" in pinged.stdout


def test_the_celery_config_environment_variable_does_what_the_option_does(
    worker: WorkerProcess, project: tuple[Path, dict[str, str]]
) -> None:
    directory, env = project
    env = {**env, "CELERY_CONFIG_MODULE": "orchestrator.client.celeryconfig"}

    printed = call_and_wait(directory, env, (), "configured by the environment")

    assert "'stdout': 'configured by the environment\\n'" in printed


def test_plain_celery_call_and_result_in_a_checkout(worker: WorkerProcess) -> None:
    """The newcomer's command, as Celery's docs write it: no -A, no --config."""
    printed = call_and_wait(ROOT, base_env(), (), "from the checkout")

    assert "'status': 'succeeded'" in printed
    assert "'stdout': 'from the checkout\\n'" in printed
