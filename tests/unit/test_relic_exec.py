"""Commands in a relic (``orchestrator.worker.relic_exec``) and the task adapter
``orchestrator.relics.exec``, on the in-memory engine and fakeredis: workspace relics, the
process-group kill at the deadline, at-most-once under redelivery, refusals, secrets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore

from orchestrator.core.types import ExecSpec
from orchestrator.engine.fake import FakeEngine, FakeExec, FakeProgram
from orchestrator.errors import (
    Forbidden,
    InvalidRequest,
    LimitExceeded,
    RelicError,
    RelicNotFound,
    WrongHost,
)
from orchestrator.models import RelicExecRequest, RelicStartRequest, parse_request
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.state.logs import read_live
from orchestrator.worker import relic_exec, relics
from orchestrator.worker.runtime import Runtime
from tasks import relics as relic_tasks
from tasks import runtime as task_runtime
from tasks import tools as tool_tasks

WORKSPACE = "workspace:1"
SETTINGS = Settings.from_env({}, host_name="h1", wait_slice_seconds=0.02, lease_seconds=5)


class Commands:
    """The fake image's exec behaviour: records every exec; the command's answer is set per
    test, the kill script answers 'nothing left'."""

    def __init__(self) -> None:
        self.specs: list[ExecSpec] = []
        self.answer = FakeExec(stdout=b"hello\n")
        #: called when the command (not the kill) starts
        self.on_start: Callable[[], object] = lambda: None

    def __call__(self, spec: ExecSpec) -> FakeExec:
        self.specs.append(spec)
        if spec.argv[:3] == ("sh", "-c", relic_exec.KILL_SCRIPT):
            return FakeExec()
        self.on_start()
        return self.answer

    @property
    def commands(self) -> list[ExecSpec]:
        return [s for s in self.specs if s.argv[:3] != ("sh", "-c", relic_exec.KILL_SCRIPT)]

    @property
    def kills(self) -> list[ExecSpec]:
        return [s for s in self.specs if s.argv[:3] == ("sh", "-c", relic_exec.KILL_SCRIPT)]


@pytest.fixture
def commands() -> Commands:
    return Commands()


@pytest.fixture(autouse=True)
def app() -> Iterator[Celery]:
    celery = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=True)
    celery.conf.task_store_eager_result = False
    yield celery
    celery.close()


@pytest.fixture
def rt(redis: Any, engine: FakeEngine, commands: Commands) -> Iterator[Runtime]:
    engine.add_image(WORKSPACE, FakeProgram(run_seconds=None, on_exec=commands))
    runtime = Runtime(SETTINGS, redis, engine=engine, enqueue=lambda *args, **kw: None)
    task_runtime.reset_runtime(runtime)
    yield runtime
    task_runtime.reset_runtime(None)


def start_workspace(rt: Runtime, relic_id: str = "r1", **fields: Any) -> str:
    request = RelicStartRequest.model_validate(
        {
            "session_id": "s1",
            "relic_name": "ws",
            "image": WORKSPACE,
            "health_check_endpoint": None,
            **fields,
        }
    )
    info = relics.start_relic(rt, request, relic_id)
    assert info.status == "running" and info.healthy
    return relic_id


def exec_request(**fields: Any) -> RelicExecRequest:
    return RelicExecRequest.model_validate({"relic_id": "r1", "command": ["echo", "hi"], **fields})


# -- workspace relics ------------------------------------------------------------------------


def test_a_relic_without_health_endpoint_is_ready_once_it_runs_and_reads_healthy(
    rt: Runtime, engine: FakeEngine
) -> None:
    start_workspace(rt)
    assert relics.relic_info(rt, "r1").healthy is True
    engine.kill_container(relics.lookup(rt.redis, "r1").container_name)
    assert relics.relic_info(rt, "r1").healthy is False  # stopped: no longer healthy


def test_the_relic_records_its_timeout_as_the_cap_of_its_execs(rt: Runtime) -> None:
    start_workspace(rt, resource_limits={"timeout_seconds": 7})
    assert rt.redis.hget(keys.relic("r1"), "timeout_seconds") == b"7"


# -- running a command ---------------------------------------------------------------------


def test_an_exec_runs_the_command_with_its_environment_and_marker(
    rt: Runtime, commands: Commands
) -> None:
    start_workspace(rt)
    commands.answer = FakeExec(stdout=b'out\n{"k": 2}\n', stderr=b"err\n", exit_code=0)
    result = relic_exec.exec_in_relic(
        rt,
        exec_request(
            command="echo $A",
            environment={"A": "1"},
            working_dir="/w",
            stdin="input",
        ),
        "x1",
    )
    assert (result.status, result.exit_code, result.result) == ("succeeded", 0, {"k": 2})
    assert (result.stdout, result.stderr) == ('out\n{"k": 2}\n', "err\n")
    assert (result.exec_id, result.relic_id, result.session_id, result.host) == (
        "x1",
        "r1",
        "s1",
        "h1",
    )
    [spec] = commands.commands
    assert spec.argv == ("sh", "-c", "echo $A")  # a string command runs under sh -c
    assert spec.environment == {"A": "1", relic_exec.EXEC_MARKER: "x1"}
    assert (spec.working_dir, spec.stdin) == ("/w", b"input")
    assert relic_exec.stored_result(rt.redis, "x1") == result
    assert rt.executions.get("x1").finished and "x1" not in rt.executions.inflight()


def test_a_failing_command_is_failed_with_its_exit_code(rt: Runtime, commands: Commands) -> None:
    start_workspace(rt)
    commands.answer = FakeExec(exit_code=3)
    result = relic_exec.exec_in_relic(rt, exec_request(), "x1")
    assert (result.status, result.exit_code, result.error) == ("failed", 3, "exited with code 3")


def test_secrets_reach_the_command_and_are_masked_in_result_and_live_output(
    rt: Runtime, commands: Commands
) -> None:
    start_workspace(rt)
    commands.answer = FakeExec(stdout=b'token=hunter22\n{"t": "hunter22"}\n')
    result = relic_exec.exec_in_relic(
        rt, exec_request(secret_parameters={"TOKEN": "hunter22"}), "x1"
    )
    assert commands.commands[0].environment["TOKEN"] == "hunter22"
    assert result.stdout == 'token=***\n{"t": "***"}\n' and result.result == {"t": "***"}
    live = read_live(rt.redis, "x1")
    assert "hunter22" not in live["stdout"] and "token=***" in live["stdout"]
    assert b"hunter22" not in (rt.redis.hget(keys.execution("x1"), "request") or b"")


def test_the_relics_own_secrets_are_masked_in_an_execs_output_too(
    rt: Runtime, commands: Commands, engine: FakeEngine
) -> None:
    # A command in the relic shares its environment: `env` would print the relic's secret.
    start_workspace(rt, secret_parameters={"API_KEY": "relic-s3cret"})
    commands.answer = FakeExec(stdout=b"API_KEY=relic-s3cret\nPATH=/bin\n")
    result = relic_exec.exec_in_relic(rt, exec_request(command=["env"]), "x1")
    assert result.stdout == "API_KEY=***\nPATH=/bin\n"
    assert "relic-s3cret" not in read_live(rt.redis, "x1")["stdout"]
    assert b"relic-s3cret" not in b"".join(rt.redis.hvals(keys.relic("r1")))  # names only

    # a relic without secrets costs its execs no inspect
    start_workspace(rt, "r2", relic_name="ws2")
    inspected = len(engine.called("inspect_container"))
    relic_exec.exec_in_relic(rt, exec_request(relic_id="r2"), "x2")
    assert len(engine.called("inspect_container")) == inspected


def test_at_the_deadline_the_command_is_killed_in_the_relic_which_goes_on(
    rt: Runtime, engine: FakeEngine, commands: Commands
) -> None:
    start_workspace(rt)
    commands.answer = FakeExec(stdout=b"partial\n", run_seconds=1.5)
    result = relic_exec.exec_in_relic(rt, exec_request(timeout_seconds=1), "x1")
    assert result.status == "timed_out" and "1 s timeout" in (result.error or "")
    assert result.stdout == "partial\n"
    [kill] = commands.kills
    assert kill.argv[3:] == ("orch-kill", "x1", "20")  # the exec's own processes, 2 s grace
    container = relics.lookup(rt.redis, "r1").container_name
    assert engine.inspect_container(container).status == "running"


def test_cancel_kills_the_command_and_reports_cancelled(rt: Runtime, commands: Commands) -> None:
    start_workspace(rt)
    commands.answer = FakeExec(run_seconds=1.0)
    commands.on_start = lambda: rt.executions.request_cancel("x1")  # cancelled while it runs
    result = relic_exec.exec_in_relic(rt, exec_request(), "x1")
    assert result.status == "cancelled" and "processes were killed" in (result.error or "")
    assert len(commands.commands) == 1 and len(commands.kills) == 1


def test_an_exec_cancelled_before_it_started_never_runs(rt: Runtime, commands: Commands) -> None:
    start_workspace(rt)
    rt.executions.request_cancel("x1")
    result = relic_exec.exec_in_relic(rt, exec_request(), "x1")
    assert (result.status, result.error) == ("cancelled", "cancelled before it started")
    assert commands.specs == []
    assert 0 < rt.redis.ttl(keys.execution("x1")) <= SETTINGS.result_ttl_seconds  # expires


def test_a_stopped_relic_runs_nothing_and_says_so(rt: Runtime, engine: FakeEngine) -> None:
    start_workspace(rt)
    engine.kill_container(relics.lookup(rt.redis, "r1").container_name)
    result = relic_exec.exec_in_relic(rt, exec_request(), "x1")
    assert result.status == "error" and "could not be run" in (result.error or "")


def test_a_relic_with_secrets_whose_container_is_gone_says_so(
    rt: Runtime, engine: FakeEngine
) -> None:
    start_workspace(rt, secret_parameters={"API_KEY": "relic-s3cret"})
    engine.remove_container(relics.lookup(rt.redis, "r1").container_name)
    with pytest.raises(RelicError, match="its container is gone"):
        relic_exec.exec_in_relic(rt, exec_request(), "x1")


# -- at most once -----------------------------------------------------------------------------


def test_a_delivery_after_its_worker_died_mid_exec_never_runs_the_command_again(
    rt: Runtime, commands: Commands
) -> None:
    start_workspace(rt)
    # What a worker leaves when killed after the engine started the command.
    rt.executions.start("x1", {"task": "orchestrator.relics.exec", "host": "h1"})
    rt.executions.update("x1", container_id="orch-relic-2-s1-ws")
    result = relic_exec.exec_in_relic(rt, exec_request(), "x1")
    assert result.status == "error" and "not run again" in (result.error or "")
    assert commands.commands == []  # never run twice
    assert [k.argv[4] for k in commands.kills] == ["x1"]  # what was left of it is killed
    again = relic_exec.exec_in_relic(rt, exec_request(), "x1")
    assert again == result  # the stored answer


def test_a_finished_exec_delivered_again_returns_its_result(
    rt: Runtime, commands: Commands
) -> None:
    start_workspace(rt)
    first = relic_exec.exec_in_relic(rt, exec_request(), "x1")
    assert relic_exec.exec_in_relic(rt, exec_request(), "x1") == first
    assert len(commands.commands) == 1


def test_a_resent_exec_whose_secrets_were_masked_is_not_run(
    rt: Runtime, commands: Commands
) -> None:
    start_workspace(rt)
    rt.executions.start("x1", {"task": "orchestrator.relics.exec", "has_secrets": "1"})
    result = relic_exec.exec_in_relic(rt, exec_request(secret_parameters={"T": "***"}), "x1")
    assert result.status == "error" and "secret parameters" in (result.error or "")
    assert commands.commands == []


def test_another_worker_holding_the_lease_makes_it_a_duplicate(rt: Runtime) -> None:
    start_workspace(rt)
    assert rt.redis.set(keys.lease("x1"), "someone-else")
    with pytest.raises(relic_exec.DuplicateDelivery):
        relic_exec.exec_in_relic(rt, exec_request(), "x1")


# -- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "error", "match"),
    [
        ({"relic_id": "nope"}, RelicNotFound, "relic_id"),
        ({"session_id": "s2"}, Forbidden, "another session"),
        ({"timeout_seconds": 301}, LimitExceeded, "resource_limits.timeout_seconds"),
        ({"stdin": "x" * (SETTINGS.files_max_request_bytes + 1)}, LimitExceeded, "stdin"),
        ({"environment": {"BIG": "x" * SETTINGS.max_request_bytes}}, LimitExceeded, "environment"),
    ],
)
def test_refused_requests_run_nothing(
    rt: Runtime, commands: Commands, fields: dict[str, Any], error: type[Exception], match: str
) -> None:
    start_workspace(rt)
    with pytest.raises(error, match=match):
        relic_exec.exec_in_relic(rt, exec_request(**fields), "x1")
    assert commands.specs == []
    assert not rt.executions.get("x1").known


def test_the_server_maximum_caps_the_timeout_too(rt: Runtime, redis: Any, engine: Any) -> None:
    start_workspace(rt)
    small = Runtime(Settings.from_env({}, host_name="h1", max_timeout_seconds=10), redis, engine)
    with pytest.raises(LimitExceeded, match="ORCHESTRATOR_MAX_TIMEOUT_SECONDS"):
        relic_exec.exec_in_relic(small, exec_request(timeout_seconds=11), "x1")


def test_a_relic_on_another_live_host_is_sent_there(rt: Runtime) -> None:
    start_workspace(rt)
    rt.redis.hset(keys.relic("r1"), "host", "h2")
    rt.hosts.beat("h2", {})
    with pytest.raises(WrongHost):
        relic_exec.exec_in_relic(rt, exec_request(), "x1")


@pytest.mark.parametrize(
    "bad",
    [
        {"relic_id": "r1", "command": []},
        {"relic_id": "r1", "command": "   "},
        {"relic_id": "r1", "command": ["a\x00b"]},
        {"relic_id": "r1", "command": ["true"], "working_dir": "rel"},
        {"relic_id": "r1", "command": ["true"], "timeout_seconds": 0},
        {"relic_id": "r1", "command": ["true"], "environment": {"1X": "v"}},
        {"relic_id": "r1", "command": ["true"], "privileged": True},
        {"relic_id": "../x", "command": ["true"]},
    ],
)
def test_malformed_requests_are_invalid(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        parse_request(RelicExecRequest, bad)


# -- the task adapter ----------------------------------------------------------------------


def test_the_task_returns_the_exec_result_keyed_by_its_task_id(
    rt: Runtime, commands: Commands
) -> None:
    start_workspace(rt)
    outcome = relic_tasks.exec_command.apply(
        args=[{"relic_id": "r1", "command": ["echo", "hi"]}], task_id="t1"
    )
    assert outcome.successful(), outcome.traceback
    result = outcome.get()
    assert (result["exec_id"], result["status"], result["stdout"]) == ("t1", "succeeded", "hello\n")
    assert commands.commands[0].environment[relic_exec.EXEC_MARKER] == "t1"


def test_the_task_refuses_a_bad_request_and_a_bad_task_id(rt: Runtime) -> None:
    start_workspace(rt)
    bad = relic_tasks.exec_command.apply(args=[{"relic_id": "r1"}], task_id="t2")
    assert bad.failed() and isinstance(bad.result, InvalidRequest)
    wrong_id = relic_tasks.exec_command.apply(
        args=[{"relic_id": "r1", "command": ["true"]}], task_id="../t"
    )
    assert wrong_id.failed() and "exec_id" in str(wrong_id.result)


def test_the_task_ignores_a_duplicate_delivery(rt: Runtime) -> None:
    start_workspace(rt)
    rt.redis.set(keys.lease("t3"), "someone-else")
    with pytest.raises(Ignore):
        relic_tasks._exec(_Bound("t3"), {"relic_id": "r1", "command": ["true"]})


def test_cancel_of_a_finished_exec_cancels_nothing(rt: Runtime) -> None:
    start_workspace(rt)
    relic_exec.exec_in_relic(rt, exec_request(), "x1")
    reply = tool_tasks.cancel.apply(args=["x1"]).get()
    assert reply == {"execution_id": "x1", "cancelled": False, "status": "succeeded"}


class _Bound:
    """What the adapter uses of a bound task."""

    def __init__(self, task_id: str) -> None:
        self.request = type("Request", (), {"id": task_id})()

    def update_state(self, **_: Any) -> None:
        return None
