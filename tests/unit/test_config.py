"""Behaviour of :mod:`orchestrator.core.specs`: requests + Settings -> ContainerSpec, the one
description of every container the orchestrator creates (tool runs, relics, warm pools)."""

from __future__ import annotations

import itertools
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.agent import AGENT_ENTRYPOINT
from orchestrator.core.specs import (
    check_bind,
    check_limits,
    check_volumes,
    pool_spec,
    relic_container_name,
    relic_spec,
    request_bytes,
    tool_environment,
    tool_spec,
    volume_name,
)
from orchestrator.core.types import ContainerSpec, Mount
from orchestrator.engine.docker_engine import create_kwargs
from orchestrator.errors import Forbidden, InvalidRequest, LimitExceeded
from orchestrator.models import (
    PoolSpec,
    RelicStartRequest,
    ResourceLimits,
    ToolExecutionRequest,
    VolumeMount,
)
from orchestrator.settings import Settings

NOW = 1_700_000_000.0


def make_settings(**overrides: Any) -> Settings:
    return Settings(host_name="host-a", **overrides)


def make_request(**fields: Any) -> ToolExecutionRequest:
    data: dict[str, Any] = {"tool_name": "grep", "session_id": "sess-1", "image": "busybox"}
    data.update(fields)
    return ToolExecutionRequest.model_validate(data)


def build(request: ToolExecutionRequest, settings: Settings | None = None, **kw: Any):
    return tool_spec(
        request,
        execution_id=kw.pop("execution_id", "exec-42"),
        image=kw.pop("image", "busybox:latest"),
        settings=settings or make_settings(),
        now=kw.pop("now", NOW),
        **kw,
    )


def host_config(spec: ContainerSpec) -> dict[str, Any]:
    """What the real engine is sent for ``spec`` (its ``HostConfig``)."""
    return create_kwargs(spec)["config"]["HostConfig"]


# -- name, labels, limits, sandbox -------------------------------------------------------------


def test_container_is_named_after_the_execution_and_uses_the_resolved_image():
    spec = build(make_request(command=["echo", "hi"]), execution_id="abc123", image="img@x")

    assert spec.name == "orch-tool-abc123"
    assert spec.image == "img@x"
    assert spec.command == ("echo", "hi")
    assert spec.entrypoint is None  # the image's own entrypoint runs the command


def test_a_command_string_is_split_as_a_shell_would():
    spec = build(make_request(command="grep -r 'two words' /data"))

    assert spec.command == ("grep", "-r", "two words", "/data")


def test_without_a_command_the_image_default_runs():
    assert build(make_request()).command is None


def test_labels_mark_a_managed_tool_with_its_session_execution_tool_host_and_deadline():
    request = make_request(resource_limits={"timeout_seconds": 30})
    settings = make_settings(grace_seconds=15)

    spec = build(request, settings, execution_id="e-1", now=1000.9)

    assert {k: v for k, v in spec.labels.items() if v} == {
        "orchestrator.managed": "true",
        "orchestrator.kind": "tool",
        "orchestrator.session": "sess-1",
        "orchestrator.execution": "e-1",
        "orchestrator.tool": "grep",
        "orchestrator.deadline": "1045",  # int(1000.9 + 30 + 15)
        "orchestrator.host": "host-a",
    }


def test_an_image_cannot_mark_its_containers_kept_or_owned(engine):
    """Containers inherit their image's labels: every label the janitor reads is set."""
    engine.add_image("evil:1", labels={"orchestrator.keep": "true", "orchestrator.relic": "r"})
    spec = build(make_request(), execution_id="e-1", now=NOW, image="evil:1")

    created = engine.create_container(spec)

    assert created.labels["orchestrator.keep"] == ""
    assert created.labels["orchestrator.relic"] == ""
    assert created.labels["orchestrator.execution"] == "e-1"


def test_deadline_uses_the_default_timeout_and_grace():
    spec = build(make_request(), now=NOW)

    assert spec.labels["orchestrator.deadline"] == str(int(NOW) + 300 + 60)


def test_a_kept_container_is_labelled_keep_and_lives_until_its_result_expires():
    settings = make_settings(grace_seconds=15, result_ttl_seconds=1000)

    spec = build(make_request(cleanup=False, resource_limits={"timeout_seconds": 30}), settings)

    assert spec.labels["orchestrator.keep"] == "true"
    assert spec.labels["orchestrator.deadline"] == str(int(NOW) + 30 + 15 + 1000)


