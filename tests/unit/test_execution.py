"""Behaviour of one tool execution end to end (:func:`orchestrator.execution.run_execution`),
on fakeredis and a fake Docker engine: statuses, deadlines, cancellation, cleanup,
redelivery, secrets and image errors."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests.exceptions

from orchestrator.core import stats
from orchestrator.core.specs import tool_container_name
from orchestrator.errors import DockerUnavailable, LimitExceeded
from orchestrator.models import ResourceLimits, ToolExecutionRequest
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.state.logs import read_live
from orchestrator.worker.execution import DuplicateDelivery, run_execution
from orchestrator.worker.runtime import Runtime
from tests.unit.fakes import FakeContainer, FakeDocker, server_error, stats_fixture

SETTINGS = Settings.from_env({}, host_name="h1", wait_slice_seconds=0.05, lease_seconds=5)
MB = 1024 * 1024


class Recorder:
    """Records what the runtime would enqueue and what a task reports as progress."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


@pytest.fixture
def docker() -> FakeDocker:
    return FakeDocker(images=["busybox:latest"])


@pytest.fixture
def rt(redis, docker) -> Runtime:
    return Runtime(SETTINGS, redis, docker_client=docker, enqueue=Recorder())


def make_request(**overrides: Any) -> ToolExecutionRequest:
    fields: dict[str, Any] = {
        "session_id": "s1",
        "tool_name": "echo",
        "image": "busybox:latest",
        "command": ["sh", "-c", "echo hi"],
    }
    timeout = overrides.pop("timeout_seconds", None)
    if timeout is not None:
        fields["resource_limits"] = ResourceLimits(timeout_seconds=timeout)
    fields.update(overrides)
    return ToolExecutionRequest(**fields)


def the_container(docker: FakeDocker, execution_id: str) -> FakeContainer:
    """The execution's container, even after it was removed."""
    return docker.containers.made_named(tool_container_name(execution_id))


def cancel_later(rt: Runtime, execution_id: str, delay: float) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: (time.sleep(delay), rt.executions.request_cancel(execution_id)),
        daemon=True,
    )
    thread.start()
    return thread


# -- outcomes ------------------------------------------------------------------------------


def test_a_tool_that_exits_0_succeeds_with_its_json_result_and_both_streams_apart(rt, docker):
    docker.containers.spawn = {
        "stdout": [b"working...\n", b'{"answer": 42}\n'],
        "stderr": [b"warning: slow disk\n"],
    }
    progress = Recorder()

    result = run_execution(rt, make_request(), "e1", progress=progress)

    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.error is None
    assert result.result == {"answer": 42}
    assert result.stdout == 'working...\n{"answer": 42}\n'
    assert result.stderr == "warning: slow disk\n"
    assert not result.stdout_truncated and not result.stderr_truncated
    assert (result.execution_id, result.tool_name, result.session_id) == ("e1", "echo", "s1")
    assert result.host == "h1"
    assert result.started_at is not None and result.finished_at >= result.started_at
    assert 0 <= result.duration_seconds < 5
    assert [state for state, _ in progress.calls] == ["RUNNING"]  # the image was local
    assert progress.calls[0][1]["container_id"] == result.container_id


def test_the_container_is_created_from_the_request_and_started_once(rt, docker):
    run_execution(rt, make_request(parameters={"N": 3}), "e1")

    [config] = docker.containers.created
    assert the_container(docker, "e1").calls.count(("start",)) == 1
    assert config["name"] == "orch-tool-e1"
    assert config["image"] == "busybox:latest"
    assert config["environment"] == {"N": "3"}
    assert config["labels"]["orchestrator.execution"] == "e1"
    assert config["labels"]["orchestrator.kind"] == "tool"


def test_usage_is_sampled_from_the_stats_stream_while_it_runs(rt, docker):
    payload = stats_fixture("v1_memory")
    peak = max(stats.peak_memory_bytes(payload) or 0, stats.memory_used_bytes(payload))

    result = run_execution(rt, make_request(), "e1")

    assert result.stats.samples == 1  # the stopped (zero-time) payload is not counted
    assert result.stats.peak_memory_mb == round(peak / MB, 3)
    assert result.stats.cpu_seconds == round(stats.cpu_total_seconds(payload), 3)


def test_a_non_zero_exit_is_failed_with_its_exit_code(rt, docker):
    docker.containers.spawn = {"exit_code": 3, "stderr": [b"boom\n"]}

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "failed"
    assert result.exit_code == 3
    assert result.error == "exited with code 3"
    assert result.stderr == "boom\n"


def test_an_oom_killed_container_is_oom_killed_with_the_memory_limit_named(rt, docker):
    docker.containers.spawn = {"exit_code": 137, "oom_killed": True}

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "oom_killed"
    assert result.exit_code == 137
    assert "512 MB" in result.error


