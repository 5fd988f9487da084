"""Tool executions end to end: real Redis, real Docker engine, real worker process."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
from celery import Celery

from orchestrator import OrchestratorClient
from orchestrator.errors import InvalidRequest, LimitExceeded
from tests.integration.harness import (
    BROKER_URL,
    REDIS_URL,
    TEST_IMAGE,
    ContainerEvents,
    Listed,
    WorkerProcess,
    deliveries,
    gone,
    listed,
    remove_built_images,
    tool,
    wait_log,
)


def wait_state(handle: Any, states: set[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = handle.state
        if state in states:
            return state
        time.sleep(0.1)
    raise AssertionError(f"state never reached {states}; last {handle.state}")


def containers_of(docker_client: docker.DockerClient, execution_id: str) -> list[Listed]:
    return listed(docker_client, {"label": f"orchestrator.execution={execution_id}"})


def test_json_result_stdout_and_stderr_come_back_apart(
    client: OrchestratorClient, session_id: str
) -> None:
    script = "echo starting; echo warn >&2; echo '{\"answer\": 42}'"
    result = client.run_tool(tool(session_id, script), timeout=60)
    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.result == {"answer": 42}
    assert result.stdout == 'starting\n{"answer": 42}\n'
    assert result.stderr == "warn\n"
    assert result.duration_seconds is not None and result.duration_seconds >= 0
    assert result.started_at is not None and result.finished_at is not None
    assert result.host == client.settings.host_name


def test_parameters_reach_the_container_as_environment(
    client: OrchestratorClient, session_id: str
) -> None:
    request = tool(
        session_id,
        'echo "$TEXT|$NUMBER|$OBJ|$FLAG|$PLAIN"',
        parameters={"TEXT": "hi there", "NUMBER": 3, "OBJ": {"k": [1, 2]}, "FLAG": True},
        environment={"PLAIN": "env"},
    )
    result = client.run_tool(request, timeout=60)
    assert result.stdout.strip() == 'hi there|3|{"k":[1,2]}|true|env'


def test_non_zero_exit_is_failed(client: OrchestratorClient, session_id: str) -> None:
    result = client.run_tool(tool(session_id, "echo bad >&2; exit 3"), timeout=60)
    assert result.status == "failed"
    assert result.exit_code == 3
    assert result.stderr == "bad\n"
    assert "code 3" in (result.error or "")


def test_timeout_kills_and_removes_container(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    started = time.monotonic()
    handle = client.execute_tool(
        tool(session_id, "echo begun; sleep 120", resource_limits={"timeout_seconds": 2})
    )
    result = handle.result(timeout=60)
    assert result.status == "timed_out"
    assert result.stdout == "begun\n"
    assert time.monotonic() - started < 20
    assert gone(lambda: containers_of(docker_client, handle.id)) == []


def test_memory_limit_gives_oom_killed(client: OrchestratorClient, session_id: str) -> None:
    hog = 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo "${#x}"'
    result = client.run_tool(tool(session_id, hog, resource_limits={"memory_mb": 32}), timeout=60)
    assert result.status == "oom_killed"
    assert result.exit_code == 137


def test_cancel_of_a_running_tool(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    handle = client.execute_tool(tool(session_id, "sleep 300"))
    wait_state(handle, {"RUNNING"})
    asked = time.monotonic()
    reply = client.cancel_tool(handle.id)
    assert reply["cancelled"] is True
    result = handle.result(timeout=30)
    assert result.status == "cancelled"
    assert time.monotonic() - asked < 15  # the run sleeps 300 s: the cancel cut it short
    assert gone(lambda: containers_of(docker_client, handle.id)) == []


def test_cancel_of_a_finished_tool_says_so(client: OrchestratorClient, session_id: str) -> None:
    handle = client.execute_tool(tool(session_id, "true"))
    handle.result(timeout=60)
    reply = client.cancel_tool(handle.id)
    assert reply == {"execution_id": handle.id, "cancelled": False, "status": "succeeded"}


def test_build_from_inline_dockerfile(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    tag = f"orchestrator-test/built:{uuid.uuid4().hex[:8]}"
    dockerfile = f"FROM {TEST_IMAGE}\nRUN mkdir -p /opt && echo built-inline > /opt/marker\n"
    request = {
        "tool_name": "built",
        "session_id": session_id,
        "build": {"dockerfile_inline": dockerfile, "tag": tag},
        "command": ["cat", "/opt/marker"],
    }
    try:
        result = client.run_tool(request, timeout=120)
        assert result.status == "succeeded", result
        assert result.stdout == "built-inline\n"
    finally:
        remove_built_images(docker_client, tag)


def test_build_from_a_context_directory(
    client: OrchestratorClient,
    session_id: str,
    docker_client: docker.DockerClient,
    shared_dir: Path,
) -> None:
    context = shared_dir / f"ctx-{uuid.uuid4().hex[:6]}"
    context.mkdir()
    (context / "hello.txt").write_text("from-context\n")
    (context / "Dockerfile").write_text(f"FROM {TEST_IMAGE}\nCOPY hello.txt /hello.txt\n")
    tag = f"orchestrator-test/ctx:{uuid.uuid4().hex[:8]}"
    request = {
        "tool_name": "ctx",
        "session_id": session_id,
        "build": {"context": str(context), "tag": tag},
        "command": ["cat", "/hello.txt"],
    }
    try:
        result = client.run_tool(request, timeout=120)
        assert result.stdout == "from-context\n"
    finally:
        remove_built_images(docker_client, tag)


def test_cleanup_false_keeps_the_container(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    handle = client.execute_tool(tool(session_id, "echo kept", cleanup=False))
    result = handle.result(timeout=60)
    kept = containers_of(docker_client, handle.id)
    try:
        assert [c.id for c in kept] == [result.container_id]
        assert kept[0].labels["orchestrator.kind"] == "tool"
        assert kept[0].labels["orchestrator.session"] == session_id
    finally:
        for container in kept:
            docker_client.api.remove_container(container.id, force=True)


def test_redelivery_of_the_same_execution_runs_the_tool_once(
    client: OrchestratorClient,
    worker: WorkerProcess,
    docker_client: docker.DockerClient,
    session_id: str,
    shared_dir: Path,
) -> None:
    runs = shared_dir / f"runs-{uuid.uuid4().hex[:6]}"
    runs.mkdir()
    runs.chmod(0o777)
    request = tool(
        session_id,
        "echo run >> /runs/count; sleep 4; echo '{\"done\": true}'",
        volumes=[{"source": str(runs), "target": "/runs"}],
    )
    execution_id = str(uuid.uuid4())
    events = ContainerEvents(docker_client, f"orchestrator.execution={execution_id}")
    first = client.app.send_task(
        "orchestrator.tools.execute", args=[request], task_id=execution_id, queue="tools"
    )
    deadline = time.monotonic() + 60
    while not (runs / "count").exists():  # the first delivery's tool is running
        assert time.monotonic() < deadline, "the first delivery never started the tool"
        time.sleep(0.1)
    client.app.send_task(
        "orchestrator.tools.execute", args=[request], task_id=execution_id, queue="tools"
    )
    # The second delivery reaches the worker while the first runs, meets the lease, is dropped.
    wait_log(worker, execution_id, "ignored", 1, timeout=30)
    data = first.get(timeout=60)
    assert data["result"] == {"done": True}
    # A delivery after the run finished returns the stored result without running the tool:
    # its own "succeeded" line shows it was handled (the result it returns is the same one
    # the first delivery stored, so reading it back alone would prove nothing).
    client.app.send_task(
        "orchestrator.tools.execute", args=[request], task_id=execution_id, queue="celery"
    )
    wait_log(worker, execution_id, "succeeded in", 2, timeout=60)
    assert deliveries(worker, execution_id) == 3, worker.log()
    time.sleep(8)  # past the 6 s lease and the 1 s reaper: a late rerun would show by now
    assert (runs / "count").read_text() == "run\n"  # the tool ran once
    events.close()
    assert events.count("create", "orchestrator.execution", execution_id) == 1  # one ever
    assert deliveries(worker, execution_id, "succeeded in") == 2, worker.log()


def test_concurrent_runs_each_get_their_own_result(
    client: OrchestratorClient, session_id: str
) -> None:
    handles = [
        client.execute_tool(
            tool(session_id, f"sleep 1; echo '{{\"n\": {n}}}'", parameters={"N": n})
        )
        for n in range(12)
    ]
    results = [h.result(timeout=120) for h in handles]
    assert [r.result for r in results] == [{"n": n} for n in range(12)]
    assert len({r.container_id for r in results}) == 12


def test_output_is_capped_keeping_head_and_tail(
    client: OrchestratorClient, session_id: str
) -> None:
    script = "echo first; head -c 30000000 /dev/zero | tr '\\0' x; echo; echo '{\"tail\": 1}'"
    result = client.run_tool(tool(session_id, script), timeout=120)
    assert result.stdout_truncated is True
    assert result.stdout.startswith("first\n")
    assert len(result.stdout) <= client.settings.log_cap_bytes + 200
    assert result.result == {"tail": 1}


def test_plain_celery_client_without_routing_is_served(worker: Any, session_id: str) -> None:
    plain = Celery(broker=BROKER_URL, backend=REDIS_URL)
    try:
        outcome = plain.send_task(
            "orchestrator.tools.execute", args=[tool(session_id, "echo plain")]
        )
        assert outcome.get(timeout=60)["stdout"] == "plain\n"
    finally:
        plain.close()


def test_over_cap_limit_is_rejected_by_the_worker_and_starts_nothing(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    request = tool(session_id, "echo never", resource_limits={"memory_mb": 999_999})
    outcome = client.app.send_task("orchestrator.tools.execute", args=[request], queue="tools")
    with pytest.raises(LimitExceeded, match="resource_limits.memory_mb"):
        outcome.get(timeout=60)
    assert gone(lambda: containers_of(docker_client, outcome.id)) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"tool_name": "x"},
        {"tool_name": "x", "session_id": "../etc", "image": TEST_IMAGE},
        {"tool_name": "x", "session_id": "s", "image": TEST_IMAGE, "privileged": True},
        {"tool_name": "x", "session_id": "s", "image": TEST_IMAGE, "network_mode": "host"},
        "not-a-dict",
    ],
)
def test_malformed_messages_fail_clearly_and_the_worker_keeps_serving(
    client: OrchestratorClient, session_id: str, bad: Any
) -> None:
    outcome = client.app.send_task("orchestrator.tools.execute", args=[bad], queue="tools")
    with pytest.raises(InvalidRequest) as caught:
        outcome.get(timeout=60)
    assert str(caught.value)  # the message survives the JSON result backend
    assert client.run_tool(tool(session_id, "echo alive"), timeout=60).stdout == "alive\n"


def test_client_rejects_bad_requests_before_sending(client: OrchestratorClient) -> None:
    with pytest.raises(InvalidRequest, match="session_id"):
        client.execute_tool({"tool_name": "x", "session_id": "a b", "image": TEST_IMAGE})


def test_get_execution_and_logs_by_execution_id(
    client: OrchestratorClient, session_id: str
) -> None:
    handle = client.execute_tool(tool(session_id, "echo out; echo err >&2"))
    handle.result(timeout=60)
    again = client.get_execution(handle.id)
    assert getattr(again, "status", None) == "succeeded"
    assert client.get_logs(handle.id) == {"stdout": "out\n", "stderr": "err\n"}
    assert json.loads(again.model_dump_json())["execution_id"] == handle.id
