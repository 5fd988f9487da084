"""The hostile corpus: requests a language model (or anyone holding a Celery client) could
send, each refused with a clear error naming the field, on a real worker and engine.

Every case is sent twice: as a raw Celery message by task name (hand-built JSON, as a client
in any language sends it; some with a hostile task id, which names containers), and through
the client where the client has a call for it. Victims stand by: an unmanaged running
container whose name a task id could reach, an unmanaged volume with a planted secret, an
image tag a build could overwrite, a secret file outside the allowed roots. After each case
its victim is checked; after the whole corpus the same worker process is alive, still serves
a legitimate run, and nothing was created (no container, volume, network or image tag).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator import OrchestratorClient
from orchestrator.core.secrets import encrypt_value, keyring
from orchestrator.errors import (
    Forbidden,
    InvalidRequest,
    LimitExceeded,
    OrchestratorError,
)
from orchestrator.protocol import Task
from tests.integration.harness import TEST_IMAGE, TEST_SECRET_KEY, WorkerProcess, tool
from tests.integration.test_relics import relic
from tests.integration.test_security import changed

TOKEN = uuid.uuid4().hex[:8]
SESSION = f"hostile-corpus-{TOKEN}"
PLANTED = f"planted-{TOKEN}"
# Placeholders the victims fixture replaces in a case's arguments and task id.
CONTAINER, VOLUME, IMAGE, OUTSIDE = "@CONTAINER@", "@VOLUME@", "@IMAGE@", "@OUTSIDE@"
WALK = f"x{TOKEN}/../{CONTAINER}"
#: Task ids are result keys too: each case walking by its task id gets its own.
TASK_WALK = f"t{TOKEN}/../{CONTAINER}"
RELIC_WALK = f"r{TOKEN}/../{CONTAINER}"
HUGE = "x" * 300_000  # above ORCHESTRATOR_MAX_REQUEST_BYTES (256 KiB) by default
RING = keyring(TEST_SECRET_KEY)
assert RING is not None
MOVED_TOKEN = encrypt_value("OTHER_NAME", "value", RING)  # valid, made for another name

#: The attack classes of the containment issue; every one must hold cases.
CLASSES = (
    "volumes",
    "binds",
    "images",
    "ids",
    "secrets",
    "network",
    "ports",
    "sizes",
    "malformed",
)


@dataclass(frozen=True)
class Hostile:
    """One hostile request: what is sent, and the refusal it must get."""

    case: str
    kind: str
    task: str
    args: list[Any]
    #: named in the error message
    field: str
    error: type[OrchestratorError] = InvalidRequest
    kwargs: dict[str, Any] = field(default_factory=dict)
    task_id: str | None = None
    #: the victim checked after this case
    victim: str | None = None
    #: named by the client's own refusal, when it differs (it validates before sending)
    client_field: str | None = None
    #: the client has a call for it that reaches the worker
    via_client: bool = True


def tool_with(**changes: Any) -> dict[str, Any]:
    """A good tool request of the corpus' session, changed."""
    return changed(tool(SESSION, "echo should never run", tool_name="hostile"), changes)


def relic_with(**changes: Any) -> dict[str, Any]:
    """A good relic request of the corpus' session, changed."""
    return changed(relic(SESSION, "r"), changes)


def _request_case(
    task: str,
    body: Callable[..., dict[str, Any]],
    names: tuple[str, str, str],
    error: type[OrchestratorError],
    changes: dict[str, Any],
) -> Hostile:
    victim = changes.pop("victim", None)
    task_id = changes.pop("task_id", None)
    case, kind, field_ = names
    return Hostile(
        case, kind, task, [body(**changes)], field_, error, task_id=task_id, victim=victim
    )


def bad_tool(
    case: str,
    kind: str,
    field_: str,
    error: type[OrchestratorError] = InvalidRequest,
    **changes: Any,
) -> Hostile:
    """A tool request with ``changes``, refused with ``error`` naming ``field_``."""
    return _request_case(Task.TOOLS_EXECUTE, tool_with, (case, kind, field_), error, changes)