@pytest.mark.parametrize(
    ("memory_mb", "cpu_limit", "nano_cpus"),
    [
        (512, 1.0, 1_000_000_000),
        (64, 0.5, 500_000_000),
        (8192, 4.0, 4_000_000_000),
        (8, 0.25, 250_000_000),
    ],
)
def test_memory_equals_memswap_and_cpus_become_nano_cpus(memory_mb, cpu_limit, nano_cpus):
    request = make_request(resource_limits={"memory_mb": memory_mb, "cpu_limit": cpu_limit})

    spec = build(request)

    assert (spec.memory_mb, spec.cpu_limit) == (memory_mb, cpu_limit)
    sent = host_config(spec)
    assert sent["Memory"] == memory_mb * 1024 * 1024
    assert sent["MemorySwap"] == sent["Memory"]  # no swap
    assert sent["NanoCpus"] == nano_cpus
    assert isinstance(sent["NanoCpus"], int)


def test_pids_limit_defaults_to_the_server_setting():
    spec = build(make_request(), make_settings(default_pids_limit=99))

    assert spec.pids_limit == 99
    assert host_config(spec)["PidsLimit"] == 99


def test_requested_pids_limit_is_kept():
    spec = build(make_request(resource_limits={"pids_limit": 17}))

    assert spec.pids_limit == 17


