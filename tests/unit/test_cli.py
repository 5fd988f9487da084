"""The ``orchestrator`` command against a fake client: parsing, output, exit codes, errors."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis.exceptions
from kombu.exceptions import OperationalError

from orchestrator import cli
from orchestrator.errors import ImageNotFound, OrchestratorTimeout
from orchestrator.logs import LiveLog
from orchestrator.models import (
    AggregateStats,
    CleanupReport,
    ContainerStats,
    RelicInfo,
    ToolExecutionRequest,
    ToolExecutionResult,
)
from orchestrator.settings import Settings

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


class FakeClient:
    """Implements the OrchestratorClient methods the CLI calls, with canned models."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.redis = fakeredis.FakeRedis()
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


def assert_clean_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code == 2
    assert err.splitlines()[-1].startswith("error: ")
    assert "Traceback" not in err and "Traceback" not in out
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
    assert_clean_error(code, out, err, "no worker answered within 7 s", "celery -A worker worker")
    assert "orchestrator doctor" in err
    assert fake.called("cancel_tool") == [("exec-1", 7.0)]


def test_run_still_pending_after_wait_timeout_means_no_worker(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.states = ["PENDING"]
    code, out, err = run(capsys, *RUN, "--wait-timeout", "0")
    assert_clean_error(code, out, err, "no worker answered within 0 s", "celery -A worker worker")


def test_run_still_running_after_wait_timeout_says_how_to_follow_it(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.states = ["RUNNING"]
    code, out, err = run(capsys, *RUN, "--wait-timeout", "0")
    assert_clean_error(code, out, err, "still RUNNING", "tool logs --follow exec-1")


def test_broker_down_is_explained_with_the_url(
    fake: FakeClient, capsys: pytest.CaptureFixture[str]
):
    fake.raise_on["execute_tool"] = OperationalError("Error 111 connecting to 127.0.0.1:1.")
    code, out, err = run(capsys, "--broker", "redis://:secret@127.0.0.1:1/0", *RUN)
    assert_clean_error(code, out, err, "cannot reach the broker at redis://", "127.0.0.1:1/0")
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
    assert_clean_error(code, out, err, "result backend at redis://127.0.0.1:2/0", "Redis running")
    assert "--backend" in err


def test_registry_redis_down_is_explained(fake: FakeClient, capsys: pytest.CaptureFixture[str]):
    fake.raise_on["get_execution"] = redis.exceptions.ConnectionError("Connection refused")
    code, out, err = run(capsys, "tool", "logs", "-f", "exec-1")
    assert_clean_error(code, out, err, "cannot reach the result backend at redis://localhost")


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


def test_completion_script_lists_subcommands_and_options(capsys: pytest.CaptureFixture[str]):
    code, out, _ = run(capsys, "completion", "bash")
    assert code == 0
    assert "complete -F _orchestrator orchestrator" in out
    for words in ["tool relic stats cleanup session", "run show logs cancel", "start ls show"]:
        assert words in out
    assert '"tool run") words="' in out and "--wait-timeout" in out
    assert "none bridge session" in out
