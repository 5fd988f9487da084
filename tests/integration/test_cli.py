"""The ``orchestrator`` command as a subprocess against a real worker, Redis and Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.integration.harness import ROOT, TEST_IMAGE, WorkerProcess, settings_env


def cli_env(worker: WorkerProcess) -> dict[str, str]:
    return {**os.environ, **settings_env(worker.host_name)}


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def orchestrator(worker: WorkerProcess, *args: str, timeout: float = 120) -> Any:
    """Run the command to completion; the CompletedProcess (text output)."""
    return subprocess.run(
        cli_command(*args),
        cwd=ROOT,
        env=cli_env(worker),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_args(session_id: str, script: str, *extra: str) -> list[str]:
    return ["tool", "run", "--image", TEST_IMAGE, "--session", session_id, *extra,
            "--", "sh", "-c", script]  # fmt: skip


def detach(worker: WorkerProcess, session_id: str, script: str) -> str:
    done = orchestrator(worker, *run_args(session_id, script, "--detach"))
    assert done.returncode == 0, done.stderr
    execution_id = done.stdout.strip()
    assert execution_id and "\n" not in execution_id
    return execution_id


def show_until(
    worker: WorkerProcess, execution_id: str, key: str, values: set[str], timeout: float = 60
) -> dict[str, Any]:
    """Poll ``tool show --json`` until ``key`` takes one of ``values``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        done = orchestrator(worker, "tool", "show", execution_id, "--json")
        # Exit 2 ("unknown execution id") while no worker has picked the run up yet.
        if done.returncode == 0:
            last = json.loads(done.stdout)
            if last.get(key) in values:
                return dict(last)
        time.sleep(0.3)
    raise AssertionError(f"{key} never reached {values}; last {last}")


def test_run_json_gives_the_parsed_result(worker: WorkerProcess, session_id: str) -> None:
    done = orchestrator(worker, *run_args(session_id, """echo '{"x": 1}'""", "--json"))

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "succeeded"
    assert result["result"] == {"x": 1}
    assert result["exit_code"] == 0
    assert result["host"]  # any worker on this broker may take it (tools queue is shared)
    assert "Traceback" not in done.stderr


def test_failing_tool_exits_1_with_human_output(worker: WorkerProcess, session_id: str) -> None:
    done = orchestrator(worker, *run_args(session_id, "echo bad >&2; exit 3"))

    assert done.returncode == 1
    assert "failed" in done.stdout
    assert "--- stderr ---\nbad\n" in done.stdout
    assert "Traceback" not in done.stderr


def test_detach_then_show_and_logs(worker: WorkerProcess, session_id: str) -> None:
    execution_id = detach(worker, session_id, "echo hello; echo warn >&2")

    result = show_until(worker, execution_id, "status", {"succeeded"})
    assert result["execution_id"] == execution_id
    assert result["stdout"] == "hello\n"

    logs = orchestrator(worker, "tool", "logs", execution_id)
    assert logs.returncode == 0
    assert (logs.stdout, logs.stderr) == ("hello\n", "warn\n")

    human = orchestrator(worker, "tool", "show", execution_id)
    assert human.returncode == 0
    assert "succeeded" in human.stdout


def test_follow_prints_the_first_line_before_the_run_ends(
    worker: WorkerProcess, session_id: str
) -> None:
    # A long gap, so a CLI that starts late on a loaded machine still sees it.
    execution_id = detach(worker, session_id, "echo first; sleep 6; echo second")
    follower = subprocess.Popen(
        cli_command("tool", "logs", "--follow", execution_id),
        cwd=ROOT,
        env=cli_env(worker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        arrivals = [(line, time.monotonic()) for line in follower.stdout]
        assert follower.wait(30) == 0, follower.stderr.read() if follower.stderr else ""
    finally:
        if follower.poll() is None:
            follower.kill()
    assert [line for line, _ in arrivals] == ["first\n", "second\n"]
    assert arrivals[1][1] - arrivals[0][1] > 2.5, "the first line waited for the end of the run"


def test_cancel_stops_a_running_tool(worker: WorkerProcess, session_id: str) -> None:
    execution_id = detach(worker, session_id, "sleep 60")
    show_until(worker, execution_id, "state", {"RUNNING"})

    started = time.monotonic()
    done = orchestrator(worker, "tool", "cancel", execution_id, "--json")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["execution_id"] == execution_id
    assert reply["cancelled"] is True

    result = show_until(worker, execution_id, "status", {"cancelled"}, timeout=30)
    assert result["status"] == "cancelled"
    assert time.monotonic() - started < 30


def test_unknown_execution_id_is_a_clean_error(worker: WorkerProcess) -> None:
    done = orchestrator(worker, "tool", "show", "no-such-execution")
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown execution id 'no-such-execution'")
    assert "Traceback" not in done.stderr


def test_doctor_sees_the_worker(worker: WorkerProcess) -> None:
    done = orchestrator(worker, "doctor", "--skip", "janitor", "--skip", "flower")
    assert done.returncode == 0, done.stdout
    assert worker.host_name in done.stdout


@pytest.mark.usefixtures("services")
def test_unreachable_broker_fails_fast_with_the_fix(worker: WorkerProcess) -> None:
    started = time.monotonic()
    done = orchestrator(
        worker, "--broker", "redis://127.0.0.1:1/0", *run_args("s", "true"), timeout=60
    )
    assert done.returncode == 69  # EX_UNAVAILABLE, apart from usage errors (2)
    assert done.stderr.startswith("error: cannot reach the broker at redis://127.0.0.1:1/0")
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 20


def test_stats_of_one_running_tool_by_its_execution_id(
    worker: WorkerProcess, session_id: str
) -> None:
    execution_id = detach(worker, session_id, "sleep 30")
    try:
        show_until(worker, execution_id, "state", {"RUNNING"})
        done = orchestrator(worker, "stats", execution_id, "--json", "--wait", "30")
        assert done.returncode == 0, done.stderr
        stats = json.loads(done.stdout)
        # A fresh container of the session, or a warm one from the image's pool.
        assert (stats["kind"], stats["session_id"]) in {("tool", session_id), ("pool", None)}
        assert stats["status"] == "running" and stats["memory_limit_mb"] > 0

        every = orchestrator(worker, "stats", "--wait", "30", "--json")
        assert every.returncode == 0, every.stderr
        names = [c["container_id"] for c in json.loads(every.stdout)["containers"]]
        assert stats["container_id"] in names
    finally:
        orchestrator(worker, "tool", "cancel", execution_id)
    show_until(worker, execution_id, "status", {"cancelled"}, timeout=30)

    gone = orchestrator(worker, "stats", "no-such-container", "--wait", "30")
    assert gone.returncode == 2 and gone.stderr.startswith("error: ")
    assert "Traceback" not in gone.stderr
