"""Hostile input, sandbox defaults and secrets, checked on the real engine and worker."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

from orchestrator import OrchestratorClient
from orchestrator.errors import InvalidRequest, OrchestratorError
from tests.integration.harness import REDIS_URL, TEST_IMAGE
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


def managed_count(engine: docker.DockerClient) -> int:
    return len(engine.containers.list(all=True, filters={"label": "orchestrator.managed=true"}))


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
    before = managed_count(docker_client)
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
    assert managed_count(docker_client) == before  # nothing started
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
                            "echo x > /tmp/ok && cat /tmp/ok; echo y > /root-file",
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
        finally:
            container.remove(force=True)
    finally:
        client.close()
        worker.stop()