def test_sandbox_drops_all_capabilities_forbids_privilege_gain_and_caps_logs():
    spec = build(make_request(), make_settings(container_log_max_size="5m"))

    assert spec.cap_drop == ("ALL",)
    assert spec.cap_add == ()
    assert spec.security_opt == ("no-new-privileges:true",)
    assert spec.log_max_size == "5m"
    assert not spec.read_only
    sent = host_config(spec)
    assert sent["CapDrop"] == ["ALL"]
    assert "CapAdd" not in sent
    assert sent["SecurityOpt"] == ["no-new-privileges:true"]
    assert sent["Privileged"] is False
    assert sent["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "5m", "max-file": "1"}}


def test_a_read_only_root_gets_a_small_tmp_tmpfs():
    spec = build(make_request(), make_settings(read_only_root=True, tmpfs_size_mb=16))

    assert spec.read_only is True
    assert spec.tmpfs == {"/tmp": "rw,nosuid,nodev,size=16m"}


@pytest.mark.parametrize(
    ("mode", "network", "expected"),
    [
        ("none", None, "none"),
        ("bridge", None, "bridge"),
        ("session", "session_sess-1", "session_sess-1"),
        ("none", "session_sess-1", "none"),  # a network given for another mode is ignored
    ],
)
def test_network_mode_maps_to_none_bridge_or_the_session_network(mode, network, expected):
    every_mode = make_settings(allowed_network_modes=["none", "bridge", "session"])
    spec = build(make_request(network_mode=mode), every_mode, network=network)

    assert spec.network == expected


@pytest.mark.parametrize(
    ("mode", "read_only", "disabled"),
    [
        ("none", False, True),  # the runtime makes its empty namespace: no engine sandbox
        ("none", True, True),  # a read-only root too: the shared /etc/hosts is a bind mount
        ("bridge", False, False),
        ("session", False, False),
    ],
)
def test_a_container_without_a_network_is_made_with_networking_disabled(mode, read_only, disabled):
    every_mode = make_settings(
        allowed_network_modes=["none", "bridge", "session"], read_only_root=read_only
    )
    spec = build(make_request(network_mode=mode), every_mode, network="orch-net-sess-1")

    config = create_kwargs(spec)["config"]

    assert config.get("NetworkDisabled", False) is disabled
    assert config["HostConfig"]["NetworkMode"] == spec.network  # "none" stays on record


def test_a_pool_container_is_made_with_networking_disabled():
    pool = PoolSpec(image="tool:1", memory_mb=96, cpu_limit=0.5, max_age_seconds=600)
    spec = pool_spec(pool, settings=make_settings(), now=NOW, suffix="abc")

    assert create_kwargs(spec)["config"]["NetworkDisabled"] is True
    assert create_kwargs(relic())["config"].get("NetworkDisabled") is None


def test_session_network_mode_without_a_network_is_rejected():
    with pytest.raises(InvalidRequest, match=r"^network_mode: 'session' needs the session network"):
        build(make_request(network_mode="session"))


def test_volumes_become_bind_and_named_volume_mounts(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    request = make_request(
        volumes=[
            {"source": str(data), "target": "/data", "read_only": True},
            {"source": "cache", "target": "/cache"},
        ]
    )
    names = {"cache": "orch-vol-6-sess-1-cache"}

    spec = build(request, make_settings(allowed_volume_roots=[str(tmp_path)]), volume_names=names)

    assert spec.mounts == (
        Mount(source=str(data), target="/data", read_only=True, kind="bind"),
        Mount(source="orch-vol-6-sess-1-cache", target="/cache", read_only=False, kind="volume"),
    )


def test_a_named_volume_never_reaches_the_engine_under_the_requests_own_name():
    request = make_request(volumes=[{"source": "redis-data", "target": "/r"}])

    with pytest.raises(Forbidden, match=r"^volumes\.0\.source: 'redis-data' has no session volume"):
        build(request)
    with pytest.raises(Forbidden, match=r"^volumes\.0\.source: "):
        build(request, volume_names={"other": "orch-vol-6-sess-1-other"})


def test_the_engine_gets_the_normalized_bind_source(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    request = make_request(volumes=[{"source": f"/{tmp_path}//a/./b/../b/", "target": "/x"}])

    spec = build(request, make_settings(allowed_volume_roots=[str(tmp_path)]))

    assert spec.mounts == (Mount(source=f"{tmp_path}/a/b", target="/x", kind="bind"),)


# -- environment -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain text", "plain text"),
        ("", ""),
        ('{"already":"json"}', '{"already":"json"}'),
        ({"k": 1}, '{"k":1}'),
        ({"a": [1, 2], "b": {"c": None}}, '{"a":[1,2],"b":{"c":null}}'),
        ([1, "x"], '[1,"x"]'),
        (3, "3"),
        (2.5, "2.5"),
        (True, "true"),
        (False, "false"),
        (None, "null"),
        ("héllo", "héllo"),
    ],
)
def test_parameter_strings_pass_as_is_and_other_values_are_compact_json(value, encoded):
    request = make_request(parameters={"P": value})

    assert tool_environment(request) == {"P": encoded}
    assert build(request).environment == {"P": encoded}


def test_environment_holds_parameters_then_secrets_then_plain_environment():
    request = make_request(
        parameters={"B_PARAM": 1, "A_PARAM": "x"},
        secret_parameters={"TOKEN": "s3cr3t", "PIN": 1234},
        environment={"LANG": "C", "HOME": "/tmp"},
    )

    env = build(request).environment

    assert env == {
        "B_PARAM": "1",
        "A_PARAM": "x",
        "TOKEN": "s3cr3t",
        "PIN": "1234",
        "LANG": "C",
        "HOME": "/tmp",
    }
    assert list(env) == ["B_PARAM", "A_PARAM", "TOKEN", "PIN", "LANG", "HOME"]


def test_json_encoding_never_puts_a_raw_nul_in_the_environment():
    request = make_request(parameters={"P": {"k": "a\x00b"}})

    assert tool_environment(request) == {"P": '{"k":"a\\u0000b"}'}


# -- relics ------------------------------------------------------------------------------------


def relic(settings: Settings | None = None, **fields: Any) -> ContainerSpec:
    data: dict[str, Any] = {"session_id": "sess-1", "relic_name": "db", "image": "postgres:16"}
    data.update(fields)
    network = data.pop("network", "orch-net-sess-1")
    return relic_spec(
        RelicStartRequest.model_validate(data),
        relic_id="r-1",
        image="postgres:16",
        settings=settings or make_settings(),
        expires_at=NOW + 3600.7,
        network=network,
        volume_names={"pgdata": "orch-sess-1-pgdata"},
    )


def test_a_relic_is_named_per_session_and_labelled_with_its_id_name_port_and_expiry():
    spec = relic(port=5432, environment={"PGUSER": "app"}, command=["postgres", "-F"])

    assert spec.name == "orch-relic-6-sess-1-db"
    assert (spec.image, spec.command, spec.environment) == (
        "postgres:16",
        ("postgres", "-F"),
        {"PGUSER": "app"},
    )
    assert {k: v for k, v in spec.labels.items() if v} == {
        "orchestrator.managed": "true",
        "orchestrator.kind": "relic",
        "orchestrator.session": "sess-1",
        "orchestrator.relic": "r-1",
        "orchestrator.relic_name": "db",
        "orchestrator.port": "5432",
        "orchestrator.deadline": str(int(NOW + 3600.7)),  # the session's expiry
        "orchestrator.host": "host-a",
    }


def test_a_relic_joins_its_session_network_under_its_name():
    spec = relic()

    assert spec.network == "orch-net-sess-1"
    assert spec.aliases == ("db",)


def test_a_relic_without_a_session_network_is_on_the_default_bridge_with_no_alias():
    spec = relic(network=None)

    assert spec.network == "bridge"
    assert spec.aliases == ()


def test_a_relic_has_relic_limits_the_sandbox_and_only_the_operators_capabilities():
    spec = relic(make_settings(relic_cap_add=["NET_BIND_SERVICE"], default_pids_limit=77))

    assert (spec.memory_mb, spec.cpu_limit, spec.pids_limit) == (1024, 2.0, 77)
    assert spec.cap_drop == ("ALL",)
    assert spec.cap_add == ("NET_BIND_SERVICE",)
    assert spec.security_opt == ("no-new-privileges:true",)


def test_a_relics_named_volumes_are_session_scoped_and_its_ports_published():
    spec = relic(volumes=[{"source": "pgdata", "target": "/var/lib/data"}], ports={5432: 25432})

    assert spec.mounts == (Mount(source="orch-sess-1-pgdata", target="/var/lib/data"),)
    assert spec.ports == {5432: 25432}
    assert spec.ports_host_ip == "127.0.0.1"  # loopback, never every interface


def test_a_relic_above_the_server_limits_is_rejected():
    with pytest.raises(LimitExceeded, match=r"^resource_limits\.memory_mb"):
        relic(make_settings(max_memory_mb=512))  # relics ask 1024 MB by default


# -- warm pool ---------------------------------------------------------------------------------


def test_a_pool_container_idles_without_a_network_in_the_sandbox_with_the_pools_limits():
    pool = PoolSpec(image="tool:1", memory_mb=96, cpu_limit=0.5, max_age_seconds=600)

    spec = pool_spec(pool, settings=make_settings(default_pids_limit=50), now=NOW, suffix="abc")

    assert spec.name == f"orch-pool-{pool.key}-abc"
    assert spec.image == "tool:1"
    assert spec.entrypoint == AGENT_ENTRYPOINT and spec.stdin_open
    assert spec.command == ()  # the image's cmd would be arguments of the idle script
    assert spec.network == "none"
    assert (spec.memory_mb, spec.cpu_limit, spec.pids_limit) == (96, 0.5, 50)
    assert spec.cap_drop == ("ALL",)
    assert spec.security_opt == ("no-new-privileges:true",)
    assert {k: v for k, v in spec.labels.items() if v} == {
        "orchestrator.managed": "true",
        "orchestrator.kind": "pool",
        "orchestrator.pool": pool.key,
        "orchestrator.deadline": str(int(NOW) + 600),
        "orchestrator.host": "host-a",
    }


# -- limits against server caps ---------------------------------------------------------------

CAPS = {
    "max_memory_mb": 1024,
    "max_cpu_limit": 2.0,
    "max_timeout_seconds": 600,
    "max_pids_limit": 100,
    "default_pids_limit": 64,
}


@pytest.mark.parametrize(
    ("field", "value", "maximum"),
    [
        ("memory_mb", 1025, 1024),
        ("cpu_limit", 2.01, 2.0),
        ("timeout_seconds", 601, 600),
        ("pids_limit", 101, 100),
    ],
)
def test_limit_above_server_maximum_is_rejected_naming_the_field(field, value, maximum):
    limits = ResourceLimits(**{field: value})

    with pytest.raises(LimitExceeded) as info:
        check_limits(limits, make_settings(**CAPS))

    setting = {"cpu_limit": "CPU_LIMIT"}.get(field, field.upper())
    assert str(info.value) == (
        f"resource_limits.{field}: {value} is above the server maximum {maximum} "
        f"(ORCHESTRATOR_MAX_{setting})"
    )
    assert isinstance(info.value, InvalidRequest)


def test_limit_above_server_maximum_is_rejected_by_the_container_spec_too():
    request = make_request(resource_limits={"memory_mb": 9000})

    with pytest.raises(LimitExceeded, match=r"^resource_limits\.memory_mb: 9000"):
        build(request, make_settings(max_memory_mb=8192))


def test_limits_exactly_at_the_maxima_are_accepted():
    limits = ResourceLimits(memory_mb=1024, cpu_limit=2.0, timeout_seconds=600, pids_limit=100)

    assert check_limits(limits, make_settings(**CAPS)) == limits


def test_check_limits_fills_in_the_default_pids_limit_without_mutating_the_request():
    limits = ResourceLimits()

    checked = check_limits(limits, make_settings(default_pids_limit=64))

    assert checked.pids_limit == 64
    assert limits.pids_limit is None


# -- bind mounts -------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path):
    """An allowed root with a file and a sibling directory outside it."""
    base = tmp_path.resolve()
    allowed = base / "allowed"
    outside = base / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "sub" / "file.txt").write_text("x")
    (outside / "secret.txt").write_text("x")
    return allowed, outside