def bad_relic(
    case: str,
    kind: str,
    field_: str,
    error: type[OrchestratorError] = InvalidRequest,
    **changes: Any,
) -> Hostile:
    """A relic request with ``changes``, refused with ``error`` naming ``field_``."""
    return _request_case(Task.RELICS_START, relic_with, (case, kind, field_), error, changes)


def vol(source: str, target: str = "/x", **extra: Any) -> list[dict[str, Any]]:
    return [{"source": source, "target": target, **extra}]


def build(**spec: Any) -> dict[str, Any]:
    return {"image": None, "build": spec}


def inline(text: str, **extra: Any) -> dict[str, Any]:
    return build(dockerfile_inline=text, **extra)


CORPUS: list[Hostile] = [
    # -- named volumes ------------------------------------------------------------------------
    bad_tool("vol_name_slash", "volumes", "volumes.0", volumes=vol(f"{VOLUME}/x")),
    bad_tool("vol_name_walk", "volumes", "volumes.0", volumes=vol(f"../{VOLUME}")),
    bad_tool("vol_name_shell", "volumes", "volumes.0", volumes=vol("v;rm -rf /")),
    bad_tool("vol_target_relative", "volumes", "volumes.0.target", volumes=vol("v", "rel")),
    bad_tool("vol_target_dict", "volumes", "volumes.0.target", volumes=vol("v", {"path": "/x"})),
    bad_tool("vol_target_nul", "volumes", "volumes.0.target", volumes=vol("v", "/x\x00")),
    bad_tool("vol_not_a_list", "volumes", "volumes", volumes=f"{VOLUME}:/x"),
    bad_tool("vol_item_string", "volumes", "volumes.0", volumes=[f"{VOLUME}:/x"]),
    bad_tool("vol_unknown_field", "volumes", "volumes.0.driver", volumes=vol("v", driver="x")),
    bad_tool("vol_no_target", "volumes", "volumes.0.target", volumes=[{"source": "v"}]),
    bad_tool("vol_no_source", "volumes", "volumes.0.source", volumes=[{"target": "/x"}]),
    bad_tool(
        "vol_read_only_list", "volumes", "volumes.0.read_only", volumes=vol("v", read_only=[1])
    ),
    bad_relic("relic_vol_walk", "volumes", "volumes.0", volumes=vol(f"../{VOLUME}")),
    # -- bind mounts -------------------------------------------------------------------------
    bad_tool("bind_root", "binds", "volumes.0.source", volumes=vol("/")),
    bad_tool("bind_etc", "binds", "volumes.0.source", volumes=vol("/etc")),
    bad_tool("bind_socket", "binds", "volumes.0", volumes=vol("/var/run/docker.sock")),
    bad_tool("bind_run_socket", "binds", "volumes.0", volumes=vol("/run/docker.sock")),
    bad_tool("bind_proc", "binds", "volumes.0.source", volumes=vol("/proc")),
    bad_tool("bind_outside", "binds", "volumes.0.source", volumes=vol(OUTSIDE), victim="outside"),
    bad_tool(
        "bind_walk_out",
        "binds",
        "volumes.0.source",
        volumes=vol(f"{OUTSIDE}/../../../../etc"),
        victim="outside",
    ),
    bad_tool("bind_nul", "binds", "volumes.0", volumes=vol("/tmp/\x00x")),
    bad_relic("relic_bind_etc", "binds", "volumes.0.source", volumes=vol("/etc")),
    bad_relic(
        "relic_bind_outside", "binds", "volumes.0.source", volumes=vol(OUTSIDE), victim="outside"
    ),
    # -- images and builds -------------------------------------------------------------------
    bad_tool("image_upper", "images", "image", image="BusyBox"),
    bad_tool("image_space", "images", "image", image="busy box"),
    bad_tool("image_newline", "images", "image", image="busybox\n"),
    bad_tool("image_option", "images", "image", image="--help"),
    bad_tool("image_int", "images", "image", image=7),
    bad_tool("image_and_build", "images", "image or build", build={"dockerfile_inline": "FROM x"}),
    bad_tool("no_image", "images", "image or build", image=None),
    bad_tool("build_empty", "images", "build", **build()),
    bad_tool(
        "build_dockerfile_absolute",
        "images",
        "build.dockerfile",
        **build(context="/tmp", dockerfile="/etc/passwd"),
    ),
    bad_tool(
        "build_dockerfile_walk",
        "images",
        "build.dockerfile",
        **build(context="/tmp", dockerfile="../Dockerfile"),
    ),
    bad_tool(
        "build_dockerfile_dev",
        "images",
        "build.dockerfile",
        **build(context="/tmp", dockerfile="/dev/zero"),
    ),
    bad_tool(
        "build_dockerfile_proc",
        "images",
        "build.dockerfile",
        **build(context="/tmp", dockerfile="/proc/self/environ"),
    ),
    bad_tool("build_context_etc", "images", "build.context", Forbidden, **build(context="/etc")),
    bad_tool(
        "build_context_outside",
        "images",
        "build.context",
        Forbidden,
        **build(context=OUTSIDE),
        victim="outside",
    ),
    bad_tool(
        "build_add_metadata",
        "images",
        "build.dockerfile_inline",
        Forbidden,
        **inline(f"FROM {TEST_IMAGE}\nADD http://169.254.169.254/latest/meta-data/ /m\n"),
    ),
    bad_tool(
        "build_add_variable",
        "images",
        "build.dockerfile_inline",
        Forbidden,
        **inline(f"FROM {TEST_IMAGE}\nARG U\nADD $U /m\n"),
    ),
    bad_tool(
        "build_onbuild_add",
        "images",
        "build.dockerfile_inline",
        Forbidden,
        **inline(f"FROM {TEST_IMAGE}\nONBUILD ADD https://example.com/x /x\n"),
    ),
    bad_tool(
        "build_copy_from_variable",
        "images",
        "build.dockerfile_inline",
        Forbidden,
        **inline(f"FROM {TEST_IMAGE}\nARG SRC\nCOPY --from=${{SRC}} /x /x\n"),
    ),
    bad_tool(
        "build_tag_victim_with_bad_step",
        "images",
        "build.dockerfile_inline",
        Forbidden,
        victim="image",
        **inline(f"FROM {TEST_IMAGE}\nADD http://10.0.0.1/x /x\n", tag=IMAGE),
    ),
    bad_tool(
        "build_args_not_text",
        "images",
        "build.buildargs",
        **inline("FROM x\n", buildargs={"A": {"b": 1}}),
    ),
    bad_tool(
        "build_unknown_field",
        "images",
        "build.network_mode",
        **inline("FROM x\n", network_mode="host"),
    ),
    bad_relic("relic_image_option", "images", "image", image="-v"),
    # -- ids: fields and task ids ------------------------------------------------------------
    bad_tool("session_walk", "ids", "session_id", session_id="../../etc"),
    bad_tool("session_slash", "ids", "session_id", session_id="a/b"),
    bad_tool("session_shell", "ids", "session_id", session_id="a;rm -rf /"),
    bad_tool("session_subst", "ids", "session_id", session_id="$(id)"),
    bad_tool("session_space", "ids", "session_id", session_id="a b"),
    bad_tool("session_unicode", "ids", "session_id", session_id="sessi\u043en"),
    bad_tool("session_nul", "ids", "session_id", session_id="a\x00b"),
    bad_tool("session_long", "ids", "session_id", session_id="s" * 300),
    bad_tool("session_dash_first", "ids", "session_id", session_id="-rf"),
    bad_tool("tool_name_walk", "ids", "tool_name", tool_name="../x"),
    bad_tool("task_id_walk", "ids", "execution_id", task_id=TASK_WALK, victim="container"),
    bad_tool(
        "task_id_images", "ids", "execution_id", task_id=f"../../images/{IMAGE}", victim="image"
    ),
    bad_tool("task_id_space", "ids", "execution_id", task_id="a b"),
    bad_tool("task_id_long", "ids", "execution_id", task_id="e" * 300),
    bad_tool(
        "task_id_victims_name",
        "ids",
        "execution_id",
        Forbidden,
        task_id="@SUFFIX@",
        victim="container",
    ),
    bad_relic("relic_task_id_walk", "ids", "relic_id", task_id=RELIC_WALK, victim="container"),
    bad_relic("relic_name_walk", "ids", "relic_name", relic_name="../r"),
    bad_relic("relic_name_shell", "ids", "relic_name", relic_name="x;y"),
    Hostile("cancel_walk", "ids", Task.TOOLS_CANCEL, [WALK], "execution_id", victim="container"),
    Hostile("info_walk", "ids", Task.RELICS_INFO, [WALK], "relic_id", victim="container"),
    Hostile(
        "stop_walk",
        "ids",
        Task.RELICS_STOP,
        [f"../../containers/{CONTAINER}"],
        "relic_id",
        victim="container",
    ),
    Hostile("remove_walk", "ids", Task.RELICS_REMOVE, [WALK], "relic_id", victim="container"),
    Hostile(
        "exec_walk",
        "ids",
        Task.RELICS_EXEC,
        [{"relic_id": WALK, "command": ["id"]}],
        "relic_id",
        victim="container",
    ),
    Hostile(
        "put_files_walk", "ids", Task.RELICS_PUT_FILES, [WALK, []], "relic_id", victim="container"
    ),
    Hostile(
        "get_files_walk",
        "ids",
        Task.RELICS_GET_FILES,
        [WALK, ["/etc/passwd"]],
        "relic_id",
        victim="container",
    ),
    Hostile("stats_walk", "ids", Task.STATS_CONTAINER, [WALK], "container", victim="container"),
    Hostile("cleanup_walk", "ids", Task.CLEANUP_SESSION, ["../../"], "session_id"),
    Hostile("touch_walk", "ids", Task.SESSIONS_TOUCH, ["a/../b"], "session_id"),
    Hostile(
        "collected_walk",
        "ids",
        Task.TOOLS_COLLECTED_FILE,
        [WALK, "/etc/passwd"],
        "execution_id",
        via_client=False,  # the client reads the result from Redis: a key, never a name
    ),
    # -- secrets -----------------------------------------------------------------------------
    bad_tool(
        "secret_moved_token",
        "secrets",
        "secret_parameters.API_KEY",
        Forbidden,
        secret_parameters={"API_KEY": MOVED_TOKEN},
    ),
    bad_tool(
        "secret_garbage_token",
        "secrets",
        "secret_parameters.API_KEY",
        secret_parameters={"API_KEY": {"$encrypted": "garbage"}},
    ),
    bad_tool("secret_name_equals", "secrets", "secret_parameters", secret_parameters={"A=B": "x"}),
    bad_tool("secret_name_digit", "secrets", "secret_parameters", secret_parameters={"1A": "x"}),
    bad_tool("secret_not_a_dict", "secrets", "secret_parameters", secret_parameters=["A", "x"]),
    bad_tool(
        "secret_clashes_env",
        "secrets",
        "variables given twice: A",
        environment={"A": "x"},
        secret_parameters={"A": "y"},
    ),
    bad_relic(
        "relic_secret_moved_token",
        "secrets",
        "secret_parameters.API_KEY",
        Forbidden,
        secret_parameters={"API_KEY": MOVED_TOKEN},
    ),
    # -- network modes -----------------------------------------------------------------------
    bad_tool("network_host", "network", "network_mode", network_mode="host"),
    bad_tool(
        "network_container",
        "network",
        "network_mode",
        network_mode=f"container:{CONTAINER}",
        victim="container",
    ),
    bad_tool("network_bridge", "network", "network_mode", Forbidden, network_mode="bridge"),
    bad_tool("network_unknown", "network", "network_mode", network_mode="macvlan"),
    bad_tool("network_int", "network", "network_mode", network_mode=0),
    bad_relic(
        "relic_no_private_network",
        "network",
        "create_private_network",
        Forbidden,
        create_private_network=False,
    ),
    # -- published ports ---------------------------------------------------------------------
    bad_relic("port_zero", "ports", "port", port=0),
    bad_relic("port_high", "ports", "port", port=65536),
    bad_relic("ports_high", "ports", "ports", ports={"8000": 70000}),
    bad_relic("ports_privileged", "ports", "ports", Forbidden, ports={"8000": 80}),
    bad_relic("ports_out_of_range", "ports", "ports", Forbidden, ports={"8000": 5000}),
    bad_relic(
        "ports_too_many", "ports", "ports", ports={str(8000 + n): 20000 + n for n in range(8)}
    ),
    bad_relic("ports_key_text", "ports", "ports", ports={"http": 20001}),
    # -- quotas and sizes --------------------------------------------------------------------
    bad_tool(
        "memory_over_cap",
        "sizes",
        "resource_limits.memory_mb",
        resource_limits={"memory_mb": 10**7},
    ),
    bad_tool(
        "memory_huge_int",
        "sizes",
        "resource_limits.memory_mb",
        resource_limits={"memory_mb": 10**30},
    ),
    bad_tool(
        "memory_float_inf",
        "sizes",
        "resource_limits.memory_mb",
        resource_limits={"memory_mb": 1e309},
    ),
    bad_tool(
        "cpu_over_cap", "sizes", "resource_limits.cpu_limit", resource_limits={"cpu_limit": 512}
    ),
    bad_tool(
        "timeout_over_cap", "sizes", "timeout_seconds", resource_limits={"timeout_seconds": 10**7}
    ),
    bad_tool(
        "pids_over_cap",
        "sizes",
        "resource_limits.pids_limit",
        resource_limits={"pids_limit": 10**6},
    ),
    bad_tool("env_huge", "sizes", "environment", LimitExceeded, environment={"A": HUGE}),
    bad_tool("params_huge", "sizes", "parameters", LimitExceeded, parameters={"P": HUGE}),
    bad_tool("command_huge", "sizes", "command", command=["echo", HUGE]),  # 64 KiB per item
    bad_tool(
        "command_many", "sizes", "command", LimitExceeded, command=["echo"] + ["y" * 60_000] * 5
    ),
    bad_tool(
        "secret_huge", "sizes", "secret_parameters", LimitExceeded, secret_parameters={"S": HUGE}
    ),
    bad_tool(
        "env_many",
        "sizes",
        "environment",
        LimitExceeded,
        environment={f"V{n}": "x" * 64 for n in range(5000)},
    ),
    bad_relic(
        "relic_health_timeout_over_cap",
        "sizes",
        "health_timeout_seconds",
        LimitExceeded,
        health_timeout_seconds=10**6,
    ),
    bad_relic(
        "relic_memory_over_cap",
        "sizes",
        "resource_limits.memory_mb",
        resource_limits={"memory_mb": 10**7},
    ),
    # -- malformed messages ------------------------------------------------------------------
    Hostile("args_string", "malformed", Task.TOOLS_EXECUTE, ["run everything"], "request"),
    Hostile("args_list", "malformed", Task.TOOLS_EXECUTE, [[1, 2, 3]], "request"),
    Hostile("args_int", "malformed", Task.TOOLS_EXECUTE, [42], "request"),
    Hostile(
        "args_null", "malformed", Task.TOOLS_EXECUTE, [None], "tool_name", client_field="request"
    ),
    Hostile("relic_args_string", "malformed", Task.RELICS_START, ["x"], "request"),
    Hostile(
        "kwargs_unknown",
        "malformed",
        Task.TOOLS_EXECUTE,
        [],
        "evil",
        kwargs={**tool_with(), "evil": 1},
    ),
    bad_tool("unknown_top_field", "malformed", "privileged", privileged=True),
    bad_tool("unknown_cap_add", "malformed", "cap_add", cap_add=["SYS_ADMIN"]),
    bad_tool("unknown_devices", "malformed", "devices", devices=["/dev/sda"]),
    bad_tool("tool_name_missing", "malformed", "tool_name", tool_name=None),
    bad_tool("session_missing", "malformed", "session_id", session_id=None),
    bad_tool("tool_name_int", "malformed", "tool_name", tool_name=5),
    bad_tool("tool_name_list", "malformed", "tool_name", tool_name=["a"]),
    bad_tool("command_string_int", "malformed", "command", command=[1, 2]),
    bad_tool("command_dict", "malformed", "command", command={"sh": "-c"}),
    bad_tool("command_nul", "malformed", "command", command=["echo", "a\x00b"]),
    bad_tool("env_list", "malformed", "environment", environment=["A=B"]),
    bad_tool("env_value_dict", "malformed", "environment", environment={"A": {"b": 1}}),
    bad_tool("env_nul_value", "malformed", "environment", environment={"A": "x\x00y"}),
    bad_tool("params_list", "malformed", "parameters", parameters=["A"]),
    bad_tool("limits_string", "malformed", "resource_limits", resource_limits="lots"),
    bad_tool(
        "limits_unknown", "malformed", "resource_limits.swap_mb", resource_limits={"swap_mb": 5}
    ),
    bad_tool(
        "memory_bool", "malformed", "resource_limits.memory_mb", resource_limits={"memory_mb": True}
    ),
    bad_tool(
        "memory_float_nan",
        "malformed",
        "resource_limits.memory_mb",
        resource_limits={"memory_mb": float("nan")},
    ),
    bad_tool("cleanup_string", "malformed", "cleanup", cleanup="maybe"),
    bad_relic(
        "relic_health_no_slash",
        "malformed",
        "health_check_endpoint",
        health_check_endpoint="health",
    ),
    bad_relic("relic_unknown_field", "malformed", "privileged", privileged=True),
]


