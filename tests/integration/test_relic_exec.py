"""Commands in a live session container: workspace relics and ``orchestrator.relics.exec``
on the real engine, with real workers (one of them killed mid-exec)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import redis
from celery import Celery

from orchestrator import OrchestratorClient
from orchestrator.errors import Forbidden, InvalidRequest, LimitExceeded, RelicNotFound
from orchestrator.models import ExecResult, RelicInfo
from tests.integration.conftest import USED_HOSTS, make_client
from tests.integration.harness import (
    BROKER_URL,
    REDIS_URL,
    ROOT,
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    settings_env,
)
from tests.integration.test_containment_secrets import leaking_keys

#: Lists the command lines of the live processes that match a pattern (zombies have none).
LIVE = (
    "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f 2>/dev/null; echo; done "
    '| grep -c -e "$0" || true'
)


def workspace(session_id: str, name: str = "ws", **extra: Any) -> dict[str, Any]:
    """A workspace relic: no health endpoint, a process that only waits."""
    return {
        "relic_name": name,
        "session_id": session_id,
        "image": TEST_IMAGE,
        "command": ["sh", "-c", "while :; do sleep 1; done"],
        "health_check_endpoint": None,
        "health_timeout_seconds": 20,
        **extra,
    }


def live_count(client: OrchestratorClient, relic_id: str, pattern: str) -> int:
    """How many live processes in the relic have ``pattern`` in their command line."""
    out = client.exec_in_relic(relic_id, ["sh", "-c", LIVE, pattern], timeout=20)
    assert out.status == "succeeded", out
    return int(out.stdout.strip())


def wait_state(client: OrchestratorClient, task_id: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.app.AsyncResult(task_id).state == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"{task_id} never reached {state}")


@pytest.fixture(scope="module")
def ws(client: OrchestratorClient) -> Iterator[RelicInfo]:
    """One workspace relic shared by the tests that only run commands in it."""
    session_id = f"it-ws-{uuid.uuid4().hex[:8]}"
    info = client.start_relic(workspace(session_id), timeout=60)
    yield info
    client.cleanup_session(session_id)


def test_a_workspace_relic_is_ready_once_it_runs_and_keeps_state_between_execs(
    client: OrchestratorClient, ws: RelicInfo
) -> None:
    assert ws.status == "running" and ws.healthy
    assert client.get_relic(ws.relic_id).healthy  # no endpoint: healthy while it runs
    wrote = client.exec_in_relic(
        ws.relic_id, "mkdir -p /work && echo state-kept > /work/f && echo '{\"n\": 1}'"
    )
    assert wrote.status == "succeeded", wrote
    assert wrote.exit_code == 0 and wrote.result == {"n": 1}
    assert wrote.exec_id and wrote.relic_id == ws.relic_id and wrote.session_id == ws.session_id
    assert wrote.host == ws.host and wrote.duration_seconds is not None
    read = client.exec_in_relic(ws.relic_id, ["cat", "f"], working_dir="/work")
    assert (read.status, read.stdout) == ("succeeded", "state-kept\n")
    env = client.exec_in_relic(ws.relic_id, 'echo "$A-$B" >&2; exit 3', environment={"A": "x"})
    assert (env.status, env.exit_code, env.stderr) == ("failed", 3, "x-\n")
    assert env.error == "exited with code 3"


def test_an_exec_past_its_timeout_is_killed_inside_and_the_relic_goes_on(
    client: OrchestratorClient, ws: RelicInfo
) -> None:
    # A command that ignores SIGTERM and leaves a child in a session of its own.
    script = 'trap "" TERM; (setsid sleep 3011 &); sleep 3012; echo never'
    began = time.monotonic()
    out = client.exec_in_relic(ws.relic_id, ["sh", "-c", script], timeout=2)
    took = time.monotonic() - began
    assert out.status == "timed_out", out
    assert "killed after the 2 s timeout" in (out.error or "")
    assert "never" not in out.stdout
    assert took < 12
    assert live_count(client, ws.relic_id, "sleep 301[12]") == 0  # every process is gone
    assert client.get_relic(ws.relic_id).status == "running"
    again = client.exec_in_relic(ws.relic_id, ["echo", "alive"])
    assert again.stdout == "alive\n"


def test_execs_in_one_relic_run_at_once(client: OrchestratorClient, ws: RelicInfo) -> None:
    # Each one waits until all three have started: run one after another, they time out.
    tag = uuid.uuid4().hex[:8]
    script = (
        f"mkdir -p /tmp/{tag}; touch /tmp/{tag}/$0; "
        f'while [ "$(ls /tmp/{tag} | wc -l)" -lt 3 ]; do sleep 0.05; done; echo met'
    )
    handles = [
        client.start_exec(ws.relic_id, ["sh", "-c", script, str(i)], timeout=20) for i in range(3)
    ]
    results = [h.result(60) for h in handles]
    assert [r.status for r in results] == ["succeeded"] * 3, results
    assert all(r.stdout == "met\n" for r in results)
    assert len({r.exec_id for r in results}) == 3
    latest_start = max(r.started_at for r in results if r.started_at)
    earliest_end = min(r.finished_at for r in results if r.finished_at)
    assert latest_start < earliest_end  # the three overlapped


def test_cancel_kills_a_running_exec_and_not_the_relic(
    client: OrchestratorClient, ws: RelicInfo
) -> None:
    handle = client.start_exec(ws.relic_id, ["sh", "-c", "echo started; sleep 3021"], timeout=120)
    wait_state(client, handle.id, "RUNNING")
    deadline = time.monotonic() + 10
    while "started" not in client.live_logs(handle.id)["stdout"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    reply = client.cancel_tool(handle.id)
    assert reply["cancelled"] is True
    out = handle.result(30)
    assert out.status == "cancelled", out
    assert out.stdout == "started\n"
    assert live_count(client, ws.relic_id, "sleep 302[1]") == 0
    assert client.cancel_tool(handle.id)["cancelled"] is False  # over: nothing to cancel
    assert client.get_relic(ws.relic_id).status == "running"


def test_binary_and_non_utf8_output_come_back_replaced_and_capped(
    client: OrchestratorClient, ws: RelicInfo
) -> None:
    out = client.exec_in_relic(ws.relic_id, "printf 'a\\377\\376b\\000c'; printf '\\351t\\351' >&2")
    assert out.status == "succeeded", out
    assert out.stdout == "a\ufffd\ufffdb\x00c"
    assert out.stderr == "\ufffdt\ufffd"
    big = client.exec_in_relic(ws.relic_id, "head -c 3000000 /dev/urandom; echo; echo tail-end")
    assert big.status == "succeeded", big
    assert big.stdout_truncated is True
    assert big.stdout.endswith("tail-end\n") and "bytes truncated" in big.stdout


def test_a_megabyte_of_stdin_arrives_byte_for_byte(
    client: OrchestratorClient, ws: RelicInfo
) -> None:
    rng = random.Random(14)
    data = "".join(rng.choice(string.ascii_letters + "\n") for _ in range(1024 * 1024))
    out = client.exec_in_relic(
        ws.relic_id,
        "mkdir -p /tmp; cat > /tmp/stdin-in; wc -c < /tmp/stdin-in; md5sum < /tmp/stdin-in",
        stdin=data,
    )
    assert out.status == "succeeded", out
    size, digest = out.stdout.split()[:2]
    assert int(size) == len(data.encode())
    assert digest == hashlib.md5(data.encode()).hexdigest()  # noqa: S324 - a checksum


def test_secrets_are_masked_in_the_result_the_live_output_and_redis(
    client: OrchestratorClient, ws: RelicInfo
) -> None:
    secret = "exec-" + uuid.uuid4().hex
    handle = client.start_exec(
        ws.relic_id,
        'echo "token=$TOKEN"; printf %s "$TOKEN" | base64 >&2; echo "{\\"t\\": \\"$TOKEN\\"}"',
        secret_parameters={"TOKEN": secret},
    )
    out = handle.result(60)
    assert out.status == "succeeded", out
    assert out.stdout.startswith("token=***\n") and out.result == {"t": "***"}
    assert secret not in out.stderr and "***" in out.stderr
    live = client.live_logs(handle.id)
    assert "token=***" in live["stdout"] and secret not in live["stdout"] + live["stderr"]
    assert leaking_keys(redis.Redis.from_url(REDIS_URL), secret) == []


def test_the_relics_own_secrets_are_masked_in_its_execs(client: OrchestratorClient) -> None:
    session_id = f"it-ws-{uuid.uuid4().hex[:8]}"
    secret = "relic-" + uuid.uuid4().hex
    info = client.start_relic(
        workspace(session_id, secret_parameters={"API_KEY": secret}), timeout=60
    )
    try:
        out = client.exec_in_relic(info.relic_id, "env; cat /proc/1/environ | tr '\\0' '\\n'")
        assert out.status == "succeeded", out
        assert "API_KEY=***" in out.stdout and secret not in out.stdout
        assert leaking_keys(redis.Redis.from_url(REDIS_URL), secret) == []
    finally:
        client.cleanup_session(session_id)


def test_exec_by_task_name_from_a_plain_celery_client(ws: RelicInfo) -> None:
    app = Celery(broker=BROKER_URL, backend=REDIS_URL)
    try:
        sent = app.send_task(
            "orchestrator.relics.exec",
            args=[{"relic_id": ws.relic_id, "command": ["sh", "-c", "echo plain; exit 4"]}],
        )
        result = ExecResult.model_validate(sent.get(timeout=60))
    finally:
        app.close()
    assert (result.status, result.exit_code, result.stdout) == ("failed", 4, "plain\n")
    assert result.exec_id == sent.id


def test_refusals_name_what_is_wrong_and_run_nothing(
    client: OrchestratorClient, ws: RelicInfo
) -> None:
    with pytest.raises(RelicNotFound, match="relic_id"):
        client.exec_in_relic("no-such-relic", ["true"])
    with pytest.raises(Forbidden, match="another session"):
        client.exec_in_relic(ws.relic_id, ["true"], session_id="some-other-session")
    with pytest.raises(LimitExceeded, match="resource_limits.timeout_seconds"):
        client.exec_in_relic(ws.relic_id, ["true"], timeout=301)
    with pytest.raises(InvalidRequest, match="command"):
        client.exec_in_relic(ws.relic_id, [])
    with pytest.raises(InvalidRequest, match="working_dir"):
        client.exec_in_relic(ws.relic_id, ["true"], working_dir="relative")


def test_the_relic_timeout_bounds_every_exec_in_it(
    client: OrchestratorClient, session_id: str
) -> None:
    try:
        info = client.start_relic(
            workspace(session_id, resource_limits={"timeout_seconds": 2}), timeout=60
        )
        out = client.exec_in_relic(info.relic_id, ["sleep", "3031"], timeout=None)
        assert out.status == "timed_out" and "2 s timeout" in (out.error or ""), out
        with pytest.raises(LimitExceeded, match="above the 2 s"):
            client.exec_in_relic(info.relic_id, ["true"], timeout=3)
        assert client.get_relic(info.relic_id).status == "running"
    finally:
        client.cleanup_session(session_id)


@pytest.fixture
def crash_host(docker_client: docker.DockerClient) -> Iterator[str]:
    name = f"it-xcrash-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    yield name
    force_remove_managed(docker_client, name)


def test_a_worker_killed_mid_exec_answers_an_error_and_never_runs_it_twice(
    worker_env: dict[str, str], crash_host: str, tmp_path: Path
) -> None:
    session_id = f"it-xc-{uuid.uuid4().hex[:8]}"
    first = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
    second: WorkerProcess | None = None
    client = make_client(crash_host)
    try:
        started = client.app.send_task(
            "orchestrator.relics.start", args=[workspace(session_id)], queue=f"host.{crash_host}"
        )
        relic = RelicInfo.model_validate(started.get(timeout=60))
        handle = client.start_exec(
            relic.relic_id,
            "mkdir -p /w; echo run >> /w/runs; echo started; sleep 3041",
            timeout=300,
        )
        wait_state(client, handle.id, "RUNNING")
        deadline = time.monotonic() + 10
        while "started" not in client.live_logs(handle.id)["stdout"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        first.kill()  # kill -9 the whole worker while the command runs
        killed_at = time.monotonic()
        second = WorkerProcess(crash_host, tmp_path, env=worker_env).start()
        out = handle.result(90)
        assert time.monotonic() - killed_at < 60
        assert out.status == "error", out
        assert "worker died" in (out.error or "") and "not run again" in (out.error or "")
        runs = client.exec_in_relic(relic.relic_id, ["cat", "/w/runs"])
        assert runs.stdout == "run\n", runs  # the command started exactly once
        assert live_count(client, relic.relic_id, "sleep 304[1]") == 0  # the orphan was killed
    finally:
        try:
            client.cleanup_session(session_id, timeout=120)
        finally:
            client.close()
            if second is not None:
                second.stop()
            first.kill()


def test_the_command_line_starts_a_workspace_and_runs_commands_in_it(
    worker: WorkerProcess, client: OrchestratorClient, session_id: str
) -> None:
    def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", *args],
            cwd=ROOT,
            env={**os.environ, **settings_env(worker.host_name)},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        started = cli("relic", "start", "--image", TEST_IMAGE, "--session", session_id,
                      "--name", "ws", "--no-health", "--json", "--", "sleep", "3600")  # fmt: skip
        assert started.returncode == 0, started.stderr
        relic_id = json.loads(started.stdout)["relic_id"]
        ran = cli("relic", "exec", relic_id, "-e", "X=1", "--", "sh", "-c",
                  'echo "out$X"; echo err >&2; exit 5')  # fmt: skip
        assert (ran.returncode, ran.stdout, ran.stderr) == (5, "out1\n", "err\n")
        fed = cli("relic", "exec", relic_id, "--stdin-file", "-", "--json", "--", "wc", "-c",
                  stdin="four")  # fmt: skip
        assert fed.returncode == 0, fed.stderr
        assert json.loads(fed.stdout)["stdout"].strip() == "4"
        late = cli("relic", "exec", relic_id, "--timeout", "1", "--", "sleep", "3051")
        assert late.returncode == 124 and "timed_out" in late.stderr
        missing = cli("relic", "exec", "no-such-relic", "--", "true")
        assert missing.returncode == 2 and "RelicNotFound" in missing.stderr
    finally:
        client.cleanup_session(session_id)
