"""The docker-compose deployment, for real: the image is built from the Dockerfile, the stack
(Redis with a password and AOF, two worker replicas on the host's engine, beat, Flower) comes
up healthy, a tool and a relic run through it from a client on the host, a tool with
secret_parameters and a build (enabled by the operator's environment) run too, Flower answers
with auth and forgets a replica that went away, Redis' password is on no command line, the
services' logs are capped, and `docker-compose down -v --rmi local` leaves nothing behind.

No registry is reachable here: scripts/base-image.sh makes local stand-ins for the base and
Redis images (debootstrap), which the stack is told to use through its own variables.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

from orchestrator import OrchestratorClient, Settings
from orchestrator.core.secrets import generate_key
from tests.integration.harness import (
    ROOT,
    TEST_IMAGE,
    force_remove_managed,
    have,
    listed,
    managed_leftovers,
    remove_built_images,
    require,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BASE_IMAGE = "local/python:3.11"
REDIS_IMAGE = "local/redis:7"
#: Everything scripts/base-image.sh makes (the Debian image is the other two's base).
BASE_TAGS = (BASE_IMAGE, REDIS_IMAGE, "local/debian:bookworm")
BUILD_STAGE_LABEL = "org.opencontainers.image.title=orchestrator-build-stage"
COMPOSE_LABEL = "com.docker.compose.project"
FLOWER_USER, FLOWER_PASSWORD = "ops", "flower-pw"
REPLICAS = 2
#: Flower forgets a worker replica this long after it went offline (the stack's default: 300).
PURGE_SECONDS = 5
LOG_MAX_SIZE, LOG_MAX_FILE = "2m", "2"
SERVICES = ("redis", "worker", "beat", "flower")
HTTPD = (
    "mkdir -p /www && echo ok > /www/health && echo hello > /www/index.html"
    " && exec httpd -f -p 8000 -h /www"
)
NOT_SENT = (".git", ".venv", "__pycache__", "*_cache", "artifacts", ".benchmarks", "*.egg-info")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pip_cert() -> Path | None:
    """The CA bundle pip uses on this machine (a TLS-intercepting proxy's, in CI)."""
    candidates = [os.environ.get("PIP_CERT", "")]
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    candidates += [
        line.split("=", 1)[1].strip().strip("'\"")
        for line in listed.splitlines()
        if line.split("=", 1)[0].endswith(".cert")
    ]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def pip_index_url() -> str:
    """pip's index, when it is not PyPI and the build can reach it (http or https)."""
    url = os.environ.get("PIP_INDEX_URL", "")
    if not url:
        url = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    return url if url.startswith(("http://", "https://")) else ""


@dataclass
class Stack:
    project: str
    directory: Path
    env: dict[str, str]
    host_name: str
    redis_url: str
    flower_port: int
    password: str
    secret_key: str
    down_done: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker-compose", "-p", self.project, *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60").stdout[-8000:]

    def containers(self, client: docker.DockerClient, service: str | None = None) -> list[Any]:
        labels = [f"{COMPOSE_LABEL}={self.project}"]
        if service:
            labels.append(f"com.docker.compose.service={service}")
        return list(client.containers.list(all=True, filters={"label": labels}))

    def down(self, client: docker.DockerClient) -> None:
        if self.down_done:
            return
        self.down_done = True
        started = time.monotonic()
        result = self.compose("down", "-v", "--rmi", "local", "--remove-orphans", timeout=300)
        self.timings["down"] = time.monotonic() - started
        # The build stage of the multi-stage Dockerfile is left as a dangling image.
        client.images.prune(filters={"dangling": True, "label": BUILD_STAGE_LABEL})
        assert result.returncode == 0, result.stderr


def make_context(directory: Path) -> None:
    """A copy of the repository as the build context, with pip's CA bundle beside it."""
    shutil.copytree(ROOT, directory, ignore=shutil.ignore_patterns(*NOT_SENT))
    ca = pip_cert()
    if ca is not None:
        shutil.copyfile(ca, directory / "pip-ca.crt")