# -- the victims and what "untouched" means -------------------------------------------------------


def _replace(value: Any, marks: dict[str, str]) -> Any:
    if isinstance(value, str):
        for mark, real in marks.items():
            value = value.replace(mark, real)
        return value
    if isinstance(value, list):
        return [_replace(v, marks) for v in value]
    if isinstance(value, dict):
        return {_replace(k, marks): _replace(v, marks) for k, v in value.items()}
    return value


@dataclass
class Victims:
    """What an attacker would reach, and the state of the engine before the corpus."""

    docker: docker.DockerClient
    container: Any
    volume: str
    image: str
    outside: Path
    host: str
    worker_pid: int
    started_at: str = ""

    @property
    def marks(self) -> dict[str, str]:
        return {
            CONTAINER: self.container.name,
            "@SUFFIX@": self.container.name.removeprefix("orch-tool-"),
            VOLUME: self.volume,
            IMAGE: self.image,
            OUTSIDE: str(self.outside),
        }

    def message(self, hostile: Hostile) -> tuple[list[Any], dict[str, Any], str | None]:
        """A case's arguments, keyword arguments and task id with the victims' names in,
        made JSON as any Celery client would send them."""
        args, kwargs, task_id = _replace(
            [hostile.args, hostile.kwargs, hostile.task_id], self.marks
        )
        return json.loads(json.dumps(args)), json.loads(json.dumps(kwargs)), task_id

    def check(self, which: str | None) -> None:
        """Assert the victim ``which`` (all of them when None) is as it was."""
        checks: dict[str, Callable[[], None]] = {
            "container": self._container_untouched,
            "volume": self._volume_untouched,
            "image": self._image_untouched,
            "outside": self._outside_untouched,
        }
        for name, check in checks.items():
            if which in (None, name):
                check()

    def _container_untouched(self) -> None:
        self.container.reload()
        assert self.container.status == "running"
        assert self.container.attrs["State"]["StartedAt"] == self.started_at
        assert self.container.attrs["RestartCount"] == 0
        assert not self.container.labels

    def _volume_untouched(self) -> None:
        volume = self.docker.volumes.get(self.volume)
        assert not volume.attrs.get("Labels")
        out = self.docker.containers.run(
            TEST_IMAGE, ["cat", "/v/secret"], volumes={self.volume: {"bind": "/v"}}, remove=True
        )
        assert out.decode().strip() == PLANTED

    def _image_untouched(self) -> None:
        assert self.docker.images.get(self.image).id == self.docker.images.get(TEST_IMAGE).id

    def _outside_untouched(self) -> None:
        assert sorted(p.name for p in self.outside.iterdir()) == ["secret"]
        assert (self.outside / "secret").read_text() == PLANTED

    def created(self) -> dict[str, list[str]]:
        """What exists now that the corpus could have made: objects of this worker's host,
        of the corpus' session, and images built for its tools. The idle containers of the
        host's warm pool are left out: the worker makes and removes those by itself, from
        the demand of legitimate runs (here and in the rest of the suite)."""
        host = {"label": [f"orchestrator.host={self.host}"]}
        mine = [TOKEN, SESSION]
        volumes = [v.name for v in self.docker.volumes.list() if v.name != self.volume]
        return {
            "containers": sorted(
                c["Names"][0].lstrip("/")
                for c in self.docker.api.containers(all=True)  # no inspect: others come and go
                if c["Id"] != self.container.id
                and (c.get("Labels") or {}).get("orchestrator.kind") != "pool"
                and (
                    any(m in c["Names"][0] for m in mine)
                    or (c.get("Labels") or {}).get("orchestrator.host") == self.host
                )
            ),
            "volumes": sorted(
                {n for n in volumes if any(m in n for m in mine)}
                | {v.name for v in self.docker.volumes.list(filters=host)}
            ),
            "networks": sorted(
                n.name
                for n in self.docker.networks.list()
                if any(m in n.name for m in mine)
                or n.attrs.get("Labels", {}).get("orchestrator.host") == self.host
            ),
            "images": sorted(
                tag
                for image in self.docker.images.list()
                for tag in image.tags
                if tag.startswith(("orchestrator-build/hostile", "orchestrator-build/r:"))
                or (tag != self.image and TOKEN in tag)
                or image.labels.get("orchestrator.requested-tag") == self.image
            ),
        }