def mounts(*sources: str) -> list[VolumeMount]:
    return [VolumeMount(source=s, target=f"/mnt/{i}") for i, s in enumerate(sources)]


def test_bind_mounts_are_refused_when_no_roots_are_allowed(roots):
    allowed, _ = roots

    with pytest.raises(InvalidRequest) as info:
        check_volumes(mounts(str(allowed)), make_settings())

    assert str(info.value).startswith("volumes.0.source: bind mounts are disabled")
    assert "ORCHESTRATOR_ALLOWED_VOLUME_ROOTS" in str(info.value)


@pytest.mark.parametrize("relative", ["", "sub", "sub/file.txt", "sub/../sub/file.txt", "sub/./"])
def test_bind_mount_under_an_allowed_root_is_accepted(roots, relative):
    allowed, _ = roots
    source = os.path.join(str(allowed), relative) if relative else str(allowed)
    settings = make_settings(allowed_volume_roots=[str(allowed)])

    assert check_volumes(mounts(source), settings) is None


def test_bind_mount_is_accepted_under_any_of_several_roots(roots, tmp_path):
    allowed, outside = roots
    settings = make_settings(allowed_volume_roots=[str(tmp_path / "nope"), str(outside)])

    assert check_volumes(mounts(str(outside / "secret.txt")), settings) is None


