"""Progress you can watch: Celery states in order, and output arriving while the tool runs."""

from __future__ import annotations

import threading
import time
import uuid

import docker

from orchestrator import OrchestratorClient
from tests.integration.harness import TEST_IMAGE, remove_built_images


def test_progress_states_are_reported_in_order(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    tag = f"orchestrator-test/progress:{uuid.uuid4().hex[:8]}"
    request = {
        "tool_name": "progress",
        "session_id": session_id,
        "build": {"dockerfile_inline": f"FROM {TEST_IMAGE}\nRUN sleep 2\n", "tag": tag},
        "command": ["sh", "-c", "sleep 2; echo done"],
    }
    try:
        handle = client.execute_tool(request)
        seen: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = handle.state
            if not seen or seen[-1] != state:
                seen.append(state)
            if state in ("SUCCESS", "FAILURE"):
                break
            time.sleep(0.05)
        meaningful = [s for s in seen if s in ("BUILDING", "RUNNING", "SUCCESS")]
        assert meaningful == ["BUILDING", "RUNNING", "SUCCESS"], seen
        assert handle.result(timeout=10).stdout == "done\n"
    finally:
        remove_built_images(docker_client, tag)


def test_running_progress_names_the_host_and_container(
    client: OrchestratorClient, session_id: str
) -> None:
    handle = client.execute_tool(
        {"tool_name": "p", "session_id": session_id, "image": TEST_IMAGE, "command": ["sleep", "3"]}
    )
    deadline = time.monotonic() + 30
    while handle.state != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = client.get_execution(handle.id)
    assert info["state"] == "RUNNING"
    assert info["host"] == client.settings.host_name
    assert len(info["container_id"]) == 64
    handle.result(timeout=30)


def test_output_lines_arrive_while_the_tool_runs(
    client: OrchestratorClient, session_id: str
) -> None:
    handle = client.execute_tool(
        {
            "tool_name": "talk",
            "session_id": session_id,
            "image": TEST_IMAGE,
            "command": ["sh", "-c", "echo first; echo oops >&2; sleep 3; echo last"],
        }
    )
    arrivals: list[tuple[float, str, str]] = []

    def follow() -> None:
        for stream, text in client.follow_logs(handle.id):
            arrivals.append((time.monotonic(), stream, text))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    result = handle.result(timeout=60)
    finished = time.monotonic()
    follower.join(10)
    text = {"stdout": "", "stderr": ""}
    for _, stream, chunk in arrivals:
        text[stream] += chunk
    assert text == {"stdout": "first\nlast\n", "stderr": "oops\n"}
    first_at = next(at for at, stream, chunk in arrivals if "first" in chunk)
    assert finished - first_at > 2  # seen about 3 s before the tool ended
    assert client.get_logs(handle.id) == {"stdout": result.stdout, "stderr": result.stderr}