NOTHING: dict[str, list[str]] = {"containers": [], "volumes": [], "networks": [], "images": []}


@pytest.fixture(scope="module")
def victims(
    worker: WorkerProcess,
    docker_client: docker.DockerClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Victims]:
    outside = tmp_path_factory.mktemp("outside")  # beside the allowed roots, not under them
    (outside / "secret").write_text(PLANTED)
    image = f"orchestrator-test/victim:{TOKEN}"
    with ExitStack() as teardown:  # each victim is removed however the setup ends
        volume = docker_client.volumes.create(f"victim-{TOKEN}")
        teardown.callback(volume.remove, force=True)
        docker_client.containers.run(
            TEST_IMAGE,
            ["sh", "-c", f"echo {PLANTED} > /v/secret"],
            volumes={volume.name: {"bind": "/v"}},
            remove=True,
        )
        docker_client.images.get(TEST_IMAGE).tag(image)
        teardown.callback(docker_client.images.remove, image)
        container = docker_client.containers.run(
            TEST_IMAGE, ["sleep", "900"], name=f"orch-tool-victim-{TOKEN}", detach=True
        )
        teardown.callback(container.remove, force=True)
        container.reload()
        found = Victims(
            docker_client, container, volume.name, image, outside, worker.host_name, worker.pid
        )
        found.started_at = container.attrs["State"]["StartedAt"]
        assert found.created() == NOTHING, "the corpus' names are taken before it ran"
        yield found