def test_bind_mount_outside_the_allowed_roots_is_refused(roots):
    allowed, outside = roots
    settings = make_settings(allowed_volume_roots=[str(allowed)])

    with pytest.raises(InvalidRequest, match=r"^volumes\.0\.source: .*outside the allowed roots"):
        check_volumes(mounts(str(outside / "secret.txt")), settings)


def test_bind_mount_escaping_the_root_with_dotdot_is_refused(roots):
    allowed, outside = roots
    settings = make_settings(allowed_volume_roots=[str(allowed)])
    sneaky = f"{allowed}/sub/../../outside/secret.txt"

    with pytest.raises(InvalidRequest) as info:
        check_volumes(mounts(sneaky), settings)

    assert f"resolves to '{outside / 'secret.txt'}'" in str(info.value)


def test_bind_mount_through_a_symlink_pointing_outside_is_refused(roots):
    allowed, outside = roots
    (allowed / "link").symlink_to(outside)
    settings = make_settings(allowed_volume_roots=[str(allowed)])

    with pytest.raises(InvalidRequest, match="outside the allowed roots"):
        check_volumes(mounts(str(allowed / "link" / "secret.txt")), settings)


def test_bind_mount_through_a_symlink_staying_inside_is_refused_too(roots):
    allowed, _ = roots
    (allowed / "inner-link").symlink_to(allowed / "sub")
    settings = make_settings(allowed_volume_roots=[str(allowed)])

    # It could be pointed elsewhere between the check and the mount.
    with pytest.raises(Forbidden, match=r"inner-link' is a symbolic link"):
        check_volumes(mounts(str(allowed / "inner-link" / "file.txt")), settings)


def test_allowed_root_that_is_a_symlink_is_resolved_before_comparing(roots, tmp_path):
    allowed, _ = roots
    alias = tmp_path / "alias"
    alias.symlink_to(allowed)
    settings = make_settings(allowed_volume_roots=[str(alias)])

    assert check_volumes(mounts(str(allowed / "sub")), settings) is None