def test_a_container_that_never_exits_is_killed_at_its_timeout(rt, docker):
    docker.containers.spawn = {"run_seconds": None, "stdout": [b"still going\n"]}
    begin = time.monotonic()

    result = run_execution(rt, make_request(timeout_seconds=1), "e1")

    elapsed = time.monotonic() - begin
    assert result.status == "timed_out"
    assert "1 s timeout" in result.error
    assert 0.9 <= elapsed < 3
    container = the_container(docker, "e1")
    assert ("kill", None) in container.calls
    assert result.exit_code == 137
    assert result.stdout == "still going\n"


def test_cancellation_while_it_runs_kills_it_within_a_second(rt, docker):
    docker.containers.spawn = {"run_seconds": None}
    cancel_later(rt, "e1", 0.2)
    begin = time.monotonic()

    result = run_execution(rt, make_request(timeout_seconds=60), "e1")

    assert time.monotonic() - begin < 1.2
    assert result.status == "cancelled"
    assert result.error == "cancelled by request"
    assert ("kill", None) in the_container(docker, "e1").calls


def test_cancellation_asked_before_it_started_creates_no_container(rt, docker):
    rt.executions.request_cancel("e1")

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "cancelled"
    assert "before it started" in result.error
    assert result.container_id is None
    assert docker.containers.created == []
    assert docker.images.pulls == []


def test_a_late_takeover_of_a_container_that_finished_in_time_reports_its_exit(rt, docker):
    docker.containers.add(
        FakeContainer(
            "orch-tool-e1",
            status="exited",
            started_ago=120,
            run_seconds=5,
            stdout=[b'{"ok": 1}\n'],
        )
    )

    result = run_execution(rt, make_request(timeout_seconds=60), "e1", requeued=True)

    assert result.status == "succeeded"


def remove_after(docker: FakeDocker, execution_id: str, delay: float) -> None:
    """Remove the execution's container behind the worker's back (``docker rm -f``)."""

    def remove() -> None:
        time.sleep(delay)
        docker.api.remove_container(tool_container_name(execution_id), force=True)

    threading.Thread(target=remove, daemon=True).start()


def test_a_container_removed_behind_its_back_ends_the_run_without_a_rerun(rt, docker):
    docker.containers.spawn = {"run_seconds": None}
    remove_after(docker, "e1", 0.15)
    begin = time.monotonic()

    result = run_execution(rt, make_request(timeout_seconds=60), "e1")
    assert result.status == "error"

    assert time.monotonic() - begin < 2
    assert rt.executions.inflight() == []  # the reaper does not run it a second time
    assert rt.leases.holder("e1") is None


def test_a_container_removed_behind_its_back_gives_an_error_result(rt, docker):
    docker.containers.spawn = {"run_seconds": None}
    remove_after(docker, "e1", 0.15)

    result = run_execution(rt, make_request(timeout_seconds=60), "e1")

    assert result.status == "error"
    assert rt.executions.result("e1") == result


# -- cleanup -------------------------------------------------------------------------------


def test_the_container_is_removed_after_the_run_when_cleanup_is_true(rt, docker):
    result = run_execution(rt, make_request(cleanup=True), "e1")

    assert result.status == "succeeded"
    assert docker.containers.names == []
    assert docker.api.removed == [("orch-tool-e1", True, True)]


def test_the_container_is_kept_when_cleanup_is_false(rt, docker):
    run_execution(rt, make_request(cleanup=False), "e1")

    assert docker.containers.names == ["orch-tool-e1"]
    assert docker.api.removed == []
    kept = the_container(docker, "e1")
    kept.reload()
    assert kept.status == "exited"
    assert kept.labels["orchestrator.keep"] == "true"


def test_the_container_is_removed_when_the_engine_fails_during_the_run(rt, docker):
    docker.containers.spawn = {"start_error": server_error("driver failed programming")}

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "error"
    assert "start container orch-tool-e1" in result.error
    assert "driver failed programming" in result.error
    assert result.container_id is not None
    assert docker.containers.names == []
    assert docker.api.removed == [("orch-tool-e1", True, True)]


def test_a_failed_removal_does_not_change_the_result(rt, docker):
    docker.api.remove_error = server_error("device or resource busy")

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert docker.containers.names == ["orch-tool-e1"]  # left for the janitor


# -- redelivery ------------------------------------------------------------------------------