def base_images(client: docker.DockerClient) -> list[str]:
    """Make the local base images if missing; return the tags this call created."""
    before = {tag for tag in BASE_TAGS if client.images.list(name=tag)}
    if not {BASE_IMAGE, REDIS_IMAGE} <= before:
        require(have("debootstrap"), "debootstrap (to build the local base images)")
        subprocess.run(["bash", str(ROOT / "scripts/base-image.sh")], check=True, timeout=900)
    return [tag for tag in BASE_TAGS if tag not in before and client.images.list(name=tag)]


def remove_images(client: docker.DockerClient, tags: list[str]) -> None:
    """Untag what this module built (the stack's own images went with `down --rmi local`)."""
    for tag in tags:
        try:
            client.images.remove(tag)
        except docker.errors.APIError as exc:
            print(f"could not remove {tag}: {exc}")


def wait_healthy(stack: Stack, client: docker.DockerClient, timeout_seconds: float) -> None:
    """Until every container of the stack runs and every healthcheck says healthy."""
    deadline = time.monotonic() + timeout_seconds
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {}
        for container in stack.containers(client):
            state = container.attrs["State"]
            states[container.name] = (state.get("Health") or {}).get("Status") or state["Status"]
            if state["Status"] in ("exited", "dead"):
                pytest.fail(f"{container.name} exited; logs:\n{stack.logs()}")
        if len(states) == 3 + REPLICAS and set(states.values()) <= {"healthy", "running"}:
            return
        time.sleep(1)
    pytest.fail(f"stack not healthy in {timeout_seconds} s: {states}; logs:\n{stack.logs()}")