def test_sibling_directory_sharing_the_root_prefix_is_refused(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data-evil").mkdir()
    settings = make_settings(allowed_volume_roots=[str(tmp_path / "data")])

    with pytest.raises(InvalidRequest, match="outside the allowed roots"):
        check_volumes(mounts(str(tmp_path / "data-evil")), settings)


def test_only_the_offending_mount_index_is_named(roots):
    allowed, outside = roots
    settings = make_settings(allowed_volume_roots=[str(allowed)])

    with pytest.raises(InvalidRequest, match=r"^volumes\.2\.source: "):
        check_volumes(mounts(str(allowed), "named", str(outside)), settings)


@pytest.mark.parametrize(
    "source",
    [
        "/var/run/docker.sock",
        "/run/docker.sock",
        "/var/run/../run/docker.sock",
        "//run/docker.sock",
    ],
)
def test_docker_socket_is_refused_even_when_its_directory_is_allowed(source):
    settings = make_settings(allowed_volume_roots=["/"])

    with pytest.raises(InvalidRequest, match="mounting the Docker socket is never allowed"):
        check_volumes(mounts(source), settings)


def test_symlink_to_the_docker_socket_is_refused(roots):
    allowed, _ = roots
    (allowed / "sock").symlink_to("/var/run/docker.sock")
    settings = make_settings(allowed_volume_roots=[str(allowed)])

    with pytest.raises(InvalidRequest, match="Docker socket"):
        check_volumes(mounts(str(allowed / "sock")), settings)


@pytest.mark.parametrize("roots_setting", [[], ["/nonexistent-root"]])
def test_named_volumes_are_allowed_whatever_the_roots(roots_setting):
    settings = make_settings(allowed_volume_roots=roots_setting)

    assert check_volumes(mounts("cache", "pip_cache-1"), settings) is None


# -- bind mount rules, one row each --------------------------------------------------------------


def _symlink(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


# (case, make the source from (allowed, outside), what the refusal says)
REFUSED_BINDS: list[tuple[str, Callable[[Path, Path], Path | str], str]] = [
    ("missing", lambda a, o: a / "nope", r"/nope' does not exist where the worker looks"),
    ("missing_parent", lambda a, o: a / "nope" / "deeper", r"/nope' does not exist"),
    ("under_a_file", lambda a, o: a / "sub" / "file.txt" / "x", r"file.txt/x' does not exist"),
    ("outside", lambda a, o: o, "outside the allowed roots"),
    ("parent_of_root", lambda a, o: f"{a}/..", "outside the allowed roots"),
    ("dotdot_out", lambda a, o: f"{a}/sub/../../outside", "outside the allowed roots"),
    ("link_outside", lambda a, o: _symlink(a / "l", o), "outside the allowed roots"),
    ("link_inside", lambda a, o: _symlink(a / "l", a / "sub"), r"/l' is a symbolic link"),
    (
        "link_in_the_middle",
        lambda a, o: _symlink(a / "l", a / "sub") / "file.txt",
        r"/l' is a symbolic link",
    ),
    ("dangling_link", lambda a, o: _symlink(a / "l", a / "later"), r"/l' is a symbolic link"),
    ("link_to_itself_loop", lambda a, o: _symlink(a / "l", a / "l"), r"/l' is a symbolic link"),
]


@pytest.mark.parametrize(
    ("case", "make", "refusal"), REFUSED_BINDS, ids=[c[0] for c in REFUSED_BINDS]
)
def test_a_bind_breaking_a_rule_is_refused_naming_field_rule_and_setting(
    roots, case, make, refusal
):
    allowed, outside = roots
    source = str(make(allowed, outside))
    settings = make_settings(allowed_volume_roots=[str(allowed)])

    with pytest.raises(Forbidden, match=refusal) as info:
        check_volumes(mounts(source), settings)

    assert str(info.value).startswith("volumes.0.source: ")
    assert "ORCHESTRATOR_ALLOWED_VOLUME_ROOTS" in str(info.value)
    assert not (allowed / "nope").exists()  # never created


def test_a_symlinked_allowed_root_must_be_given_by_its_real_path(roots, tmp_path):
    allowed, _ = roots
    alias = _symlink(tmp_path / "alias", allowed)
    settings = make_settings(allowed_volume_roots=[str(alias)])

    assert check_volumes(mounts(str(allowed / "sub")), settings) is None
    with pytest.raises(Forbidden, match=r"/alias' is a symbolic link"):
        check_volumes(mounts(str(alias / "sub")), settings)


@pytest.mark.parametrize("source", ["/", "/run", "/var/run", "/var", "/run/../var/run/"])
def test_a_directory_holding_the_docker_socket_is_refused(source):
    settings = make_settings(allowed_volume_roots=["/"])

    with pytest.raises(Forbidden, match="mounting the Docker socket is never allowed"):
        check_volumes(mounts(source), settings)


def test_any_socket_is_refused_not_only_the_docker_one():
    # A short directory: a unix socket path holds at most 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="sock-", dir="/tmp"))
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(base / "engine.sock"))
        settings = make_settings(allowed_volume_roots=[str(base)])
        link = _symlink(base / "innocent", base / "engine.sock")

        for source in (base / "engine.sock", link):
            with pytest.raises(Forbidden, match="nor any other socket"):
                check_volumes(mounts(str(source)), settings)
    finally:
        listener.close()
        for child in base.iterdir():
            child.unlink()
        base.rmdir()


def test_check_bind_returns_the_path_the_engine_will_get(roots):
    allowed, _ = roots

    assert check_bind("f", f"{allowed}/./sub//", [str(allowed)]) == f"{allowed}/sub"


# -- session-scoped names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("a", "b-data"), ("a-b", "data")),
        (("a-b-c", "d"), ("a", "b-c-d")),
        (("a", "1-b-c"), ("b-c", "c")),
        (("s1", "x"), ("s", "1-x")),
    ],
)
@pytest.mark.parametrize("name_of", [volume_name, relic_container_name])
def test_names_that_collided_before_are_distinct(name_of, first, second):
    assert name_of(*first) != name_of(*second)


