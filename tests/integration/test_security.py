"""Hostile input, sandbox defaults and secrets, checked on the real engine and worker."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

from orchestrator import OrchestratorClient, Settings
from orchestrator.core.secrets import KEY_SETTING, keyring, seal_payload
from orchestrator.errors import Forbidden, InvalidRequest, OrchestratorError, QuotaExceeded
from tests.integration.harness import (
    REDIS_URL,
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    gone,
    listed,
    remove_built_images,
)
from tests.integration.test_relics import relic

GOOD_TOOL: dict[str, Any] = {
    "tool_name": "t",
    "session_id": "hostile",
    "image": TEST_IMAGE,
    "command": ["echo", "should never run"],
}
LONG = "x" * 300

# (case id, changes to a good request (None value deletes the key), field named in the error)
BAD_TOOLS: list[tuple[str, dict[str, Any], str]] = [
    ("tool_name_missing", {"tool_name": None}, "tool_name"),
    ("session_missing", {"session_id": None}, "session_id"),
    ("tool_name_int", {"tool_name": 5}, "tool_name"),
    ("tool_name_empty", {"tool_name": ""}, "tool_name"),
    ("tool_name_long", {"tool_name": LONG}, "tool_name"),
    ("session_empty", {"session_id": ""}, "session_id"),
    ("session_long", {"session_id": LONG}, "session_id"),
    ("session_path", {"session_id": "../../etc"}, "session_id"),
    ("session_slash", {"session_id": "a/b"}, "session_id"),
    ("session_shell", {"session_id": "a;rm -rf /"}, "session_id"),
    ("session_subst", {"session_id": "$(id)"}, "session_id"),
    ("session_backtick", {"session_id": "`id`"}, "session_id"),
    ("image_upper", {"image": "BusyBox"}, "image"),
    ("image_space", {"image": "busy box"}, "image"),
    ("image_colons", {"image": "a::b"}, "image"),
    ("image_digest", {"image": "a@sha256:123"}, "image"),
    ("image_newline", {"image": "busybox\n"}, "image"),
    ("image_and_build", {"build": {"dockerfile_inline": "FROM x"}}, "image or build"),
    ("no_image", {"image": None}, "image or build"),
    ("memory_negative", {"resource_limits": {"memory_mb": -1}}, "resource_limits.memory_mb"),
    ("memory_zero", {"resource_limits": {"memory_mb": 0}}, "resource_limits.memory_mb"),
    ("memory_string", {"resource_limits": {"memory_mb": "lots"}}, "resource_limits.memory_mb"),
    ("memory_over_cap", {"resource_limits": {"memory_mb": 10**7}}, "resource_limits.memory_mb"),
    ("cpu_zero", {"resource_limits": {"cpu_limit": 0}}, "resource_limits.cpu_limit"),
    ("cpu_over_cap", {"resource_limits": {"cpu_limit": 512}}, "resource_limits.cpu_limit"),
    (
        "timeout_zero",
        {"resource_limits": {"timeout_seconds": 0}},
        "resource_limits.timeout_seconds",
    ),
    ("timeout_over_cap", {"resource_limits": {"timeout_seconds": 10**7}}, "timeout_seconds"),
    ("pids_negative", {"resource_limits": {"pids_limit": -5}}, "resource_limits.pids_limit"),
    ("pids_over_cap", {"resource_limits": {"pids_limit": 10**6}}, "resource_limits.pids_limit"),
    ("limits_unknown", {"resource_limits": {"swap_mb": 5}}, "resource_limits.swap_mb"),
    ("env_equals", {"environment": {"A=B": "x"}}, "environment"),
    ("env_nul_name", {"environment": {"A\x00": "x"}}, "environment"),
    ("env_newline_name", {"environment": {"A\nB": "x"}}, "environment"),
    ("env_nul_value", {"environment": {"A": "x\x00y"}}, "environment"),
    ("env_digit", {"environment": {"1A": "x"}}, "environment"),
    ("param_equals", {"parameters": {"P=Q": 1}}, "parameters"),
    ("privileged", {"privileged": True}, "privileged"),
    ("cap_add", {"cap_add": ["SYS_ADMIN"]}, "cap_add"),
    ("devices", {"devices": ["/dev/sda"]}, "devices"),
    ("network_host", {"network_mode": "host"}, "network_mode"),
    ("network_container", {"network_mode": "container:x"}, "network_mode"),
    ("bind_root", {"volumes": [{"source": "/", "target": "/host"}]}, "volumes.0.source"),
    ("bind_socket", {"volumes": [{"source": "/var/run/docker.sock", "target": "/s"}]}, "volumes.0"),
    ("bind_etc", {"volumes": [{"source": "/etc", "target": "/e"}]}, "volumes.0.source"),
    ("volume_relative_target", {"volumes": [{"source": "v", "target": "rel"}]}, "volumes.0.target"),
    ("command_nul", {"command": ["echo", "a\x00b"]}, "command"),
    ("cleanup_string", {"cleanup": "maybe"}, "cleanup"),
    ("parameters_list", {"parameters": ["A"]}, "parameters"),
]

BAD_RELICS: list[tuple[str, dict[str, Any], str]] = [
    ("health_no_slash", {"health_check_endpoint": "health"}, "health_check_endpoint"),
    ("health_space", {"health_check_endpoint": "/a b"}, "health_check_endpoint"),
    ("port_zero", {"port": 0}, "port"),
    ("port_high", {"port": 65536}, "port"),
    ("ports_high", {"ports": {"8000": 70000}}, "ports"),
    ("relic_name_shell", {"relic_name": "x;y"}, "relic_name"),
    ("health_timeout_negative", {"health_timeout_seconds": -1}, "health_timeout_seconds"),
]


def changed(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def managed_count(engine: docker.DockerClient, host_name: str) -> int:
    """Managed containers of one worker's host, its warm pool's idle ones left out (the
    engine is shared with other tests, and a pool refills on its own)."""
    labels = ["orchestrator.managed=true", f"orchestrator.host={host_name}"]
    found = listed(engine, {"label": labels})
    return sum(c.labels.get("orchestrator.kind") != "pool" for c in found)


def test_at_least_forty_bad_requests_are_covered(request: pytest.FixtureRequest) -> None:
    """Counts the refusal cases this session really runs, one test each (the parametrized
    client-side test, whose every case must be refused), not the length of a list."""
    refusal = "test_bad_tool_request_is_refused_by_the_client_naming_the_field"
    cases = {
        item.callspec.params["case"]
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == refusal
        and hasattr(item, "callspec")
    }
    assert len(cases) >= 40, f"only {len(cases)} refusal cases collected: {sorted(cases)}"


# Caps and allowed roots are server policy: only the worker knows them.
CLIENT_SIDE = [c for c in BAD_TOOLS if not (c[0].endswith("over_cap") or c[0].startswith("bind_"))]


@pytest.mark.parametrize(("case", "changes", "field"), CLIENT_SIDE, ids=[c[0] for c in CLIENT_SIDE])
def test_bad_tool_request_is_refused_by_the_client_naming_the_field(
    client: OrchestratorClient, case: str, changes: dict[str, Any], field: str
) -> None:
    request = changed(GOOD_TOOL, changes)
    with pytest.raises(InvalidRequest, match=field.split(".")[0]):
        client.execute_tool(request)


def test_bad_raw_messages_fail_naming_the_field_start_nothing_and_the_worker_keeps_serving(
    client: OrchestratorClient, docker_client: docker.DockerClient
) -> None:
    host = client.settings.host_name
    before = managed_count(docker_client, host)
    sent = []
    for case, changes, field in BAD_TOOLS:
        # hand-built JSON, as any Celery client in any language could send
        body = json.loads(json.dumps(changed(GOOD_TOOL, changes)))
        sent.append(
            (
                case,
                field,
                client.app.send_task("orchestrator.tools.execute", args=[body], queue="tools"),
            )
        )
    for case, changes, field in BAD_RELICS:
        body = json.loads(json.dumps(changed(relic("hostile", "r"), changes)))
        sent.append(
            (
                case,
                field,
                client.app.send_task("orchestrator.relics.start", args=[body], queue="relics"),
            )
        )
    for case, field, outcome in sent:
        with pytest.raises(OrchestratorError) as caught:
            outcome.get(timeout=60)
        assert isinstance(caught.value, InvalidRequest), (case, caught.value)
        assert field in str(caught.value), (case, str(caught.value))
    assert managed_count(docker_client, host) == before  # nothing started
    ok = client.run_tool(changed(GOOD_TOOL, {"command": ["echo", "still serving"]}), timeout=60)
    assert ok.stdout == "still serving\n"


def test_bind_mounts_escaping_the_allowed_root_are_refused(
    client: OrchestratorClient, shared_dir: Path, tmp_path: Path
) -> None:
    inside = shared_dir / f"ok-{uuid.uuid4().hex[:6]}"
    inside.mkdir()
    link = shared_dir / f"link-{uuid.uuid4().hex[:6]}"
    os.symlink("/etc", link)
    escapes = [str(inside / ".." / ".." / "etc"), str(link), str(tmp_path)]
    for source in escapes:
        request = changed(GOOD_TOOL, {"volumes": [{"source": source, "target": "/x"}]})
        with pytest.raises(InvalidRequest, match="outside the allowed roots"):
            client.run_tool(request, timeout=60)
    allowed = changed(
        GOOD_TOOL,
        {
            "volumes": [{"source": str(inside), "target": "/x", "read_only": True}],
            "command": ["ls", "/x"],
        },
    )
    assert client.run_tool(allowed, timeout=60).status == "succeeded"


def test_tool_containers_run_sandboxed(
    client: OrchestratorClient, docker_client: docker.DockerClient, session_id: str
) -> None:
    handle = client.execute_tool(
        changed(
            GOOD_TOOL,
            {
                "session_id": session_id,
                "cleanup": False,
                "command": ["sh", "-c", "cat /proc/self/status | grep CapEff"],
            },
        )
    )
    result = handle.result(timeout=60)
    container = docker_client.containers.get(result.container_id)
    try:
        host = container.attrs["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert host["CapAdd"] in (None, [])
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Privileged"] is False
        assert host["PidsLimit"] == client.settings.default_pids_limit or host["PidsLimit"] > 0
        assert host["NetworkMode"] == "none"
        assert host["Devices"] in (None, [])
        assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024
        assert host["NanoCpus"] == 1_000_000_000
        assert host["LogConfig"]["Type"] == "json-file"
        assert host["LogConfig"]["Config"]["max-size"]
        assert result.stdout.split() == ["CapEff:", "0000000000000000"]
    finally:
        container.remove(force=True)


def test_relic_containers_run_sandboxed_in_an_internal_network(
    client: OrchestratorClient, docker_client: docker.DockerClient, session_id: str
) -> None:
    info = client.start_relic(relic(session_id, "svc"), timeout=60)
    try:
        container = docker_client.containers.get(info.container_id)
        host = container.attrs["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges:true" in host["SecurityOpt"]
        assert host["Privileged"] is False
        assert host["PidsLimit"] > 0
        assert host["Memory"] == 1024 * 1024 * 1024
        assert docker_client.networks.get(info.network).attrs["Internal"] is True
    finally:
        client.cleanup_session(session_id)


def test_secret_parameters_reach_the_container_but_never_come_back(
    client: OrchestratorClient, session_id: str
) -> None:
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    handle = client.execute_tool(
        changed(
            GOOD_TOOL,
            {
                "session_id": session_id,
                "secret_parameters": {"API_KEY": secret},
                "command": [
                    "sh",
                    "-c",
                    'echo "key=$API_KEY"; echo "len=${#API_KEY}"; echo "$API_KEY" >&2; '
                    'echo "{\\"k\\": \\"$API_KEY\\"}"',
                ],
            },
        )
    )
    result = handle.result(timeout=60)
    assert f"len={len(secret)}" in result.stdout  # it reached the container
    everything = result.model_dump_json()
    assert secret not in everything
    assert "key=***" in result.stdout and result.result == {"k": "***"}
    r = redis.Redis.from_url(REDIS_URL)
    time.sleep(0.5)
    for key in r.scan_iter(match="*"):
        kind = r.type(key)
        if kind == b"string":
            assert secret.encode() not in r.get(key), key
        elif kind == b"hash":
            assert all(secret.encode() not in v for v in r.hgetall(key).values()), key
        elif kind == b"stream":
            for _, fields in r.xrange(key):
                assert all(secret.encode() not in v for v in fields.values()), key


def test_read_only_root_with_a_writable_tmp_when_the_operator_asks(
    services: None, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    from tests.integration.conftest import USED_HOSTS, make_client
    from tests.integration.harness import WorkerProcess

    host = f"it-ro-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host)
    worker = WorkerProcess(host, tmp_path, env={"ORCHESTRATOR_READ_ONLY_ROOT": "true"}).start()
    client = make_client(host)
    try:
        outcome = client.app.send_task(
            "orchestrator.tools.execute",
            args=[
                changed(
                    GOOD_TOOL,
                    {
                        "cleanup": False,
                        "command": [
                            "sh",
                            "-c",
                            "echo x > /tmp/ok && cat /tmp/ok; grep -c localhost /etc/hosts >&2;"
                            " echo y > /root-file",
                        ],
                    },
                )
            ],
            queue=f"host.{host}",
        )
        result = outcome.get(timeout=60)
        container = docker_client.containers.get(result["container_id"])
        try:
            assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
            assert "/tmp" in container.attrs["HostConfig"]["Tmpfs"]
            assert result["stdout"] == "x\n"  # /tmp is writable
            assert "Read-only file system" in result["stderr"]  # the root is not
            assert result["status"] == "failed"
            # No engine network sandbox: the runtime's own namespace, the shared /etc/hosts.
            assert container.attrs["Config"].get("NetworkDisabled") is True
            assert result["stderr"].startswith("2\n")  # its localhost lines
        finally:
            container.remove(force=True)
    finally:
        client.close()
        worker.stop()


# -- builds: refused before anything exists, and counted in the host's memory ---------------------


@pytest.fixture
def own_worker(
    services: None, tmp_path: Path, docker_client: docker.DockerClient
) -> Iterator[Callable[[dict[str, str]], tuple[WorkerProcess, OrchestratorClient]]]:
    """Start a worker (and its client) of a host of its own, with extra settings."""
    from tests.integration.conftest import USED_HOSTS, make_client

    started: list[tuple[WorkerProcess, OrchestratorClient]] = []

    def start(env: dict[str, str]) -> tuple[WorkerProcess, OrchestratorClient]:
        host = f"it-build-{uuid.uuid4().hex[:6]}"
        USED_HOSTS.add(host)
        worker = WorkerProcess(host, tmp_path, env=env).start()
        started.append((worker, make_client(host)))
        return started[-1]

    yield start
    for worker, client in started:
        client.close()
        worker.stop()
        force_remove_managed(docker_client, worker.host_name)


def on_host(client: OrchestratorClient, task: str, body: dict[str, Any]) -> Any:
    """Send a request to the client's own host's queue (not the shared ones)."""
    return client.app.send_task(task, args=[body], queue=client.settings.host_queue)


def test_a_build_where_builds_are_off_creates_and_charges_nothing(
    own_worker: Any, docker_client: docker.DockerClient, session_id: str
) -> None:
    """A relic asking for a build would have had its session network made and its quota
    counted before the build was refused; now nothing happens before the refusal."""
    worker, client = own_worker({"ORCHESTRATOR_ALLOW_BUILDS": "false"})
    store = redis.Redis.from_url(REDIS_URL)
    build = {"dockerfile_inline": f"FROM {TEST_IMAGE}\nRUN touch /x\n", "tag": session_id}
    tool_body = changed(GOOD_TOOL, {"session_id": session_id, "image": None, "build": build})
    relic_body = {**relic(session_id, "r"), "image": None, "build": build}
    keys_before = set(store.keys(f"*{session_id}*"))
    for task, body in (
        ("orchestrator.tools.execute", tool_body),
        ("orchestrator.relics.start", relic_body),
    ):
        with pytest.raises(
            Forbidden, match="^build: building images is off.*ORCHESTRATOR_ALLOW_BUILDS"
        ):
            on_host(client, task, body).get(timeout=60)
    assert set(store.keys(f"*{session_id}*")) == keys_before  # no quota, record or session
    assert store.hlen(f"orch:quota:host:{worker.host_name}") == 0
    label = {"label": f"orchestrator.session={session_id}"}
    assert docker_client.networks.list(filters=label) == []
    assert gone(lambda: listed(docker_client, label)) == []
    assert (
        docker_client.images.list(filters={"label": f"orchestrator.requested-tag={session_id}"})
        == []
    )


def test_a_build_holds_its_memory_on_the_host_while_it_runs(
    own_worker: Any, docker_client: docker.DockerClient, session_id: str
) -> None:
    """With 600 MB for the host and 400 MB per build: while a build runs, a 256 MB run of
    another session is refused naming the host's quota; a build that would not fit beside
    its own run is refused naming both settings; once the build is over, the run fits."""
    worker, client = own_worker(
        {
            "ORCHESTRATOR_ALLOW_BUILDS": "true",
            "ORCHESTRATOR_HOST_MAX_MEMORY_MB": "600",
            "ORCHESTRATOR_BUILD_MEMORY_MB": "400",
        }
    )
    store = redis.Redis.from_url(REDIS_URL)
    host_key = f"orch:quota:host:{worker.host_name}"
    slow = {"dockerfile_inline": f"FROM {TEST_IMAGE}\nRUN sleep 6\n", "tag": session_id}
    small = {"memory_mb": 64, "timeout_seconds": 60}
    try:
        building = on_host(
            client,
            "orchestrator.tools.execute",
            changed(GOOD_TOOL, {"session_id": session_id, "image": None, "build": slow,
                                "command": ["echo", "built"], "resource_limits": small}),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not any(v.startswith(b"build|400|") for v in store.hvals(host_key)):
            assert time.monotonic() < deadline, "the build never showed in the host's quota"
            time.sleep(0.1)
        other = changed(GOOD_TOOL, {"session_id": f"{session_id}-b", "command": ["echo", "ok"],
                                    "resource_limits": {"memory_mb": 256}})  # fmt: skip
        with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_HOST_MAX_MEMORY_MB"):
            on_host(client, "orchestrator.tools.execute", other).get(timeout=60)
        assert building.get(timeout=120)["stdout"] == "built\n"
        assert not any(v.startswith(b"build|") for v in store.hvals(host_key))  # given back
        assert (
            on_host(client, "orchestrator.tools.execute", other).get(timeout=60)["stdout"] == "ok\n"
        )
        too_big = {"dockerfile_inline": f"FROM {TEST_IMAGE}\nRUN true\n", "tag": session_id}
        with pytest.raises(QuotaExceeded) as refused:
            on_host(
                client,
                "orchestrator.tools.execute",
                changed(GOOD_TOOL, {"session_id": session_id, "image": None, "build": too_big,
                                    "resource_limits": {"memory_mb": 256}}),
            ).get(timeout=60)  # fmt: skip
        message = str(refused.value)
        assert message.startswith("build: ") and "would commit 656 MB" in message
        assert "ORCHESTRATOR_BUILD_MEMORY_MB" in message
        assert "ORCHESTRATOR_HOST_MAX_MEMORY_MB" in message
    finally:
        client.cleanup_session(session_id)
        client.cleanup_session(f"{session_id}-b")
        remove_built_images(docker_client, session_id)


def test_orchestrator_up_gives_its_stack_a_key_that_clients_can_use_for_secrets(
    services: None, docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    """With no ORCHESTRATOR_SECRET_KEY, `orchestrator up` keeps one in its state directory
    (0600), gives it to the worker, and says how clients use it: a tool with
    secret_parameters then runs on that stack, the value reaching the container only."""
    import subprocess
    import sys

    from tests.integration.conftest import USED_HOSTS
    from tests.integration.harness import ROOT, settings_env

    host = f"it-up-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host)
    state = tmp_path / "state"
    env = {**os.environ, **settings_env(host), "ORCHESTRATOR_STATE_DIR": str(state)}
    env.pop(KEY_SETTING)
    cli = [sys.executable, "-m", "orchestrator.cli"]
    up = subprocess.run([*cli, "up", "--no-beat", "--no-flower"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        key_file = state / "secret-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert f"export ORCHESTRATOR_SECRET_KEY=$(cat {key_file})" in up.stdout
        key = key_file.read_text().strip()
        assert key not in up.stdout
        keyed = OrchestratorClient(Settings.from_env({**settings_env(host), KEY_SETTING: key}))
        secret = f"up-{uuid.uuid4().hex}"
        request = changed(GOOD_TOOL, {
            "session_id": f"up-{uuid.uuid4().hex[:8]}",
            "secret_parameters": {"TOKEN": secret},
            "command": ["sh", "-c", 'printf %s "$TOKEN" | md5sum'],
        })  # fmt: skip
        # Encrypted as the client does, sent to this stack's own queue (other workers of the
        # suite consume the shared ones, with the suite's key).
        sealed = seal_payload(request, keyring(key), allow_plaintext=False)
        assert secret not in json.dumps(sealed)
        result = on_host(keyed, "orchestrator.tools.execute", sealed).get(timeout=60)
        assert (result["status"], result["host"]) == ("succeeded", host), result["stderr"]
        assert result["stdout"].split()[0] == hashlib.md5(secret.encode()).hexdigest()
        keyed.close()
    finally:
        down = subprocess.run([*cli, "down"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        force_remove_managed(docker_client, host)
    assert down.returncode == 0, down.stderr


def test_copy_from_an_image_is_pulled_through_the_orchestrator_or_refused(
    own_worker: Any, docker_client: docker.DockerClient, session_id: str
) -> None:
    """`COPY --from=<image>` makes the engine fetch that image itself: the worker ensures it
    first, as a base image (tracked, so the janitor knows it); one it cannot work out before
    the build (a variable) is refused while builds have no network."""
    from orchestrator.state import images as tracking

    worker, client = own_worker({"ORCHESTRATOR_ALLOW_BUILDS": "true"})
    copying = f"FROM scratch\nCOPY --from={TEST_IMAGE} /bin /bin\n"
    request = changed(GOOD_TOOL, {"session_id": session_id, "image": None,
                                  "build": {"dockerfile_inline": copying, "tag": session_id},
                                  "command": ["echo", "copied"]})  # fmt: skip
    try:
        done = on_host(client, "orchestrator.tools.execute", request).get(timeout=120)
        assert done["stdout"] == "copied\n"
        store = redis.Redis.from_url(REDIS_URL)
        assert TEST_IMAGE in tracking.last_used(store, worker.host_name)
        variable = f"FROM scratch\nARG SRC={TEST_IMAGE}\nCOPY --from=${{SRC}} /bin /bin\n"
        request["build"] = {"dockerfile_inline": variable, "tag": session_id}
        with pytest.raises(Forbidden) as refused:
            on_host(client, "orchestrator.tools.execute", request).get(timeout=60)
        message = str(refused.value)
        assert message.startswith("build.dockerfile_inline: line 3: COPY --from=${SRC}")
        assert "ORCHESTRATOR_ALLOW_BUILD_NETWORK" in message
        assert len(docker_client.images.list(
            filters={"label": f"orchestrator.requested-tag={session_id}"})) == 1  # fmt: skip
    finally:
        client.cleanup_session(session_id)
        remove_built_images(docker_client, session_id)