# -- the corpus, sent raw and through the client ---------------------------------------------------

RAW_TEST = "test_a_raw_message_is_refused_naming_the_field"
CLIENT_TEST = "test_a_client_call_is_refused_naming_the_field"


def refused(hostile: Hostile, call: Callable[[], Any], field: str) -> OrchestratorError:
    """The error ``call`` raised, checked: the case's type, naming ``field``."""
    with pytest.raises(OrchestratorError) as caught:
        call()
    error = caught.value
    assert isinstance(error, hostile.error), (hostile.case, type(error), str(error))
    assert field in str(error), (hostile.case, str(error))
    return error


@pytest.mark.parametrize("hostile", CORPUS, ids=[c.case for c in CORPUS])
def test_a_raw_message_is_refused_naming_the_field(
    client: OrchestratorClient, victims: Victims, hostile: Hostile
) -> None:
    args, kwargs, task_id = victims.message(hostile)
    sent = client.app.send_task(hostile.task, args=args, kwargs=kwargs, task_id=task_id)
    refused(hostile, lambda: sent.get(timeout=60), hostile.field)
    victims.check(hostile.victim)


def client_call(client: OrchestratorClient, task: str, args: list[Any]) -> Callable[[], Any]:
    """The client's own call for a task and its arguments."""
    first: Any = args[0] if args else None
    calls: dict[str, Callable[[], Any]] = {
        Task.TOOLS_EXECUTE: lambda: client.execute_tool(first).result(timeout=60),
        Task.RELICS_START: lambda: client.start_relic(first, timeout=60),
        Task.TOOLS_CANCEL: lambda: client.cancel_tool(first, timeout=60),
        Task.RELICS_INFO: lambda: client.get_relic(first, timeout=60),
        Task.RELICS_STOP: lambda: client.stop_relic(first, timeout=60),
        Task.RELICS_REMOVE: lambda: client.remove_relic(first, timeout=60),
        Task.RELICS_EXEC: lambda: client.exec_in_relic(first["relic_id"], first["command"]),
        Task.RELICS_PUT_FILES: lambda: client.put_files(first, {"/x": "y"}, timeout=60),
        Task.RELICS_GET_FILES: lambda: client.get_files(first, args[1], timeout=60),
        Task.STATS_CONTAINER: lambda: client.container_stats(first, timeout=60),
        Task.CLEANUP_SESSION: lambda: client.cleanup_session(first, timeout=60),
        Task.SESSIONS_TOUCH: lambda: client.touch_session(first, timeout=60),
        Task.TOOLS_COLLECTED_FILE: lambda: client.get_collected_file(first, args[1]),
    }
    return calls[task]