@pytest.mark.parametrize("name_of", [volume_name, relic_container_name])
def test_session_scoped_names_never_collide(name_of):
    alphabet = ["a", "1", "-", "."]
    ids = [
        "".join(chars)
        for size in (1, 2, 3)
        for chars in itertools.product(alphabet, repeat=size)
        if chars[0].isalnum()
    ]
    pairs = list(itertools.product(ids, ids))

    assert len({name_of(session, name) for session, name in pairs}) == len(pairs)


def test_session_scoped_names_are_readable_and_docker_names():
    assert volume_name("sess-1", "pgdata") == "orch-vol-6-sess-1-pgdata"
    assert relic_container_name("sess-1", "db") == "orch-relic-6-sess-1-db"


# -- containment: network modes, published ports, request size, runtime ------------------------


def test_a_tool_asking_the_default_bridge_is_forbidden_naming_field_rule_and_setting():
    with pytest.raises(Forbidden) as refused:
        build(make_request(network_mode="bridge"))

    message = str(refused.value)
    assert message.startswith("network_mode: 'bridge' is not allowed (allowed: none, session)")
    assert "cloud metadata (169.254.169.254)" in message
    assert message.endswith("an operator allows it with ORCHESTRATOR_ALLOWED_NETWORK_MODES")


@pytest.mark.parametrize("mode", ["none", "session"])
def test_the_default_network_modes_stay_allowed(mode):
    spec = build(make_request(network_mode=mode), network="session_sess-1")

    assert spec.network in ("none", "session_sess-1")


def test_an_operator_may_narrow_the_network_modes_to_none_only():
    settings = make_settings(allowed_network_modes=["none"])

    with pytest.raises(
        Forbidden, match=r"^network_mode: 'session' is not allowed \(allowed: none\)"
    ):
        build(make_request(network_mode="session"), settings, network="session_sess-1")


def test_a_relic_without_its_private_network_is_forbidden_unless_bridge_is_allowed():
    with pytest.raises(Forbidden) as refused:
        relic(create_private_network=False, network=None)

    assert str(refused.value).startswith("create_private_network: false puts the relic on the")
    assert "ORCHESTRATOR_ALLOWED_NETWORK_MODES" in str(refused.value)
    allowed = make_settings(allowed_network_modes=["none", "session", "bridge"])
    assert relic(allowed, create_private_network=False, network=None).network == "bridge"