@pytest.fixture(scope="module")
def stack(
    services: None, docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    require(have("docker-compose"), "docker-compose")
    started = time.monotonic()
    created = base_images(docker_client)
    base_seconds = time.monotonic() - started
    directory = tmp_path_factory.mktemp("compose") / "orchestrator"
    make_context(directory)
    password = uuid.uuid4().hex
    secret_key = generate_key()
    redis_port, flower_port = free_port(), free_port()
    host_name = f"compose-{uuid.uuid4().hex[:6]}"
    env = {
        **os.environ,
        "ORCHESTRATOR_BASE_IMAGE": BASE_IMAGE,
        "ORCHESTRATOR_REDIS_IMAGE": REDIS_IMAGE,
        "ORCHESTRATOR_PIP_CERT": "/src/pip-ca.crt" if (directory / "pip-ca.crt").exists() else "",
        "ORCHESTRATOR_PIP_INDEX_URL": pip_index_url(),
        "REDIS_PASSWORD": password,
        "ORCHESTRATOR_REDIS_PORT": str(redis_port),
        "ORCHESTRATOR_FLOWER_PORT": str(flower_port),
        "ORCHESTRATOR_FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{FLOWER_PASSWORD}",
        "ORCHESTRATOR_SECRET_KEY": secret_key,
        "ORCHESTRATOR_HOST_NAME": host_name,
        # Builds are off unless the operator's environment turns them on.
        "ORCHESTRATOR_ALLOW_BUILDS": "true",
        "ORCHESTRATOR_FLOWER_PURGE_OFFLINE_SECONDS": str(PURGE_SECONDS),
        "ORCHESTRATOR_LOG_MAX_SIZE": LOG_MAX_SIZE,
        "ORCHESTRATOR_LOG_MAX_FILE": LOG_MAX_FILE,
        # The janitor reaps every managed object on the engine it drives; other tests share
        # this engine, so it must not run during this one.
        "ORCHESTRATOR_JANITOR_INTERVAL_SECONDS": "3600",
        "ORCHESTRATOR_WORKER_CONCURRENCY": "8",
    }
    stack = Stack(
        project=f"orchtest{uuid.uuid4().hex[:8]}",
        directory=directory,
        env=env,
        host_name=host_name,
        redis_url=f"redis://:{password}@127.0.0.1:{redis_port}/0",
        flower_port=flower_port,
        password=password,
        secret_key=secret_key,
    )
    stack.timings["base_images"] = base_seconds
    try:
        started = time.monotonic()
        up = stack.compose("up", "-d", "--build", "--scale", f"worker={REPLICAS}", timeout=900)
        assert up.returncode == 0, f"{up.stderr[-4000:]}\n{up.stdout[-4000:]}"
        stack.timings["up"] = time.monotonic() - started
        wait_healthy(stack, docker_client, 180)
        stack.timings["healthy"] = time.monotonic() - started
        yield stack
    finally:
        try:
            stack.down(docker_client)
        finally:
            # What a failed test left on the engine (test_down_leaves_nothing saw it first).
            force_remove_managed(docker_client, host_name)
            shutil.rmtree(directory, ignore_errors=True)
            remove_images(docker_client, created)
        print(f"compose timings (s): {json.dumps(stack.timings)}")


@pytest.fixture(scope="module")
def stack_client(stack: Stack) -> Iterator[OrchestratorClient]:
    settings = Settings.from_env(
        {},
        broker_url=stack.redis_url,
        result_backend=stack.redis_url,
        secret_key=stack.secret_key,
    )
    client = OrchestratorClient(settings)
    yield client
    client.close()


def flower_get(stack: Stack, path: str, auth: bool = True) -> tuple[int, bytes]:
    headers = {}
    if auth:
        token = base64.b64encode(f"{FLOWER_USER}:{FLOWER_PASSWORD}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    connection = http.client.HTTPConnection("127.0.0.1", stack.flower_port, timeout=30)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_stack_is_healthy_with_a_password_protected_persistent_redis(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    store = redis.Redis.from_url(stack.redis_url)
    assert store.config_get("appendonly") == {"appendonly": "yes"}
    assert store.config_get("appendfsync") == {"appendfsync": "everysec"}
    anonymous = redis.Redis(host="127.0.0.1", port=store.connection_pool.connection_kwargs["port"])
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    store.close()
    anonymous.close()


def test_worker_replicas_share_the_host_name_and_run_unprivileged(
    stack: Stack, stack_client: OrchestratorClient, docker_client: docker.DockerClient
) -> None:
    workers = stack.containers(docker_client, "worker")
    assert len(workers) == REPLICAS
    for container in workers:
        uid = container.exec_run(["sh", "-c", "grep ^Uid: /proc/1/status"]).output.split()
        assert uid[1] != b"0", f"{container.name} runs its worker as root"
    replies = stack_client.app.control.ping(timeout=5)
    assert len(replies) == REPLICAS, replies
    queues = stack_client.app.control.inspect(timeout=5).active_queues() or {}
    for node, consumed in queues.items():
        assert f"host.{stack.host_name}" in {q["name"] for q in consumed}, node


def test_a_tool_and_a_relic_run_through_the_stack(
    stack: Stack, stack_client: OrchestratorClient, docker_client: docker.DockerClient
) -> None:
    session_id = f"compose-{uuid.uuid4().hex[:8]}"
    result = stack_client.run_tool(
        {
            "tool_name": "greet",
            "session_id": session_id,
            "image": TEST_IMAGE,
            "command": ["sh", "-c", 'echo "{\\"hello\\": \\"$NAME\\"}"'],
            "parameters": {"NAME": "compose"},
        },
        timeout=120,
    )
    assert (result.status, result.result, result.host) == (
        "succeeded",
        {"hello": "compose"},
        stack.host_name,
    )
    # The worker probes the relic from inside the session network, which it joins.
    relic = stack_client.start_relic(
        {
            "relic_name": "web",
            "session_id": session_id,
            "image": TEST_IMAGE,
            "command": ["sh", "-c", HTTPD],
            "health_timeout_seconds": 30,
        },
        timeout=120,
    )
    assert relic.healthy and relic.internal_url == (
        f"http://orch-relic-{len(session_id)}-{session_id}-web:8000"
    )
    # Whichever replica answers probes the relic the same way.
    assert all(stack_client.get_relic(relic.relic_id).healthy for _ in range(2 * REPLICAS))
    worker_ids = {c.id for c in stack.containers(docker_client, "worker")}
    network = docker_client.networks.get(f"session_{session_id}")
    assert not worker_ids & set(network.attrs["Containers"]), "a worker stayed attached"
    report = stack_client.cleanup_session(session_id)
    assert (report.containers_removed, report.networks_removed, report.errors) == (1, 1, [])
    # The session's work is gone; the warm pool the worker sized from this run's demand is
    # the host's own (`down` removes it: checked after the stack stops).
    assert managed_leftovers(docker_client, stack.host_name, idle_pool=False) == {
        "containers": [],
        "networks": [],
        "volumes": [],
    }


def test_flower_requires_auth_and_shows_runs_and_metrics(
    stack: Stack, stack_client: OrchestratorClient
) -> None:
    assert flower_get(stack, "/api/workers", auth=False)[0] == 401
    status, body = flower_get(stack, "/api/workers")
    assert status == 200, body
    execution_id = stack_client.execute_tool(
        {
            "tool_name": "echo",
            "session_id": "compose-flower",
            "image": TEST_IMAGE,
            "command": ["echo", "hi"],
        }
    ).id
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # Flower learns of the run from the workers' events
        status, body = flower_get(stack, f"/api/task/info/{execution_id}")
        if status == 200 and json.loads(body).get("state") == "SUCCESS":
            break
        time.sleep(0.5)
    assert status == 200 and json.loads(body)["state"] == "SUCCESS", body
    status, body = flower_get(stack, "/metrics", auth=False)
    assert status == 200 and b"flower_events_total" in body


def test_the_readmes_command_runs_a_tool_with_the_cli_inside_the_worker(stack: Stack) -> None:
    """README, "Quickstart with docker compose": `docker compose exec worker orchestrator tool
    run ...` works as written (the image is the local test image: no registry here)."""
    done = stack.compose(
        "exec",
        "-T",
        "worker",
        "orchestrator",
        "tool",
        "run",
        "--image",
        TEST_IMAGE,
        "--session",
        "compose-readme",
        "--",
        "sh",
        "-c",
        'echo "{\\"hello\\": \\"compose\\"}"',
        timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"hello": "compose"' in done.stdout, done.stdout


def test_compose_refuses_to_start_without_a_secret_key(tmp_path: Path) -> None:
    """Like the passwords, the key has no default: compose names the variable and stops."""
    require(have("docker-compose"), "docker-compose")
    shutil.copyfile(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "REDIS_PASSWORD": "x" * 32,
        "ORCHESTRATOR_FLOWER_BASIC_AUTH": "ops:pw",
    }
    run = ["docker-compose", "config"]
    refused = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "ORCHESTRATOR_SECRET_KEY" in refused.stderr
    env["ORCHESTRATOR_SECRET_KEY"] = generate_key()
    accepted = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert accepted.returncode == 0, accepted.stderr
    assert "version" not in accepted.stderr.lower()  # no obsolete `version:` key to warn about


def test_redis_password_is_on_no_command_line(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    """Neither `docker inspect` of Redis nor any process's argv on the host (`ps` sees the
    containers' processes too: Redis, the workers, healthchecks) shows the password."""
    secret = stack.password.encode()
    (store,) = stack.containers(docker_client, "redis")
    config = store.attrs["Config"]
    shown = [store.attrs["Path"], store.attrs["Args"], config["Cmd"], config["Entrypoint"]]
    assert stack.password not in json.dumps(shown), shown
    seen = 0
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue  # exited meanwhile
        seen += b"redis-server" in argv
        assert secret not in argv, f"pid {proc.name}: {argv[:200]!r}"
    assert seen, "no redis-server process seen on the host"
    assert redis.Redis.from_url(stack.redis_url).ping()


def test_every_services_log_is_capped(stack: Stack, docker_client: docker.DockerClient) -> None:
    containers = stack.containers(docker_client)
    services = {c.labels["com.docker.compose.service"] for c in containers}
    assert services == set(SERVICES)
    for container in containers:
        config = container.attrs["HostConfig"]["LogConfig"]
        assert config["Type"] == "json-file", container.name
        assert config["Config"] == {"max-size": LOG_MAX_SIZE, "max-file": LOG_MAX_FILE}


def test_a_tool_with_secret_parameters_runs_through_the_stack(
    stack: Stack, stack_client: OrchestratorClient
) -> None:
    """The client encrypts with the key the stack's workers were given; the worker decrypts
    it for the container only; neither the result nor Redis holds the value."""
    secret = f"compose-secret-{uuid.uuid4().hex}"
    result = stack_client.run_tool(
        {
            "tool_name": "secret",
            "session_id": f"compose-{uuid.uuid4().hex[:8]}",
            "image": TEST_IMAGE,
            "command": ["sh", "-c", 'printf %s "$TOKEN" | md5sum'],
            "secret_parameters": {"TOKEN": secret},
        },
        timeout=120,
    )
    assert result.status == "succeeded", result.stderr
    assert result.stdout.split()[0] == hashlib.md5(secret.encode()).hexdigest()
    store = redis.Redis.from_url(stack.redis_url)
    for key in store.scan_iter(match="*"):
        if store.type(key) == b"string":
            assert secret.encode() not in store.get(key), key
    assert secret not in result.model_dump_json()


def test_a_build_runs_when_the_operators_environment_enables_builds(
    stack: Stack, stack_client: OrchestratorClient, docker_client: docker.DockerClient
) -> None:
    tag = f"compose-build-{uuid.uuid4().hex[:8]}"
    try:
        result = stack_client.run_tool(
            {
                "tool_name": "built",
                "session_id": f"compose-{uuid.uuid4().hex[:8]}",
                "build": {
                    "dockerfile_inline": f"FROM {TEST_IMAGE}\nRUN echo built > /built\n",
                    "tag": tag,
                },
                "command": ["cat", "/built"],
            },
            timeout=300,
        )
        assert (result.status, result.stdout) == ("succeeded", "built\n"), result.stderr
    finally:
        remove_built_images(docker_client, tag)


def flower_workers(stack: Stack) -> dict[str, bool]:
    """Flower's worker list (its dashboard's JSON): node name -> online."""
    status, body = flower_get(stack, "/workers?json=1")
    assert status == 200, body
    return {w["hostname"]: bool(w.get("status")) for w in json.loads(body)["data"]}


def test_flower_forgets_a_worker_replica_that_went_away(
    stack: Stack, docker_client: docker.DockerClient
) -> None:
    """Runs last but one: it stops a replica (down removes it)."""
    workers = stack.containers(docker_client, "worker")
    nodes = {f"celery@{c.attrs['Config']['Hostname']}": c for c in workers}
    deadline = time.monotonic() + 60
    while set(nodes) - set(flower_workers(stack)) and time.monotonic() < deadline:
        time.sleep(1)
    assert set(nodes) <= set(flower_workers(stack))
    gone, kept = sorted(nodes)
    nodes[gone].stop(timeout=60)
    deadline = time.monotonic() + PURGE_SECONDS + 60
    listed = flower_workers(stack)
    while gone in listed and time.monotonic() < deadline:
        time.sleep(1)
        listed = flower_workers(stack)
    assert gone not in listed, listed
    assert listed.get(kept) is True, listed


def test_down_leaves_nothing(stack: Stack, docker_client: docker.DockerClient) -> None:
    stack.down(docker_client)
    label = {"label": f"{COMPOSE_LABEL}={stack.project}"}
    assert listed(docker_client, label) == []
    assert docker_client.networks.list(filters=label) == []
    assert docker_client.volumes.list(filters=label) == []
    tags = [t for i in docker_client.images.list() for t in i.tags]
    # compose v1 named built images `project_service`, compose v2 names them `project-service`
    prefixes = (f"{stack.project}_", f"{stack.project}-")
    assert not [t for t in tags if t.startswith(prefixes)], tags
    assert not docker_client.images.list(filters={"dangling": True, "label": BUILD_STAGE_LABEL})
    assert managed_leftovers(docker_client, stack.host_name) == {
        "containers": [],
        "networks": [],
        "volumes": [],
    }