def test_a_second_delivery_while_the_first_holds_the_lease_is_refused(rt, redis, docker):
    docker.containers.spawn = {"run_seconds": None}
    first: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: first.update(result=run_execution(rt, make_request(), "e1")), daemon=True
    )
    runner.start()
    for _ in range(100):
        if docker.containers.names and rt.leases.holder("e1"):
            break
        time.sleep(0.01)
    other_worker = Runtime(SETTINGS, redis, docker_client=docker)

    with pytest.raises(DuplicateDelivery, match="e1"):
        run_execution(other_worker, make_request(), "e1")
    with pytest.raises(DuplicateDelivery):
        run_execution(rt, make_request(), "e1")  # the same worker is not re-entrant either

    rt.executions.request_cancel("e1")
    runner.join(5)
    assert first["result"].status == "cancelled"
    assert len(docker.containers.created) == 1


def test_a_delivery_after_the_run_finished_returns_the_stored_result(rt, docker):
    docker.containers.spawn = {"stdout": [b'{"n": 1}\n']}
    first = run_execution(rt, make_request(), "e1")

    again = run_execution(rt, make_request(), "e1")

    assert again == first
    assert len(docker.containers.created) == 1
    assert rt.leases.holder("e1") is None


def test_a_redelivery_attaches_to_the_running_container_of_a_dead_worker(rt, docker):
    existing = docker.containers.add(
        FakeContainer(
            "orch-tool-e1",
            status="running",
            started_ago=2.0,
            run_seconds=2.2,
            stdout=[b'{"resumed": true}\n'],
        )
    )

    result = run_execution(rt, make_request(timeout_seconds=60), "e1", requeued=True)

    assert result.status == "succeeded"
    assert result.result == {"resumed": True}
    assert result.container_id == existing.id
    assert docker.containers.created == []
    assert ("start",) not in existing.calls


def test_a_redelivery_starts_a_container_that_was_created_but_never_started(rt, docker):
    existing = docker.containers.add(FakeContainer("orch-tool-e1", stdout=[b"ok\n"]))

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert docker.containers.created == []
    assert existing.calls.count(("start",)) == 1


def test_a_takeover_counts_the_time_already_run_against_the_timeout(rt, docker):
    docker.containers.add(
        FakeContainer("orch-tool-e1", status="running", started_ago=0.8, run_seconds=None)
    )
    begin = time.monotonic()

    result = run_execution(rt, make_request(timeout_seconds=1), "e1")

    assert result.status == "timed_out"
    assert time.monotonic() - begin < 0.8


def test_a_name_conflict_on_create_attaches_to_the_container_that_won(rt, docker):
    def racing_delivery(config: dict[str, Any]) -> None:
        docker.containers.before_create = None
        docker.containers.add(FakeContainer(config["name"], stdout=[b"from the winner\n"]))

    docker.containers.before_create = racing_delivery

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert result.stdout == "from the winner\n"


def test_a_requeued_run_with_secrets_and_no_container_is_an_error_not_a_rerun(rt, docker):
    request = make_request(secret_parameters={"API_TOKEN": "tok-123456"})

    result = run_execution(rt, request, "e1", requeued=True)

    assert result.status == "error"
    assert "secret parameters" in result.error
    assert "submit the run again" in result.error
    assert docker.containers.created == []


def test_a_requeued_run_without_secrets_and_no_container_runs_again(rt, docker):
    result = run_execution(rt, make_request(), "e1", requeued=True)

    assert result.status == "succeeded"
    assert len(docker.containers.created) == 1


# -- secrets -------------------------------------------------------------------------------


def test_secret_values_never_appear_in_the_result_or_the_live_log(rt, redis, docker):
    docker.containers.spawn = {
        "stdout": [b"using tok-123456\n", b'{"echo": "tok-123456", "n": [1, "x{\\"id\\": 9}"]}\n'],
        "stderr": [b"auth tok-123456 failed once\n"],
    }
    request = make_request(secret_parameters={"API_TOKEN": "tok-123456", "PIN": {"v": 12345}})

    result = run_execution(rt, request, "e1")

    dumped = result.model_dump_json()
    assert "tok-123456" not in dumped
    assert result.stdout.startswith("using ***\n")
    assert result.stderr == "auth *** failed once\n"
    assert result.result["echo"] == "***"
    live = read_live(redis, "e1")
    assert "tok-123456" not in live["stdout"] + live["stderr"]
    assert "***" in live["stderr"]
    stored = json.loads(rt.executions.get("e1")["request"])
    assert stored["secret_parameters"] == {"API_TOKEN": "***", "PIN": "***"}
    config = docker.containers.created[0]
    assert config["environment"]["API_TOKEN"] == "tok-123456"  # the tool itself gets it


@pytest.mark.parametrize("secret", ["pässwörd-1", 'pa"ss-word'])
def test_secrets_with_characters_json_escapes_are_redacted_from_the_result(rt, docker, secret):
    line = json.dumps({"echo": secret}, ensure_ascii=False).encode() + b"\n"
    docker.containers.spawn = {"stdout": [line]}

    result = run_execution(rt, make_request(secret_parameters={"S": secret}), "e1")

    assert result.result == {"echo": "***"}