#: The client sets no task id and sends no extra keyword arguments: those cases are raw only.
CLIENT_CORPUS = [c for c in CORPUS if c.task_id is None and not c.kwargs and c.via_client]


@pytest.mark.parametrize("hostile", CLIENT_CORPUS, ids=[c.case for c in CLIENT_CORPUS])
def test_a_client_call_is_refused_naming_the_field(
    client: OrchestratorClient, victims: Victims, hostile: Hostile
) -> None:
    args, _, _ = victims.message(hostile)
    refused(hostile, client_call(client, hostile.task, args), hostile.client_field or hostile.field)
    victims.check(hostile.victim)


def test_the_corpus_holds_at_least_eighty_requests_of_every_attack_class(
    request: pytest.FixtureRequest,
) -> None:
    """Counts the cases this session really runs (collected tests, one per case), not the
    length of a list, and that every attack class is among them."""
    ran: dict[str, set[str]] = {RAW_TEST: set(), CLIENT_TEST: set()}
    for item in request.session.items:
        if isinstance(item, pytest.Function) and item.originalname in ran:
            ran[item.originalname].add(item.callspec.params["hostile"].case)
    kinds = {c.kind for c in CORPUS if c.case in ran[RAW_TEST]}
    assert len(ran[RAW_TEST]) >= 80, sorted(ran[RAW_TEST])
    assert len(ran[CLIENT_TEST]) >= 60, sorted(ran[CLIENT_TEST])
    assert kinds == set(CLASSES), set(CLASSES) - kinds
    assert len({c.case for c in CORPUS}) == len(CORPUS), "case ids repeat"
    assert sum(c.task_id is not None for c in CORPUS) >= 5  # hostile task ids


def test_after_the_corpus_the_same_worker_serves_and_nothing_was_created(
    worker: WorkerProcess, client: OrchestratorClient, victims: Victims
) -> None:
    """Runs after the corpus (file order): the worker process that got every hostile message
    is the one that was there before, alive, and runs a legitimate tool; the corpus created
    nothing and every victim is as it was."""
    assert worker.proc is not None and worker.proc.poll() is None, worker.log()
    assert worker.pid == victims.worker_pid
    assert victims.created() == NOTHING
    victims.check(None)
    result = client.run_tool(tool(SESSION, "echo still serving"), timeout=60)
    assert (result.status, result.stdout, result.host) == (
        "succeeded",
        "still serving\n",
        worker.host_name,
    )
    client.cleanup_session(SESSION)
    assert victims.created() == NOTHING