def test_published_ports_bind_the_operators_address_only():
    assert relic(ports={8000: 20000}).ports_host_ip == "127.0.0.1"
    assert relic().ports_host_ip == ""  # nothing published
    lan = make_settings(relic_ports_host_ip="10.0.0.5")
    assert relic(lan, ports={8000: 29999}).ports_host_ip == "10.0.0.5"
    sent = create_kwargs(relic(ports={8000: 20000}))["config"]["HostConfig"]["PortBindings"]
    assert sent == {"8000/tcp": [{"HostIp": "127.0.0.1", "HostPort": "20000"}]}


@pytest.mark.parametrize(
    ("ports", "error", "message"),
    [
        ({8000: 80}, Forbidden, r"^ports\.8000: host port 80 is privileged \(below 1024\)"),
        ({8000: 1023}, Forbidden, r"^ports\.8000: host port 1023 is privileged"),
        ({8000: 30000}, Forbidden, r"^ports\.8000: host port 30000 is outside the allowed range "
                                   r"20000-29999; .*ORCHESTRATOR_RELIC_HOST_PORT_RANGE"),
        ({8000: 19999}, Forbidden, r"outside the allowed range"),
        ({p: 20000 + p for p in range(1, 6)}, LimitExceeded,
         r"^ports: 5 published ports, above the server maximum 4 per relic "
         r"\(ORCHESTRATOR_RELIC_MAX_PORTS\)"),
    ],
)  # fmt: skip
def test_published_ports_outside_the_policy_are_refused(ports, error, message):
    with pytest.raises(error, match=message):
        relic(ports=ports)


def test_the_port_range_setting_never_reaches_below_1024():
    with pytest.raises(InvalidRequest, match="ORCHESTRATOR_RELIC_HOST_PORT_RANGE"):
        Settings.from_env({"ORCHESTRATOR_RELIC_HOST_PORT_RANGE": "80-9000"})
    wide = Settings.from_env({"ORCHESTRATOR_RELIC_HOST_PORT_RANGE": "1024-65535"}, host_name="h")
    assert relic(wide, ports={8000: 1024}).ports == {8000: 1024}


def test_unknown_network_modes_in_the_setting_are_refused():
    with pytest.raises(InvalidRequest, match="ORCHESTRATOR_ALLOWED_NETWORK_MODES"):
        Settings.from_env({"ORCHESTRATOR_ALLOWED_NETWORK_MODES": "none,host"})


def test_a_ten_megabyte_environment_value_is_refused_naming_the_fields_and_setting():
    huge = "x" * (10 * 1024 * 1024)

    with pytest.raises(LimitExceeded) as refused:
        build(make_request(environment={"BIG": huge}))

    assert str(refused.value) == (
        "environment + parameters + secret_parameters + command: 10485765 bytes in all, above "
        "the server maximum 262144 (ORCHESTRATOR_MAX_REQUEST_BYTES)"
    )
    with pytest.raises(LimitExceeded, match=r"^environment .*command: 10485765 bytes"):
        relic(environment={"BIG": huge})


def test_the_request_size_adds_environment_parameters_secrets_and_command():
    request = make_request(
        parameters={"A": "x" * 2000, "N": [1, 2]},  # N=[1,2] as the container sees it
        secret_parameters={"S": "xy"},
        environment={"E": ""},
        command=["sh", "-c", "echo"],
    )

    size = (1 + 2000 + 2) + (1 + 5 + 2) + (1 + 2 + 2) + (1 + 0 + 2) + (3 + 3 + 5)
    assert request_bytes(request) == size
    build(request, make_settings(max_request_bytes=size))  # exactly at the maximum: accepted
    with pytest.raises(LimitExceeded, match=f"^environment .*: {size} bytes in all"):
        build(request, make_settings(max_request_bytes=size - 1))


def test_the_operators_runtime_reaches_every_container():
    gvisor = make_settings(container_runtime="runsc")

    assert build(make_request(), gvisor).runtime == "runsc"
    assert relic(gvisor).runtime == "runsc"
    assert pool_spec(PoolSpec(image="tool:1"), settings=gvisor, now=NOW, suffix="a").runtime == (
        "runsc"
    )
    assert build(make_request()).runtime is None  # the engine's default runtime
    assert host_config(build(make_request(), gvisor))["Runtime"] == "runsc"
