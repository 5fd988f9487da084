"""The ``orchestrator`` command against a fake client: parsing, output, exit codes, errors."""

from __future__ import annotations

import argparse
import http.server
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.exceptions
from kombu.exceptions import OperationalError

import orchestrator
from orchestrator import cli
from orchestrator.cli import stack
from orchestrator.client.sync import OrchestratorClient
from orchestrator.errors import ImageNotFound, OrchestratorTimeout
from orchestrator.models import (
    AggregateStats,
    CleanupReport,
    ContainerStats,
    RelicInfo,
    ToolExecutionRequest,
    ToolExecutionResult,
)
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.state.logs import LiveLog
from orchestrator.state.registry import HostRegistry

RUN = ["tool", "run", "--image", "busybox", "--session", "s1"]


def make_result(**changes: Any) -> ToolExecutionResult:
    data: dict[str, Any] = {
        "execution_id": "exec-1",
        "tool_name": "busybox",
        "session_id": "s1",
        "status": "succeeded",
        "exit_code": 0,
        "result": {"x": 1},
        "stdout": 'hello\n{"x": 1}\n',
        "stderr": "warn\n",
        "duration_seconds": 1.5,
        "host": "host-a",
        "started_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    data.update(changes)
    return ToolExecutionResult(**data)


def make_relic(**changes: Any) -> RelicInfo:
    data: dict[str, Any] = {
        "relic_id": "relic-1",
        "relic_name": "db",
        "session_id": "s1",
        "container_name": "orch-relic-db",
        "status": "running",
        "healthy": True,
        "internal_url": "http://db:8000",
        "host": "host-a",
    }
    data.update(changes)
    return RelicInfo(**data)


def make_stats(name: str, **changes: Any) -> ContainerStats:
    data: dict[str, Any] = {
        "container_id": f"id-{name}",
        "name": name,
        "status": "running",
        "kind": "tool",
        "session_id": "s1",
        "host": "host-a",
    }
    data.update(changes)
    return ContainerStats(**data)


class FakeHandle:
    """An ExecutionHandle whose state walks through ``states`` (the last one sticks)."""

    def __init__(self, execution_id: str, states: list[str], result: Any) -> None:
        self.id = execution_id
        self._states = list(states)
        self._result = result
        self.waited = False

    @property
    def state(self) -> str:
        return self._states.pop(0) if len(self._states) > 1 else self._states[0]

    def result(self, timeout: float | None = None) -> ToolExecutionResult:
        self.waited = True
        if isinstance(self._result, Exception):
            raise self._result
        return self._result


class FakeConnection:
    def __init__(self, app: FakeApp) -> None:
        self.app = app

    def __enter__(self) -> FakeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def ensure_connection(self, max_retries: int | None = None) -> None:
        if self.app.broker_error is not None:
            raise self.app.broker_error


class FakeControl:
    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = [{"celery@host-a": {"ok": "pong"}}]

    def ping(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        return self.replies


class FakeApp:
    """The parts of a Celery app ``doctor`` uses."""

    def __init__(self) -> None:
        self.broker_error: Exception | None = None
        self.control = FakeControl()

    def connection_for_write(self) -> FakeConnection:
        return FakeConnection(self)


class FakeClient:
    """Implements the OrchestratorClient methods the CLI calls, with canned models."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.redis = fakeredis.FakeRedis()
        self.app = FakeApp()
        self.settings = Settings(host_name="host-a")
        self.states = ["PENDING", "PENDING", "PULLING", "RUNNING", "SUCCESS"]
        self.result: Any = make_result()
        self.execution: Any = make_result()
        self.logs = {"stdout": "out\n", "stderr": "err\n"}
        self.relics = [make_relic()]
        self.aggregate = AggregateStats()
        self.raise_on: dict[str, Exception] = {}
        self.handle: FakeHandle | None = None
        self.closed = False
        self.settings_seen: list[Settings] = []

    # The registry readers are the real client's, over this fake's fakeredis.
    follow_logs = OrchestratorClient.follow_logs
    live_logs = OrchestratorClient.live_logs
    has_live_logs = OrchestratorClient.has_live_logs
    ping_registry = OrchestratorClient.ping_registry
    live_hosts = OrchestratorClient.live_hosts
    host_heartbeat = OrchestratorClient.host_heartbeat
    janitor_last_run = OrchestratorClient.janitor_last_run

    def _record(self, name: str, value: Any) -> None:
        self.calls.append((name, value))
        if name in self.raise_on:
            raise self.raise_on[name]

    def called(self, name: str) -> list[Any]:
        return [value for called, value in self.calls if called == name]

    def execute_tool(self, request: ToolExecutionRequest) -> FakeHandle:
        self._record("execute_tool", request)
        self.handle = FakeHandle("exec-1", self.states, self.result)
        return self.handle

    def get_execution(self, execution_id: str) -> Any:
        self._record("get_execution", execution_id)
        return self.execution

    def get_logs(self, execution_id: str) -> dict[str, str]:
        self._record("get_logs", execution_id)
        return dict(self.logs)

    def cancel_tool(self, execution_id: str, timeout: float | None = 30) -> dict[str, Any]:
        self._record("cancel_tool", (execution_id, timeout))
        return {"execution_id": execution_id, "cancelled": True, "status": "cancelling"}

    def start_relic(self, request: Any, timeout: float | None = None) -> RelicInfo:
        self._record("start_relic", (request, timeout))
        return self.relics[0]

    def list_relics(self, session_id: str | None = None, timeout: float | None = 60) -> Any:
        self._record("list_relics", (session_id, timeout))
        return self.relics

    def get_relic(self, relic_id: str, timeout: float | None = 60) -> RelicInfo:
        self._record("get_relic", relic_id)
        return self.relics[0]

    def stop_relic(self, relic_id: str, timeout: float | None = 120) -> RelicInfo:
        self._record("stop_relic", relic_id)
        return make_relic(status="stopped", healthy=False)

    def remove_relic(self, relic_id: str, timeout: float | None = 120) -> dict[str, Any]:
        self._record("remove_relic", relic_id)
        return {"relic_id": relic_id, "removed": True}

    def stats(self, timeout: float | None = 60) -> AggregateStats:
        self._record("stats", timeout)
        return self.aggregate

    def container_stats(self, container: str, timeout: float | None = 60) -> ContainerStats:
        self._record("container_stats", (container, timeout))
        return make_stats(container)

    def cleanup_session(
        self, session_id: str, force: bool = True, timeout: float | None = 300
    ) -> CleanupReport:
        self._record("cleanup_session", (session_id, force))
        return CleanupReport(session_id=session_id, containers_removed=2, networks_removed=1)

    def cleanup_networks(self, timeout: float | None = 300) -> dict[str, Any]:
        self._record("cleanup_networks", timeout)
        return {"removed": 3, "errors": []}

    def touch_session(
        self, session_id: str, extend_seconds: float = 3600, timeout: float | None = 60
    ) -> dict[str, Any]:
        self._record("touch_session", (session_id, extend_seconds, timeout))
        return {"session_id": session_id, "expires_at": 1700000000.0}

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()

    def factory(settings: Settings) -> FakeClient:
        client.settings_seen.append(settings)
        client.settings = settings
        return client

    for name in list(os.environ):
        if name.startswith("ORCHESTRATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(cli, "_make_client", factory)
    monkeypatch.setattr(cli.tools, "POLL_SECONDS", 0)
    return client


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- tool run: request building -------------------------------------------------------------


def test_run_flags_become_the_request(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    argv = [
        *RUN,
        "--tool-name", "echoer",
        "--param", "N=3",
        "--param", 'OBJ={"k": [1, 2]}',
        "--param", "TEXT=hello world",
        "--param", "FLAG=true",
        "--secret", "TOKEN=0123",
        "--env", "PLAIN=x=y",
        "--memory-mb", "256", "--cpu", "0.5", "--timeout", "30", "--pids", "64",
        "--network", "bridge", "--no-cleanup",
        "--", "sh", "-c", "echo --json",
    ]  # fmt: skip
    code, _, _ = run(capsys, *argv)

    assert code == 0
    (request,) = fake.called("execute_tool")
    assert request.tool_name == "echoer"
    assert request.session_id == "s1"
    assert request.image == "busybox"
    assert request.parameters == {"N": 3, "OBJ": {"k": [1, 2]}, "TEXT": "hello world", "FLAG": True}
    assert request.secret_parameters == {"TOKEN": "0123"}
    assert request.environment == {"PLAIN": "x=y"}
    limits = request.resource_limits
    assert (limits.memory_mb, limits.cpu_limit, limits.timeout_seconds) == (256, 0.5, 30)
    assert limits.pids_limit == 64
    assert request.network_mode == "bridge"
    assert request.cleanup is False
    assert request.command == ["sh", "-c", "echo --json"]


def test_run_defaults_tool_name_from_image_and_leaves_command_unset(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    run(capsys, "tool", "run", "--image", "registry:5000/team/my-tool:1.2", "--session", "s1")
    (request,) = fake.called("execute_tool")
    assert request.tool_name == "my-tool"
    assert request.command is None
    assert request.resource_limits.memory_mb == 512


def test_run_request_file_is_overlaid_by_flags(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    path = tmp_path / "request.json"
    path.write_text(
        json.dumps(
            {
                "tool_name": "from-file",
                "session_id": "file-session",
                "image": "busybox",
                "parameters": {"A": 1},
                "resource_limits": {"memory_mb": 128, "cpu_limit": 0.25},
            }
        )
    )
    run(capsys, "tool", "run", "--request", str(path), "--session", "s2", "--param", "B=2",
        "--cpu", "2")  # fmt: skip
    (request,) = fake.called("execute_tool")
    assert request.tool_name == "from-file"
    assert request.session_id == "s2"
    assert request.parameters == {"A": 1, "B": 2}
    assert (request.resource_limits.memory_mb, request.resource_limits.cpu_limit) == (128, 2.0)


def test_run_request_from_stdin(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    body = {"tool_name": "t", "session_id": "s", "image": "busybox", "command": ["true"]}
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(body)))
    code, _, _ = run(capsys, "tool", "run", "--request", "-")
    assert code == 0
    assert fake.called("execute_tool")[0].command == ["true"]


def test_run_dockerfile_inline_builds_instead_of_image(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    run(capsys, "tool", "run", "--session", "s1", "--dockerfile-inline", "FROM busybox\n")
    (request,) = fake.called("execute_tool")
    assert request.image is None
    assert request.build is not None and request.build.dockerfile_inline == "FROM busybox\n"
    assert request.tool_name == "tool"


# -- tool run: output and exit codes --------------------------------------------------------


def test_run_prints_human_result_and_exits_0(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, *RUN, "--", "echo")

    assert code == 0
    assert "status:" in out and "succeeded" in out
    assert "exit code:" in out and "duration:" in out and "1.50 s" in out
    assert "host-a" in out
    assert 'result:\n{\n  "x": 1\n}' in out
    assert "--- stdout ---\nhello\n" in out
    assert "--- stderr ---\nwarn\n" in out
    assert fake.closed


def test_run_json_prints_the_full_result(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, *RUN, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["status"] == "succeeded"
    assert data["result"] == {"x": 1}
    assert data["execution_id"] == "exec-1"
    assert ToolExecutionResult.model_validate(data) == fake.result


@pytest.mark.parametrize("status", ["failed", "timed_out", "oom_killed", "cancelled", "error"])
def test_run_that_did_not_succeed_exits_1(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], status: str
):
    fake.result = make_result(status=status, exit_code=3, result=None, error="exit code 3")
    code, out, _ = run(capsys, *RUN)
    assert code == 1
    assert status in out
    assert "exit code 3" in out


def test_detach_prints_only_the_execution_id(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, *RUN, "--detach")
    assert (code, out, err) == (0, "exec-1\n", "")
    assert fake.handle is not None and not fake.handle.waited


def test_detach_json(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, *RUN, "--detach", "--json")
    assert code == 0
    assert json.loads(out) == {"execution_id": "exec-1"}


def test_progress_is_plain_state_lines_when_stderr_is_not_a_tty(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    _, _, err = run(capsys, *RUN)
    states = [line.split()[0] for line in err.splitlines()]
    assert states == ["PENDING", "PULLING", "RUNNING"]


def test_quiet_hides_progress(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    _, _, err = run(capsys, *RUN, "-q")
    assert err == ""


def test_progress_on_a_tty_is_one_spinner_line_with_state_path_and_elapsed_time():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    progress = cli._Progress(stream)
    for state in ["PENDING", "PENDING", "PULLING", "RUNNING"]:
        progress.update(state)
    progress.close()
    text = stream.getvalue()
    assert "\n" not in text
    assert text.count("\r") == 5
    assert "PENDING -> PULLING -> RUNNING" in text
    assert "0.0s" in text
    assert text.endswith("\r\x1b[K")


# -- errors -----------------------------------------------------------------------------------


def assert_clean_error(
    code: int, out: str, err: str, *needles: str, exit_code: int = cli.errors.EXIT_USAGE
) -> None:
    assert code == exit_code
    assert err.splitlines()[-1].startswith("error: ")
    assert "Traceback" not in err and "Traceback" not in out
    for needle in needles:
        assert needle in err


def assert_error_with_log(code: int, out: str, err: str, *needles: str) -> None:
    """A clean error over several lines (a log tail), ending with how to stop what runs."""
    assert code == 2
    assert err.startswith("error: ") and out == ""
    assert "Traceback" not in err
    assert err.rstrip().endswith("what started keeps running: `orchestrator down` stops it")
    for needle in needles:
        assert needle in err


def test_invalid_request_names_the_field(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, *RUN, "--param", "1BAD=x")
    assert_clean_error(code, out, err, "parameters", "1BAD")
    assert not fake.called("execute_tool")


def test_missing_image_is_explained(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, "tool", "run", "--session", "s1")
    assert_clean_error(code, out, err, "image")


def test_malformed_pair_names_the_flag(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, *RUN, "--env", "NOEQUALS")
    assert_clean_error(code, out, err, "--env", "KEY=VALUE")


def test_unreadable_request_file(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    code, out, err = run(capsys, "tool", "run", "--request", str(bad))
    assert_clean_error(code, out, err, "--request", "not valid JSON")


def test_timeout_tells_how_to_start_a_worker(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    fake.raise_on["cancel_tool"] = OrchestratorTimeout("no result for task x after 7 s")
    code, out, err = run(capsys, "--timeout", "7", "tool", "cancel", "exec-1")
    assert_clean_error(
        code, out, err, "no worker answered within 7 s", "celery -A worker worker", exit_code=75
    )
    assert "orchestrator doctor" in err
    assert fake.called("cancel_tool") == [("exec-1", 7.0)]


def test_run_still_pending_after_wait_timeout_means_no_worker(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.states = ["PENDING"]
    code, out, err = run(capsys, *RUN, "--wait-timeout", "0")
    assert_clean_error(
        code, out, err, "no worker answered within 0 s", "celery -A worker worker", exit_code=75
    )


def test_run_still_running_after_wait_timeout_says_how_to_follow_it(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.states = ["RUNNING"]
    code, out, err = run(capsys, *RUN, "--wait", "0")
    assert_clean_error(code, out, err, "still RUNNING", "tool logs --follow exec-1", exit_code=75)
    assert "raise --wait" in err


def test_broker_down_is_explained_with_the_url(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.raise_on["execute_tool"] = OperationalError("Error 111 connecting to 127.0.0.1:1.")
    code, out, err = run(capsys, "--broker", "redis://:secret@127.0.0.1:1/0", *RUN)
    assert_clean_error(
        code, out, err, "cannot reach the broker at redis://", "127.0.0.1:1/0", exit_code=69
    )
    assert "is Redis running?" in err and "--broker" in err
    assert "secret" not in err
    assert fake.settings_seen[0].broker_url == "redis://:secret@127.0.0.1:1/0"


def test_result_backend_down_is_explained(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    # Celery's async result consumer gives up with a RuntimeError caused by redis-py's error.
    try:
        try:
            raise redis.exceptions.ConnectionError("Connection refused")
        except redis.exceptions.ConnectionError as cause:
            raise RuntimeError("Retry limit exceeded") from cause
    except RuntimeError as exc:
        fake.raise_on["stats"] = exc
    code, out, err = run(capsys, "--backend", "redis://127.0.0.1:2/0", "stats")
    assert_clean_error(
        code, out, err, "result backend at redis://127.0.0.1:2/0", "Redis running", exit_code=69
    )
    assert "--backend" in err


def test_registry_redis_down_is_explained(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    fake.raise_on["get_execution"] = redis.exceptions.ConnectionError("Connection refused")
    code, out, err = run(capsys, "tool", "logs", "-f", "exec-1")
    assert_clean_error(
        code, out, err, "cannot reach the result backend at redis://localhost", exit_code=69
    )


def test_unrelated_runtime_error_is_not_hidden(fake: FakeClient):
    fake.raise_on["stats"] = RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["stats"])


def test_other_orchestrator_errors_show_type_and_message(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.result = ImageNotFound("image nope:1 not found; check the name or `docker pull` it")
    code, out, err = run(capsys, *RUN)
    assert_clean_error(code, out, err, "ImageNotFound: image nope:1 not found")


def test_invalid_settings_in_the_environment(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ORCHESTRATOR_WORKER_CONCURRENCY", "lots")
    code, out, err = run(capsys, "stats")
    assert_clean_error(code, out, err, "ORCHESTRATOR_WORKER_CONCURRENCY")


# -- tool show / logs / cancel ----------------------------------------------------------------


def test_show_finished_execution(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "tool", "show", "exec-1", "--json")
    assert code == 0
    assert json.loads(out)["status"] == "succeeded"


def test_show_running_execution(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    fake.execution = {"execution_id": "exec-1", "state": "RUNNING", "host": "host-a"}
    code, out, _ = run(capsys, "tool", "show", "exec-1")
    assert code == 0
    assert out.splitlines()[0] == "execution_id: exec-1"
    assert "RUNNING" in out and "host-a" in out


def test_show_unknown_execution_id(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    fake.execution = {"execution_id": "nope", "state": "PENDING"}
    code, out, err = run(capsys, "tool", "show", "nope")
    assert_clean_error(code, out, err, "unknown execution id 'nope'")


def test_logs_split_stdout_and_stderr(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, err = run(capsys, "tool", "logs", "exec-1")
    assert (code, out, err) == (0, "out\n", "err\n")


def test_logs_json(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    _, out, _ = run(capsys, "tool", "logs", "exec-1", "--json")
    assert json.loads(out) == {"execution_id": "exec-1", "stdout": "out\n", "stderr": "err\n"}


def test_logs_of_a_running_execution_come_from_the_live_stream(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.logs = {"stdout": "", "stderr": ""}
    fake.execution = {"execution_id": "exec-1", "state": "RUNNING"}
    LiveLog(fake.redis, "exec-1", 1 << 20, 60).append("stdout", b"so far\n")
    _, out, _ = run(capsys, "tool", "logs", "exec-1")
    assert out == "so far\n"


def test_follow_prints_live_chunks_until_the_end_marker(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.execution = {"execution_id": "exec-1", "state": "RUNNING"}
    live = LiveLog(fake.redis, "exec-1", 1 << 20, 60)
    live.append("stdout", b"one\n")
    live.append("stderr", b"oops\n")
    live.append("stdout", b"two\n")
    live.close()
    code, out, err = run(capsys, "tool", "logs", "--follow", "exec-1")
    assert (code, out, err) == (0, "one\ntwo\n", "oops\n")
    assert not fake.called("get_logs")


def test_follow_with_nothing_streamed_falls_back_to_the_result(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    # Finished, and its live stream has expired: no waiting for an end marker.
    code, out, err = run(capsys, "tool", "logs", "-f", "exec-1")
    assert (code, out, err) == (0, "out\n", "err\n")


def test_cancel(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "tool", "cancel", "exec-1")
    assert code == 0
    assert "cancel requested for exec-1: cancelling" in out
    _, out, _ = run(capsys, "tool", "cancel", "exec-1", "--json")
    assert json.loads(out)["cancelled"] is True


# -- relics ------------------------------------------------------------------------------------


def test_relic_table(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    fake.relics = [
        make_relic(),
        make_relic(relic_id="relic-22", relic_name="cache", healthy=False, internal_url=None),
    ]
    code, out, _ = run(capsys, "relic", "ls", "--session", "s1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split("  ")[0] == "RELIC ID"
    for header in ["NAME", "SESSION", "STATUS", "HEALTHY", "HOST", "INTERNAL URL"]:
        assert header in lines[0]
    assert lines[1].split() == ["relic-1", "db", "s1", "running", "yes", "host-a", "http://db:8000"]
    assert lines[2].split() == ["relic-22", "cache", "s1", "running", "no", "host-a", "-"]
    assert lines[0].index("NAME") == lines[1].index("db") == lines[2].index("cache")
    assert fake.called("list_relics") == [("s1", 60.0)]


def test_relic_ls_json(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    _, out, _ = run(capsys, "relic", "ls", "--json")
    assert json.loads(out)[0]["relic_id"] == "relic-1"


def test_relic_start_request(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(
        capsys, "relic", "start", "--image", "busybox", "--session", "s1", "--name", "db",
        "--port", "9000", "--health", "/ready", "--env", "A=1", "--publish", "9000:19000",
        "--memory-mb", "256", "--", "httpd", "-f",
    )  # fmt: skip
    assert code == 0
    ((request, timeout),) = fake.called("start_relic")
    assert request.relic_name == "db" and request.port == 9000
    assert request.health_check_endpoint == "/ready"
    assert request.environment == {"A": "1"}
    assert request.ports == {9000: 19000}
    assert (request.resource_limits.memory_mb, request.resource_limits.cpu_limit) == (256, 2.0)
    assert request.command == ["httpd", "-f"]
    assert timeout == request.health_timeout_seconds + cli.RUN_WAIT_SLACK_SECONDS
    assert "http://db:8000" in out


def test_relic_show_stop_rm(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    assert "relic-1" in run(capsys, "relic", "show", "relic-1")[1]
    assert "stopped" in run(capsys, "relic", "stop", "relic-1")[1]
    assert run(capsys, "relic", "rm", "relic-1")[1] == "removed relic-1\n"


# -- stats, cleanup, sessions ------------------------------------------------------------------


def test_stats_table_has_a_row_per_container_and_totals(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.aggregate = AggregateStats(
        containers=[
            make_stats("tool-a", cpu_percent=50.0, memory_used_mb=100.0, memory_limit_mb=512,
                       memory_percent=19.5, network_rx_mb=1.0, disk_read_mb=2.0),
            make_stats("relic-b", kind="relic", cpu_percent=25.5, memory_used_mb=300.0,
                       memory_limit_mb=1024, memory_percent=29.3, network_tx_mb=0.5),
        ],
        hosts=["host-a"],
    )  # fmt: skip
    code, out, _ = run(capsys, "stats")
    assert code == 0
    lines = out.splitlines()
    for header in cli.STATS_HEADERS:
        assert header in lines[0]
    assert lines[1].split()[:5] == ["tool-a", "tool", "s1", "host-a", "50.0"]
    assert lines[2].split()[:2] == ["relic-b", "relic"]
    total = lines[3].split()
    # 50 + 25.5 CPU; 100 + 300 MB of 512 + 1024 MB = 26.0 %; net 1.00/0.50; block 2.00/0.00.
    assert total[:2] == ["TOTAL", "-"]
    assert total[4:10] == ["75.5", "400.0", "1536", "26.0", "1.00/0.50", "2.00/0.00"]
    assert total[10:] == ["2", "containers"]
    assert "hosts: host-a" in out


def test_stats_json(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    fake.aggregate = AggregateStats(containers=[make_stats("a")])
    _, out, _ = run(capsys, "stats", "--json")
    assert AggregateStats.model_validate_json(out) == fake.aggregate


def test_stats_watch_refreshes_until_ctrl_c(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    rounds = iter([AggregateStats(), AggregateStats(), KeyboardInterrupt()])

    def stats(timeout: float | None = 60) -> AggregateStats:
        item = next(rounds)
        if isinstance(item, BaseException):
            raise item
        return item

    monkeypatch.setattr(fake, "stats", stats)
    code, out, _ = run(capsys, "stats", "--watch", "--interval", "0")
    assert code == 0
    assert out.count(cli.CLEAR_SCREEN) == 2
    assert out.count("TOTAL") == 2


def test_stats_of_one_container_by_id(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "stats", "relic-1")
    assert code == 0
    assert fake.called("container_stats") == [("relic-1", 60.0)] and not fake.called("stats")
    header, row = out.splitlines()
    assert header.split()[:3] == ["NAME", "KIND", "SESSION"] and row.startswith("relic-1 ")
    assert "TOTAL" not in out

    _, out, _ = run(capsys, "stats", "relic-1", "--json", "--wait", "5")
    assert ContainerStats.model_validate_json(out) == make_stats("relic-1")
    assert fake.called("container_stats")[-1] == ("relic-1", 5.0)


def test_wait_goes_before_or_after_the_command_and_the_old_timeout_still_works_before(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    for argv in (["stats", "--wait", "5"], ["--wait", "6", "stats"], ["--timeout", "7", "stats"]):
        code, _, err = run(capsys, *argv)
        assert code == 0, err
    assert fake.called("stats") == [5.0, 6.0, 7.0]
    run(capsys, "stats")
    assert fake.called("stats")[-1] == cli.parser.DEFAULT_WAIT_SECONDS


def test_timeout_after_a_command_is_refused_with_a_pointer_to_wait(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    with pytest.raises(SystemExit) as exited:
        cli.main(["stats", "--timeout", "5"])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert (
        "unrecognized arguments: --timeout" in err and "the wait for an answer is --wait S" in err
    )
    assert not fake.called("stats")


def test_wait_is_the_wait_of_a_tool_run_too(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    fake.states = ["RUNNING"]
    for argv in ([*RUN, "--wait", "0"], ["--wait", "0", *RUN]):
        code, _, err = run(capsys, *argv)
        assert code == 75 and "after 0 s" in err
    fake.states = ["SUCCESS"]
    code, _, _ = run(capsys, *RUN, "--memory-mb", "64")  # its own default: limit + slack
    assert code == 0


def test_cleanup_session_forces_by_default(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "cleanup", "session", "s1")
    assert code == 0
    assert "removed 2 containers, 1 networks" in out
    run(capsys, "cleanup", "session", "s1", "--graceful", "--json")
    assert fake.called("cleanup_session") == [("s1", True), ("s1", False)]


def test_cleanup_networks(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "cleanup", "networks", "--json")
    assert (code, json.loads(out)) == (0, {"removed": 3, "errors": []})


def test_session_touch(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "--timeout", "5", "session", "touch", "s1", "--extend", "600")
    assert code == 0
    assert "session s1 expires at" in out
    assert fake.called("touch_session") == [("s1", 600.0, 5.0)]


# -- helpers and completion --------------------------------------------------------------------


def test_table_aligns_columns_and_right_aligns_numbers():
    text = cli._table([["a", 1.5, None], ["long-name", 10, "x"]], ["NAME", "N", "X"], right=[1])
    assert text.splitlines() == [
        "NAME         N  X",
        "a          1.5  -",
        "long-name   10  x",
    ]


def test_version(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"orchestrator {orchestrator.__version__}\n"


def test_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    codes = out.split("exit codes:\n", 1)[1]
    for code, meaning in cli.errors.EXIT_CODES.items():
        assert f"  {code:<4} {meaning}" in codes


def walk(parser: argparse.ArgumentParser, path: str = "orchestrator") -> Iterator[tuple[str, Any]]:
    """``(command path, action)`` for every action of every (sub)command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, action


def test_every_option_of_every_command_has_help():
    missing = [
        f"{path} {'/'.join(action.option_strings)}"
        for path, action in walk(cli.build_parser())
        if action.option_strings and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []
    assert len({path for path, _ in walk(cli.build_parser())}) > 20


def shell(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is not installed")
        pytest.skip(f"{name} is not installed")
    return found


def completion(capsys: pytest.CaptureFixture[str], name: str, tmp_path: Path) -> Path:
    code, out, _ = run(capsys, "completion", name)
    assert code == 0
    script = tmp_path / f"completion.{name}"
    script.write_text(out)
    return script


BASH_COMPLETE = """source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1))
_orchestrator; printf '%s\n' "${COMPREPLY[@]}" """


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (["relic", "st"], {"start", "stop"}),
        (["tool", "run", "--network", ""], {"none", "bridge", "session"}),
        (["completion", ""], {"bash", "zsh", "fish"}),
        (["stats", "--w"], {"--watch", "--wait"}),
    ],
)
def test_bash_completes_commands_options_and_choices(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, line: list[str], expected: set[str]
):
    script = completion(capsys, "bash", tmp_path)
    argv = [shell("bash"), "-c", BASH_COMPLETE, "-", str(script), "orchestrator", *line]
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    assert expected <= set(done.stdout.split()) <= expected | {"-h", "--help"}


ZSH_COMPLETE = """compdef() { : }
_describe() { print -l -- "${(@P)${@[-1]}}" }
compadd() { [[ $1 == -- ]] && shift; print -l -- "$@" }
_files() { print FILES }
source "$1"; shift; words=("$@"); CURRENT=$#; _orchestrator"""


def test_zsh_completes_with_descriptions(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    script = completion(capsys, "zsh", tmp_path)

    def complete(*line: str) -> list[str]:
        argv = [shell("zsh"), "-f", "-c", ZSH_COMPLETE, "-", str(script), "orchestrator", *line]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split("\n")

    assert "start:start a relic and wait until healthy" in complete("relic", "st")
    assert "--image:image to run" in complete("relic", "start", "--")
    assert complete("tool", "run", "--network", "")[:3] == ["none", "bridge", "session"]
    assert complete("tool", "run", "--request", "")[0] == "FILES"


def test_fish_completes_with_descriptions(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    script = completion(capsys, "fish", tmp_path)

    def complete(line: str) -> set[str]:
        command = f"source {script}; complete -C {shlex.quote(line)}"
        done = subprocess.run(
            [shell("fish"), "--no-config", "-c", command],
            capture_output=True,
            text=True,
            check=True,
        )
        return set(done.stdout.splitlines())

    assert "start\tstart a relic and wait until healthy" in complete("orchestrator relic st")
    assert {c.split("\t")[0] for c in complete("orchestrator tool run --network ")} == {
        "none",
        "bridge",
        "session",
    }
    assert "--session\tsession id" in complete("orchestrator relic start --sess")


def test_completion_script_lists_subcommands_and_options(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "completion", "bash")
    assert code == 0
    assert "complete -F _orchestrator orchestrator" in out
    for words in ["tool relic stats cleanup session", "run show logs cancel", "start ls show"]:
        assert words in out
    assert '"tool run") words="' in out and "--wait-timeout" in out
    assert "none bridge session" in out


# -- config ------------------------------------------------------------------------------------


def config_lines(out: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in out.splitlines())


def test_config_prints_every_setting_as_key_value(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ORCHESTRATOR_HOST_NAME", "host-a")
    monkeypatch.setenv("ORCHESTRATOR_ALLOWED_VOLUME_ROOTS", "/srv/a, /srv/b")
    monkeypatch.setenv("ORCHESTRATOR_POOL", '[{"image": "t:1", "size": 2}]')
    code, out, err = run(capsys, "config")
    assert (code, err) == (0, "")
    values = config_lines(out)
    assert list(values) == [f"ORCHESTRATOR_{name.upper()}" for name in Settings.model_fields]
    assert values["ORCHESTRATOR_HOST_NAME"] == "host-a"
    assert values["ORCHESTRATOR_BROKER_URL"] == "redis://localhost:6379/0"
    assert values["ORCHESTRATOR_REDIS_URL"] == ""
    assert values["ORCHESTRATOR_ALLOWED_VOLUME_ROOTS"] == "/srv/a,/srv/b"
    assert values["ORCHESTRATOR_SESSION_EGRESS"] == "false"
    assert json.loads(values["ORCHESTRATOR_POOL"])[0]["image"] == "t:1"
    assert not fake.settings_seen  # no client, no connection
    # What it prints reads back as the same settings (but the masked Flower password).
    assert values.pop("ORCHESTRATOR_FLOWER_BASIC_AUTH") == "admin:**"
    assert Settings.from_env(values) == Settings.from_env({"ORCHESTRATOR_HOST_NAME": "host-a",
        "ORCHESTRATOR_ALLOWED_VOLUME_ROOTS": "/srv/a,/srv/b",
        "ORCHESTRATOR_POOL": '[{"image": "t:1", "size": 2}]'})  # fmt: skip


def test_config_masks_passwords_in_urls_and_flower_auth(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ORCHESTRATOR_RESULT_BACKEND", "redis://:hunter2@redis:6379/1")
    monkeypatch.setenv("ORCHESTRATOR_REDIS_URL", "rediss://user:hunter3@redis:6380/2")
    monkeypatch.setenv("ORCHESTRATOR_FLOWER_BASIC_AUTH", "admin:hunter4,bob:hunter5")
    code, out, _ = run(capsys, "--broker", "amqp://guest:hunter6@rabbit:5672//", "config")
    assert code == 0
    assert "hunter" not in out
    values = config_lines(out)
    assert values["ORCHESTRATOR_BROKER_URL"] == "amqp://guest:**@rabbit:5672//"
    assert values["ORCHESTRATOR_RESULT_BACKEND"] == "redis://:**@redis:6379/1"
    assert values["ORCHESTRATOR_REDIS_URL"] == "rediss://user:**@redis:6380/2"
    assert values["ORCHESTRATOR_FLOWER_BASIC_AUTH"] == "admin:**,bob:**"


def test_config_json(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ORCHESTRATOR_BROKER_URL", "redis://:pw@h:6379/0")
    monkeypatch.setenv("ORCHESTRATOR_RELIC_CAP_ADD", "NET_BIND_SERVICE")
    code, out, _ = run(capsys, "config", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ORCHESTRATOR_BROKER_URL"] == "redis://:**@h:6379/0"
    assert data["ORCHESTRATOR_WORKER_CONCURRENCY"] == 32
    assert data["ORCHESTRATOR_RELIC_CAP_ADD"] == ["NET_BIND_SERVICE"]
    assert data["ORCHESTRATOR_REDIS_URL"] is None
    assert data["ORCHESTRATOR_FLOWER_BASIC_AUTH"] == "admin:**"


def test_config_markdown_is_the_reference_table(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    from orchestrator.config_reference import markdown_table

    code, out, _ = run(capsys, "config", "--markdown")
    assert (code, out) == (0, markdown_table())


def test_config_with_an_invalid_variable_names_it(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("ORCHESTRATOR_LEASE_SECONDS", "soon")
    code, out, err = run(capsys, "config")
    assert_clean_error(code, out, err, "ORCHESTRATOR_LEASE_SECONDS")


# -- doctor ------------------------------------------------------------------------------------


@pytest.fixture
def healthy(fake: FakeClient, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A live host, a fresh janitor pass and a Flower that answers; the URLs Flower was asked."""
    from orchestrator.state.registry import HostRegistry

    HostRegistry(fake.redis, 20).beat("host-a", {})
    fake.redis.set(keys.JANITOR_LAST_RUN, json.dumps({"at": time.time() - 5, "hosts": ["host-a"]}))
    asked: list[str] = []

    def flower_problem(url: str, timeout: float = 3.0) -> str | None:
        asked.append(url)
        return None

    monkeypatch.setattr(cli.admin, "flower_problem", flower_problem)
    return asked


def doctor_rows(out: str) -> dict[str, str]:
    """Check name -> its line."""
    found = {}
    for line in out.splitlines():
        for name in cli.admin.DOCTOR_CHECK_NAMES:
            if line[6:].startswith(name + " "):
                found[name] = line
    return found


def test_doctor_all_ok(fake: FakeClient, healthy: list[str], capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "doctor")
    assert code == 0, out
    lines = doctor_rows(out)
    assert list(lines) == cli.admin.DOCTOR_CHECK_NAMES
    assert all(line.startswith("ok  ") for line in lines.values())
    assert "host-a" in lines["docker hosts"]
    assert "last pass 5 s ago (every 30 s), hosts: host-a" in lines["janitor"]
    assert healthy == ["http://127.0.0.1:5555"]


def test_doctor_janitor_stale_or_never_run_says_to_start_beat(
    fake: FakeClient, healthy: list[str], capsys: pytest.CaptureFixture[str]
):
    fake.redis.set(keys.JANITOR_LAST_RUN, json.dumps({"at": time.time() - 95, "hosts": []}))
    code, out, _ = run(capsys, "doctor")
    assert code == 1
    line = doctor_rows(out)["janitor"]
    assert line.startswith("FAIL")
    assert "no janitor pass for 95 s: start beat with `celery -A worker beat`" in line
    assert "`orchestrator up`" in line

    fake.redis.set(keys.JANITOR_LAST_RUN, json.dumps({"at": time.time() - 85, "hosts": []}))
    assert run(capsys, "doctor")[0] == 0  # within 3 × 30 s

    fake.redis.delete(keys.JANITOR_LAST_RUN)
    code, out, _ = run(capsys, "doctor", "--json")
    janitor = next(item for item in json.loads(out) if item["check"] == "janitor")
    assert code == 1 and not janitor["ok"]
    assert janitor["detail"] == (
        "no janitor pass recorded (beat sends the first 30 s after it starts): "
        "start beat with `celery -A worker beat` or `orchestrator up`"
    )


def test_doctor_janitor_limit_follows_the_interval(
    fake: FakeClient, healthy: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    monkeypatch.setenv("ORCHESTRATOR_JANITOR_INTERVAL_SECONDS", "1")
    code, out, _ = run(capsys, "doctor")
    assert code == 1
    assert "no janitor pass for 5 s" in doctor_rows(out)["janitor"]


def test_doctor_flower_unreachable_says_how_to_start_it(
    fake: FakeClient, healthy: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    monkeypatch.setattr(cli.admin, "flower_problem", lambda url, timeout=3.0: "URLError: refused")
    code, out, _ = run(capsys, "doctor", "--flower-url", "http://admin:pw@10.0.0.5:5599")
    assert code == 1
    line = doctor_rows(out)["flower"]
    assert line.startswith("FAIL")
    assert "http://admin:**@10.0.0.5:5599/healthcheck (URLError: refused)" in line
    assert "`orchestrator up`" in line and "celery -A worker flower" in line
    assert "--flower-url" in line and "pw" not in out


def test_doctor_skip_leaves_checks_out(
    fake: FakeClient, healthy: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    monkeypatch.setattr(cli.admin, "flower_problem", lambda url, timeout=3.0: "refused")
    fake.redis.delete(keys.JANITOR_LAST_RUN)
    code, out, _ = run(capsys, "doctor", "--skip", "flower", "--skip", "janitor")
    assert code == 0
    assert list(doctor_rows(out)) == ["registry redis", "broker", "docker hosts", "workers"]
    _, out, _ = run(capsys, "doctor", "--skip", "docker-hosts", "--skip", "flower")
    assert "docker hosts" not in doctor_rows(out)


def test_doctor_without_workers_says_how_to_start_them(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], healthy: list[str]
):
    fake.redis.delete("orch:host:host-a")
    fake.app.control.replies = []
    code, out, _ = run(capsys, "doctor")
    assert code == 1
    rows = doctor_rows(out)
    for name in ("docker hosts", "workers"):
        assert rows[name].startswith("FAIL")
        assert "`orchestrator up` or `celery -A worker worker`" in rows[name]


def test_doctor_redis_and_broker_down_say_what_to_do(
    fake: FakeClient, capsys: pytest.CaptureFixture[str], healthy: list[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise redis.exceptions.ConnectionError("Connection refused")

    for method in ("ping", "get", "smembers"):
        monkeypatch.setattr(fake.redis, method, refused)
    fake.app.broker_error = OperationalError("Error 111 connecting to 127.0.0.1:6379.")
    code, out, _ = run(capsys, "doctor")
    assert code == 1
    rows = doctor_rows(out)
    for name in ("registry redis", "docker hosts", "janitor"):
        assert rows[name].startswith("FAIL"), rows[name]
        assert "cannot reach the result backend at redis://localhost:6379/0" in rows[name]
        assert "is Redis running?" in rows[name]
    assert "cannot reach the broker" in rows["broker"] and "--broker" in rows["broker"]


class HealthcheckHandler(http.server.BaseHTTPRequestHandler):
    seen_auth: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        HealthcheckHandler.seen_auth.append(self.headers.get("Authorization"))
        status = 200 if self.path == "/healthcheck" else 404
        self.send_response(status)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: Any) -> None:
        return None


def test_flower_problem_against_a_real_http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HealthcheckHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert cli.admin.flower_problem(f"http://127.0.0.1:{port}") is None
        assert cli.admin.flower_problem(f"http://admin:pw@127.0.0.1:{port}/") is None
        assert HealthcheckHandler.seen_auth[-1] == "Basic YWRtaW46cHc="  # admin:pw
        assert cli.admin.flower_problem(f"http://127.0.0.1:{port}/sub") == "HTTP 404 Not Found"
    finally:
        server.shutdown()
        server.server_close()
    problem = cli.admin.flower_problem(f"http://127.0.0.1:{port}", timeout=1)
    assert problem is not None and "refused" in problem.lower()


# -- up / down ---------------------------------------------------------------------------------


class FakePopen:
    """A started process that is only a pid (its log gets one line)."""

    def __init__(self, owner: FakeProcesses, argv: list[str], kwargs: dict[str, Any]) -> None:
        self.owner = owner
        self.argv = argv
        self.kwargs = kwargs
        self.component = argv[5]  # python -m celery -A worker <component> ...
        self.pid = owner.next_pid
        owner.next_pid += 1
        owner.alive.add(self.pid)
        kwargs["stdout"].write(f"{self.component} log line\n".encode())
        if self.component == "worker" and owner.heartbeat:
            HostRegistry(owner.redis, 20).beat(owner.host, {})

    def poll(self) -> int | None:
        code = self.owner.exit_codes.get(self.component)
        if code is not None:
            self.owner.alive.discard(self.pid)
        return code


class FakeProcesses:
    """subprocess.Popen and os.kill for `up` and `down`: nothing real starts or is signalled."""

    def __init__(self, redis: Any, host: str) -> None:
        self.redis = redis
        self.host = host
        self.alive: set[int] = set()
        self.stubborn: set[int] = set()  # ignore SIGTERM
        self.unkillable: set[int] = set()  # ignore SIGKILL too
        self.started: list[FakePopen] = []
        self.signals: list[tuple[int, int]] = []
        self.heartbeat = True
        self.exit_codes: dict[str, int] = {}
        self.next_pid = 9_000_001  # above any real pid_max

    def popen(self, argv: list[str], **kwargs: Any) -> FakePopen:
        process = FakePopen(self, argv, kwargs)
        self.started.append(process)
        return process

    def kill(self, pid: int, sig: int) -> None:
        if pid not in self.alive:
            raise ProcessLookupError(pid)
        if sig == 0:
            return
        self.signals.append((pid, sig))
        if (sig == signal.SIGTERM and pid in self.stubborn) or pid in self.unkillable:
            return
        self.alive.discard(pid)

    def component_pids(self) -> dict[str, int]:
        return {p.component: p.pid for p in self.started}


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def procs(fake: FakeClient, monkeypatch: pytest.MonkeyPatch, state: Path) -> FakeProcesses:
    monkeypatch.setenv("ORCHESTRATOR_STATE_DIR", str(state))
    monkeypatch.setenv("ORCHESTRATOR_HOST_NAME", "uptest")
    fakes = FakeProcesses(fake.redis, "uptest")
    monkeypatch.setattr(stack.subprocess, "Popen", fakes.popen)
    monkeypatch.setattr(os, "kill", fakes.kill)
    monkeypatch.setattr(stack, "_cmdline", lambda pid: "python -m celery -A worker worker")
    monkeypatch.setattr(stack, "_docker_problem", lambda: None)
    monkeypatch.setattr(cli.admin, "flower_problem", lambda url, timeout=3.0: None)
    monkeypatch.setattr(stack, "POLL_SECONDS", 0)
    monkeypatch.setattr(stack, "KILL_WAIT_SECONDS", 0)
    return fakes


def test_up_starts_worker_beat_and_flower_from_the_repository_root(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str]
):
    code, out, err = run(capsys, "--broker", "redis://127.0.0.1:6379/4", "up",
                         "--flower-port", "5599")  # fmt: skip
    assert (code, err) == (0, "")
    worker, beat, flower = procs.started
    assert worker.argv == [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "info"]
    assert beat.argv[5:] == ["beat", "-l", "info", "-s", str(state / "celerybeat-schedule")]
    assert flower.argv[5:] == ["flower", "--port=5599", "--address=127.0.0.1"]
    for process in procs.started:
        assert (Path(process.kwargs["cwd"]) / "worker.py").is_file()
        assert process.kwargs["start_new_session"] is True
        env = process.kwargs["env"]
        assert env["ORCHESTRATOR_HOST_NAME"] == "uptest"
        assert env["ORCHESTRATOR_BROKER_URL"] == "redis://127.0.0.1:6379/4"
        assert (state / f"{process.component}.pid").read_text() == f"{process.pid}\n"
        assert (state / f"{process.component}.log").read_text() == (
            f"{process.component} log line\n"
        )
    lines = out.splitlines()
    assert lines[0].split() == ["PROCESS", "PID", "STATUS", "URL", "LOG"]
    assert lines[1].split() == [
        "worker",
        str(worker.pid),
        "started",
        "-",
        str(state / "worker.log"),
    ]
    assert lines[3].split()[:4] == ["flower", str(flower.pid), "started", "http://127.0.0.1:5599"]
    assert "host uptest is live" in out and "host.uptest" in out
    assert "stop them with: orchestrator down" in out
    # Never the documented default: a random password, given to Flower, printed, kept 0600.
    auth = flower.kwargs["env"]["ORCHESTRATOR_FLOWER_BASIC_AUTH"]
    user, _, password = auth.partition(":")
    assert user == "admin" and len(password) >= 20 and auth != "admin:orchestrator"
    assert f"Flower asks for user 'admin', password {password!r} (generated" in out
    kept = state / "flower-credentials"
    assert kept.read_text() == auth + "\n" and kept.stat().st_mode & 0o777 == 0o600


def test_up_reuses_its_generated_flower_credentials_and_keeps_the_operators(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    code, out, _ = run(capsys, "up", "--no-beat", "--json")
    first = json.loads(out)["flower_credentials"]
    assert code == 0 and first["user"] == "admin"
    assert first["file"] == str(state / "flower-credentials")
    run(capsys, "down")
    run(capsys, "up", "--no-beat")
    assert procs.started[-1].kwargs["env"]["ORCHESTRATOR_FLOWER_BASIC_AUTH"] == (
        f"admin:{first['password']}"
    )
    run(capsys, "down")
    monkeypatch.setenv("ORCHESTRATOR_FLOWER_BASIC_AUTH", "ops:chosen-by-the-operator")
    code, out, _ = run(capsys, "up", "--no-beat")
    assert procs.started[-1].kwargs["env"]["ORCHESTRATOR_FLOWER_BASIC_AUTH"] == (
        "ops:chosen-by-the-operator"
    )
    assert "Flower asks for user 'ops' (ORCHESTRATOR_FLOWER_BASIC_AUTH)" in out
    assert "chosen-by-the-operator" not in out


def test_up_without_flower_and_beat_starts_only_the_worker(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str]
):
    code, out, _ = run(capsys, "up", "--no-flower", "--no-beat", "--json")
    assert code == 0
    assert [p.component for p in procs.started] == ["worker"]
    data = json.loads(out)
    assert data["host"] == "uptest" and data["state_dir"] == str(state)
    assert [(p["name"], p["status"]) for p in data["processes"]] == [("worker", "started")]
    assert sorted(f.name for f in state.glob("*.pid")) == ["worker.pid"]


def test_up_leaves_running_processes_alone_and_replaces_stale_pid_files(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str]
):
    state.mkdir()
    procs.alive.update({101, 102})
    (state / "worker.pid").write_text("101\n")
    (state / "beat.pid").write_text("102\n")
    (state / "flower.pid").write_text("103\n")  # no such process any more
    HostRegistry(procs.redis, 20).beat("uptest", {})
    code, out, _ = run(capsys, "up")
    assert code == 0
    assert [p.component for p in procs.started] == ["flower"]
    assert (state / "flower.pid").read_text() == f"{procs.started[0].pid}\n"
    statuses = {line.split()[0]: line for line in out.splitlines()[1:4]}
    assert "already running" in statuses["worker"] and " 101 " in statuses["worker"]
    assert "already running" in statuses["beat"]
    assert "started" in statuses["flower"]


def test_up_does_not_count_a_heartbeat_older_than_its_worker(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str]
):
    procs.heartbeat = False
    procs.redis.set(keys.host("uptest"), json.dumps({"seen_at": time.time() - 100}))
    code, out, err = run(capsys, "up", "--wait-timeout", "0")
    assert_error_with_log(code, out, err, "host uptest did not register in Redis at",
                       "within 0 s (no heartbeat)", "worker log line",
                       str(state / "worker.log"), "`orchestrator down` stops it")  # fmt: skip
    assert (state / "worker.pid").exists()  # still running: `down` stops it


def test_up_fails_at_once_when_the_worker_exits(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str]
):
    procs.heartbeat = False
    procs.exit_codes["worker"] = 1
    started = time.monotonic()
    code, out, err = run(capsys, "up")  # waits up to 60 s for a live worker, not a dead one
    assert time.monotonic() - started < 5
    assert_error_with_log(code, out, err, "the worker exited with code 1", "worker log line")
    assert not (state / "worker.pid").exists()


def test_up_waits_for_flower_and_shows_its_log_when_it_does_not_answer(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    asked: list[str] = []

    def flower_problem(url: str, timeout: float = 3.0) -> str:
        asked.append(url)
        return "refused"

    monkeypatch.setattr(cli.admin, "flower_problem", flower_problem)
    code, out, err = run(capsys, "up", "--flower-port", "5601", "--wait-timeout", "0")
    assert_error_with_log(code, out, err, "Flower did not answer at http://127.0.0.1:5601/healthcheck",
                       "flower log line")  # fmt: skip
    assert asked == ["http://127.0.0.1:5601"]


def test_up_without_redis_says_it_does_not_start_it(
    procs: FakeProcesses, fake: FakeClient, state: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    def refused() -> None:
        raise redis.exceptions.ConnectionError("Connection refused")

    monkeypatch.setattr(fake.redis, "ping", refused)
    code, out, err = run(capsys, "up")
    assert_clean_error(code, out, err, "cannot reach Redis at redis://localhost:6379/0",
                       "starts neither Redis nor the Docker engine", "make setup")  # fmt: skip
    assert procs.started == []
    assert not list(state.glob("*.pid"))


def test_up_warns_when_the_docker_engine_is_unreachable(
    procs: FakeProcesses, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(stack, "_docker_problem", lambda: "DockerException: no socket")
    code, _, err = run(capsys, "up")
    assert code == 0
    assert err.startswith("warning: cannot reach the Docker engine (DockerException: no socket)")
    assert "make setup" in err


def test_up_needs_worker_py(
    procs: FakeProcesses, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
):  # fmt: skip
    import orchestrator

    elsewhere = tmp_path / "site" / "orchestrator" / "__init__.py"
    monkeypatch.setattr(orchestrator, "__file__", str(elsewhere))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "up")
    assert_clean_error(code, out, err, "cannot find worker.py", str(tmp_path / "site"),
                       "run `orchestrator up` from the repository root")  # fmt: skip
    assert procs.started == []
    (tmp_path / "worker.py").write_text("")
    assert stack.repository_root() == tmp_path


def test_down_stops_what_up_started(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str]
):
    run(capsys, "up")
    pids = procs.component_pids()
    code, out, err = run(capsys, "down")
    assert (code, err) == (0, "")
    order = [pids["beat"], pids["flower"], pids["worker"]]
    assert procs.signals == [(pid, signal.SIGTERM) for pid in order]
    assert not procs.alive
    assert not list(state.glob("*.pid"))
    assert out.splitlines() == [
        f"beat    pid {pids['beat']}: stopped",
        f"flower  pid {pids['flower']}: stopped",
        f"worker  pid {pids['worker']}: stopped",
    ]
    assert len(procs.started) == 3  # `down` starts nothing, and needs no client
    assert run(capsys, "down")[1] == f"nothing to stop: no pid files in {state}\n"


def test_down_kills_what_ignores_sigterm_after_the_grace_period(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str]
):
    run(capsys, "up", "--no-beat", "--no-flower")
    (worker,) = procs.started
    procs.stubborn.add(worker.pid)
    code, out, _ = run(capsys, "down", "--grace", "0", "--json")
    assert code == 0
    assert procs.signals == [(worker.pid, signal.SIGTERM), (worker.pid, signal.SIGKILL)]
    assert json.loads(out) == [{"name": "worker", "pid": worker.pid, "result": "killed after 0 s"}]
    assert not (state / "worker.pid").exists()


def test_down_keeps_the_pid_file_of_a_process_it_could_not_stop(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str]
):
    run(capsys, "up", "--no-beat", "--no-flower")
    (worker,) = procs.started
    procs.unkillable.add(worker.pid)
    code, out, err = run(capsys, "down", "--grace", "0")
    assert_clean_error(code, out, err, f"could not stop worker (pid {worker.pid})")
    assert (state / "worker.pid").exists()


def test_down_removes_stale_pid_files_without_signalling(
    procs: FakeProcesses, state: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
):  # fmt: skip
    state.mkdir()
    (state / "worker.pid").write_text("555\n")  # gone
    (state / "flower.pid").write_text("556\n")
    procs.alive.add(556)
    monkeypatch.setattr(stack, "_cmdline", lambda pid: "/usr/sbin/sshd")  # 556 was reused
    code, out, _ = run(capsys, "down")
    assert code == 0
    assert procs.signals == []
    assert out.splitlines() == [
        "flower  pid 556: was not running",
        "worker  pid 555: was not running",
    ]
    assert not list(state.glob("*.pid"))


def test_alive_treats_a_zombie_or_reused_pid_as_gone(monkeypatch: pytest.MonkeyPatch):
    assert stack._alive(os.getpid()) is False  # pytest is not celery
    monkeypatch.setattr(stack, "_cmdline", lambda pid: "")  # a zombie has no command line
    assert stack._alive(os.getpid()) is False
    monkeypatch.setattr(stack, "_cmdline", lambda pid: "python -m celery -A worker beat")
    assert stack._alive(os.getpid()) is True