# -- images --------------------------------------------------------------------------------


def test_a_missing_image_that_cannot_be_pulled_is_an_error_naming_it(rt, docker):
    docker.images.pull_error = server_error(
        "pull access denied for nope, repository does not exist"
    )

    result = run_execution(rt, make_request(image="nope:1.0"), "e1")

    assert result.status == "error"
    assert "'nope:1.0'" in result.error
    assert "could not be pulled" in result.error
    assert "pull access denied" in result.error
    assert docker.images.pulls == [("nope", "1.0")]
    assert docker.containers.created == []
    assert rt.executions.inflight() == []


def test_a_missing_image_is_pulled_once_then_run(rt, docker):
    result = run_execution(rt, make_request(image="alpine:3.20"), "e1")

    assert result.status == "succeeded"
    assert docker.images.pulls == [("alpine", "3.20")]
    assert docker.containers.created[0]["image"] == "alpine:3.20"


def test_an_unreachable_engine_raises_for_a_retry_and_frees_the_lease(rt, docker):
    docker.containers.spawn = {
        "wait_script": [requests.exceptions.ConnectionError("Connection refused")]
    }

    with pytest.raises(DockerUnavailable):
        run_execution(rt, make_request(), "e1")

    assert rt.leases.holder("e1") is None
    assert rt.executions.result("e1") is None
    assert rt.executions.inflight() == []  # the retry registers it again; no reaper re-run


def test_a_connection_error_that_is_a_read_timeout_only_ends_one_wait_slice(rt, docker):
    docker.containers.spawn = {
        "wait_script": [requests.exceptions.ConnectionError("Read timed out. (read timeout=0.05)")]
    }

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"


def test_limits_above_the_server_maximum_are_refused_before_anything_starts(rt, docker):
    with pytest.raises(LimitExceeded, match="timeout_seconds"):
        run_execution(rt, make_request(timeout_seconds=99_999), "e1")

    assert docker.containers.created == []
    assert rt.leases.holder("e1") is None
    assert rt.executions.inflight() == []


# -- output ---------------------------------------------------------------------------------


def test_when_a_follow_stream_breaks_the_output_is_read_from_the_engine_log(rt, docker):
    docker.containers.spawn = {
        "stdout": [b"line 1\n", b"line 2\n", b'{"done": true}\n'],
        "follow_fails_after": 1,
    }

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert result.stdout == 'line 1\nline 2\n{"done": true}\n'
    assert result.result == {"done": True}
    container = the_container(docker, "e1")
    assert ("logs", True, False, True, False, "all") in container.calls  # not followed


def test_output_above_the_cap_keeps_head_and_tail_and_is_flagged(rt, docker):
    cap = SETTINGS.log_cap_bytes
    docker.containers.spawn = {"stdout": [b"H" * cap, b"M" * cap, b"T" * cap]}

    result = run_execution(rt, make_request(), "e1")

    assert result.stdout_truncated is True
    assert result.stdout.startswith("H" * 100)
    assert result.stdout.endswith("T" * 100)
    assert "bytes truncated" in result.stdout
    assert not result.stderr_truncated


# -- registry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spawn", "status"),
    [
        ({}, "succeeded"),
        ({"exit_code": 1}, "failed"),
        ({"exit_code": 137, "oom_killed": True}, "oom_killed"),
    ],
)
def test_after_a_run_nothing_is_in_flight_and_the_metrics_count_it(
    rt, redis, docker, spawn, status
):
    docker.containers.spawn = spawn

    result = run_execution(rt, make_request(), "e1")

    assert result.status == status
    assert rt.executions.inflight() == []
    assert rt.executions.get("e1")["state"] == "finished"
    assert rt.executions.result("e1") == result
    assert redis.hget(keys.METRICS_BY_STATUS, status) == b"1"
    assert redis.hget(keys.METRICS_BY_TOOL, "echo") == b"1"
    assert redis.llen(keys.METRICS_DURATIONS) == 1
    assert rt.leases.holder("e1") is None
    assert rt.leases.held == frozenset()


def test_two_runs_add_up_in_the_metrics(rt, redis, docker):
    run_execution(rt, make_request(), "e1")
    docker.containers.spawn = {"exit_code": 2}
    run_execution(rt, make_request(), "e2")
    run_execution(rt, make_request(), "e3")

    assert redis.hgetall(keys.METRICS_BY_STATUS) == {b"succeeded": b"1", b"failed": b"2"}
    assert redis.hget(keys.METRICS_BY_TOOL, "echo") == b"3"
