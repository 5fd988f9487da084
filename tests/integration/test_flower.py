"""Flower out of the box: `celery -A worker flower` with basic auth from Settings, its HTTP API
driving real tool runs, Prometheus metrics, and the dashboard seen by a real headless Chromium."""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import ROOT, TEST_IMAGE, WorkerProcess, require, settings_env

USER, PASSWORD = "user", "pass"
ARTIFACTS = ROOT / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Flower:
    port: int
    log_path: Path

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        auth: tuple[str, str] | None = (USER, PASSWORD),
    ) -> Reply:
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            token = base64.b64encode(":".join(auth).encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        payload = json.dumps(body).encode() if body is not None else None
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            return Reply(response.status, response.read())
        finally:
            connection.close()

    def apply(self, task_name: str, *args: Any) -> str:
        """POST /api/task/async-apply/<task>: the task id."""
        reply = self.call("POST", f"/api/task/async-apply/{task_name}", {"args": list(args)})
        assert reply.status == 200, reply.body
        return str(reply.json()["task-id"])

    def result(self, task_id: str, until: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """GET /api/task/result/<id> until ``until`` holds (60 s at most)."""
        deadline = time.monotonic() + 60
        while True:
            reply = self.call("GET", f"/api/task/result/{task_id}")
            assert reply.status == 200, reply.body
            data: dict[str, Any] = reply.json()
            if until(data):
                return data
            assert data["state"] not in ("FAILURE", "REVOKED"), data
            assert time.monotonic() < deadline, f"task {task_id} stuck: {data}"
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(flower: Flower, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    """Until Flower answers and its event receiver has seen a worker's event (a heartbeat
    comes every 2 s).

    Answering HTTP comes first: the receiver subscribes to the broker's events a moment later,
    and an event sent before that is never Flower's (a task page without its arguments)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower exited with {proc.returncode}; log:\n{flower.log()}")
        try:
            reply = flower.call("GET", "/api/workers?status=true")
            if reply.status == 200 and any(reply.json().values()):
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"flower saw no worker event within {seconds} s; log:\n{flower.log()}")


@pytest.fixture(scope="module")
def flower(worker: WorkerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flower]:
    """`celery -A worker flower` as an operator starts it: credentials only in ORCHESTRATOR_*."""
    env = {**os.environ, **settings_env(worker.host_name)}
    for name in [n for n in env if n.startswith("FLOWER_")]:
        del env[name]
    env["ORCHESTRATOR_FLOWER_BASIC_AUTH"] = f"{USER}:{PASSWORD}"
    port = free_port()
    instance = Flower(port, tmp_path_factory.mktemp("flower") / "flower.log")
    command = [sys.executable, "-m", "celery", "-A", "worker", "flower", f"--port={port}"]
    with open(instance.log_path, "wb") as log:
        proc = subprocess.Popen(
            [*command, "--address=127.0.0.1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(instance, proc)
        yield instance
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def tool_request(script: str, **extra: Any) -> dict[str, Any]:
    return {
        "tool_name": "flower-probe",
        "session_id": f"it-{uuid.uuid4().hex[:10]}",
        "image": TEST_IMAGE,
        "command": ["sh", "-c", script],
        **extra,
    }


def chromium(url: str, *args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )


def test_api_and_dashboard_refuse_missing_or_wrong_credentials(flower: Flower) -> None:
    assert flower.call("GET", "/api/workers", auth=None).status == 401
    assert flower.call("GET", "/api/workers", auth=(USER, "wrong")).status == 401
    assert flower.call("POST", "/api/task/async-apply/orchestrator.stats.all", {}, None).status == (
        401
    )
    assert flower.call("GET", "/tasks", auth=None).status == 401


def test_api_lists_the_worker_and_its_host_queue(flower: Flower, worker: WorkerProcess) -> None:
    deadline = time.monotonic() + 30
    while True:
        reply = flower.call("GET", "/api/workers?refresh=1")
        assert reply.status == 200, reply.body
        queues = {
            q["name"] for info in reply.json().values() for q in info.get("active_queues") or []
        }
        if f"host.{worker.host_name}" in queues:
            break
        assert time.monotonic() < deadline, queues
        time.sleep(0.5)
    assert {"celery", "tools", "relics"} <= queues


def test_tool_run_through_the_api_shows_in_metrics_and_dashboard(
    flower: Flower, tmp_path: Path
) -> None:
    request = tool_request("echo '{\"answer\": 42}'")
    task_id = flower.apply("orchestrator.tools.execute", request)

    done = flower.result(task_id, lambda r: r["state"] == "SUCCESS")
    assert done["result"]["status"] == "succeeded"
    assert done["result"]["result"] == {"answer": 42}
    assert done["result"]["execution_id"] == task_id

    revoke = flower.call("POST", f"/api/task/revoke/{task_id}")
    assert revoke.status == 200 and task_id in revoke.json()["message"]

    expected = 'flower_events_total{task="orchestrator.tools.execute",type="task-succeeded"'
    deadline = time.monotonic() + 20
    while expected not in flower.call("GET", "/metrics").body.decode():
        assert time.monotonic() < deadline, "no task-succeeded counter in /metrics"
        time.sleep(0.5)

    require(Path("/usr/bin/chromium").exists() or bool(shutil.which("chromium")), "chromium")
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{flower.port}/tasks"
    dom = chromium(url, "--virtual-time-budget=8000", "--dump-dom", profile=tmp_path / "p1").stdout
    assert task_id in dom
    assert "orchestrator.tools.execute" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "flower-tasks.png"
    shot.unlink(missing_ok=True)
    chromium(
        url,
        "--virtual-time-budget=8000",
        "--window-size=1400,900",
        f"--screenshot={shot}",
        profile=tmp_path / "p2",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000

    refused = chromium(
        f"http://127.0.0.1:{flower.port}/tasks", "--dump-dom", profile=tmp_path / "p3"
    ).stdout
    assert task_id not in refused


def test_cancel_and_stats_through_the_api(flower: Flower, worker: WorkerProcess) -> None:
    request = tool_request("sleep 30; echo late", resource_limits={"timeout_seconds": 60})
    task_id = flower.apply("orchestrator.tools.execute", request)
    flower.result(task_id, lambda r: r["state"] == "RUNNING")

    overview = flower.result(
        flower.apply("orchestrator.stats.all"), lambda r: r["state"] == "SUCCESS"
    )
    assert worker.host_name in overview["result"]["hosts"]
    assert f"orch-tool-{task_id}" in [c["name"] for c in overview["result"]["containers"]]

    cancel = flower.result(
        flower.apply("orchestrator.tools.cancel", task_id), lambda r: r["state"] == "SUCCESS"
    )
    assert cancel["result"]["cancelled"] is True
    final = flower.result(task_id, lambda r: r["state"] == "SUCCESS")
    assert final["result"]["status"] == "cancelled"


def test_secrets_stay_out_of_flower_when_the_caller_sends_argsrepr(flower: Flower) -> None:
    request = tool_request('echo "${#TOKEN}"', secret_parameters={"TOKEN": "s3cr3t-value"})
    shown = {**request, "secret_parameters": {"TOKEN": "***"}}
    body = {"args": [request], "argsrepr": repr([shown])}
    reply = flower.call("POST", "/api/task/async-apply/orchestrator.tools.execute", body)
    assert reply.status == 200, reply.body
    task_id = reply.json()["task-id"]

    done = flower.result(task_id, lambda r: r["state"] == "SUCCESS")
    assert done["result"]["stdout"] == "12\n"
    deadline = time.monotonic() + 20
    while True:
        info = flower.call("GET", f"/api/task/info/{task_id}")
        if info.status == 200 and info.json().get("state") == "SUCCESS":
            break
        assert time.monotonic() < deadline, info.body
        time.sleep(0.3)
    assert "'TOKEN': '***'" in info.json()["args"]
    assert b"s3cr3t-value" not in info.body
    assert b"s3cr3t-value" not in flower.call("GET", "/api/tasks").body
