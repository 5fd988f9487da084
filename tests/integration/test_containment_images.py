"""Containment of image builds, attacked as an attacker would (every field of ``build``
chosen by a language model) and judged on the victim: the id of the image whose tag the
build asked for, the host service a ``RUN`` step or an ``ADD <url>`` would reach, the
secret a symlinked Dockerfile would read, the build container that must not outlive its
time limit, the images the janitor must never remove."""

from __future__ import annotations

import io
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator import OrchestratorClient
from orchestrator.errors import Forbidden, InvalidRequest
from orchestrator.settings import Settings
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    TEST_IMAGE,
    Listener,
    WorkerProcess,
    force_remove_managed,
    gateway_listener,
    require,
    settings_env,
)

EXECUTE = "orchestrator.tools.execute"
JANITOR_HOST = "orchestrator.janitor.host"
#: A build past this is stopped (the worker's ORCHESTRATOR_BUILD_TIMEOUT_SECONDS).
BUILD_TIMEOUT = 8
#: The processes all build steps of the build worker may have at once (its cgroup parent).
BUILD_PIDS = 64


# -- workers: one where builds are off (the default), one where the operator allowed them ---


def start_worker(
    tmp_path_factory: pytest.TempPathFactory, prefix: str, env: dict[str, str]
) -> WorkerProcess:
    """A worker fed only through its own host queue (no other test's run lands on it)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    logs = tmp_path_factory.mktemp(f"logs-{prefix}")
    return WorkerProcess(name, logs, env=env, args=("-Q", f"host.{name}")).start()


@pytest.fixture(scope="module")
def build_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("build-root")


@pytest.fixture(scope="module")
def default_worker(
    services: None, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[WorkerProcess]:
    """Shipped settings: builds are off."""
    process = start_worker(tmp_path_factory, "it-nobuild", {})
    yield process
    process.stop()
    force_remove_managed(docker_client, process.host_name)


@pytest.fixture(scope="module")
def pids_cgroup(docker_client: docker.DockerClient) -> Iterator[Path | None]:
    """A cgroup whose ``pids.max`` bounds the processes of every build step together, as
    an operator makes one for ``ORCHESTRATOR_BUILD_CGROUP_PARENT`` (the engine's cgroupfs
    driver, cgroup v1 or v2); None where this host cannot make one."""
    name = f"orch-it-builds-{uuid.uuid4().hex[:6]}"
    v1 = Path("/sys/fs/cgroup/pids")
    v2 = Path("/sys/fs/cgroup")
    if v1.is_dir():
        base = v1
    elif "pids" in _read(v2 / "cgroup.subtree_control"):
        base = v2
    else:
        base = None
    made = None
    if base is not None and docker_client.info().get("CgroupDriver") == "cgroupfs":
        try:
            (base / name).mkdir()
            (base / name / "pids.max").write_text(str(BUILD_PIDS))
            made = base / name
        except OSError:
            made = None
    yield made
    # The engine made the same directory in the other v1 hierarchies: remove them all.
    for directory in Path("/sys/fs/cgroup").glob(f"*/{name}") if made else ():
        directory.rmdir()
    if made is not None and made.exists():
        made.rmdir()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def build_worker(
    services: None,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: docker.DockerClient,
    build_root: Path,
    pids_cgroup: Path | None,
) -> Iterator[WorkerProcess]:
    """Builds allowed, short build time limit, steps in a pids-limited cgroup; no image
    disk budget and no grace, so a janitor pass on this host reaps every unused image it
    brought."""
    env = {
        "ORCHESTRATOR_ALLOW_BUILDS": "true",
        "ORCHESTRATOR_ALLOWED_BUILD_ROOTS": str(build_root),
        "ORCHESTRATOR_BUILD_TIMEOUT_SECONDS": str(BUILD_TIMEOUT),
        "ORCHESTRATOR_IMAGE_DISK_BUDGET_MB": "0",
        "ORCHESTRATOR_IMAGE_GRACE_SECONDS": "0",
    }
    if pids_cgroup is not None:
        env["ORCHESTRATOR_BUILD_CGROUP_PARENT"] = "/" + pids_cgroup.name
    process = start_worker(tmp_path_factory, "it-build", env)
    yield process
    process.stop()
    force_remove_managed(docker_client, process.host_name)


@pytest.fixture(scope="module")
def client(build_worker: WorkerProcess) -> Iterator[OrchestratorClient]:
    made = OrchestratorClient(Settings.from_env(settings_env(build_worker.host_name)))
    yield made
    made.close()


def run_on(client: OrchestratorClient, worker: WorkerProcess, request: dict[str, Any]) -> Any:
    """Send a raw request (past any client-side check) to ``worker``; its result."""
    sent = client.app.send_task(EXECUTE, args=[request], queue=f"host.{worker.host_name}")
    return sent.get(timeout=120)


def build_request(marker: str, dockerfile: str, command: str, **build: Any) -> dict[str, Any]:
    """A tool run that builds ``dockerfile`` (labelled with ``marker``) and runs ``command``."""
    text = f"{dockerfile.rstrip()}\nLABEL it.marker={marker}\n"
    return {
        "tool_name": "attack",
        "session_id": f"ci-{uuid.uuid4().hex[:10]}",
        "build": {"dockerfile_inline": text, **build},
        "command": ["sh", "-c", command],
    }


@pytest.fixture
def marker(docker_client: docker.DockerClient) -> Iterator[str]:
    """A unique label value of this test's builds; every image carrying it goes afterwards."""
    value = uuid.uuid4().hex[:12]
    yield value
    for image in docker_client.images.list(filters={"label": f"it.marker={value}"}):
        docker_client.images.remove(image.id, force=True)


def marked(docker_client: docker.DockerClient, marker: str) -> list[Any]:
    return docker_client.images.list(filters={"label": f"it.marker={marker}"})


@pytest.fixture
def victim(docker_client: docker.DockerClient) -> Iterator[str]:
    """An operator's image: the test image under a tag of its own."""
    tag = f"victim/app:{uuid.uuid4().hex[:8]}"
    docker_client.images.get(TEST_IMAGE).tag(tag)
    yield tag
    docker_client.images.remove(tag)


# -- (a) builds are off unless the operator allows them ----------------------------------------


def test_a_build_is_refused_where_builds_are_off_and_nothing_is_built(
    client: OrchestratorClient,
    default_worker: WorkerProcess,
    docker_client: docker.DockerClient,
    marker: str,
    victim: str,
) -> None:
    before = docker_client.images.get(victim).id
    request = build_request(marker, f"FROM {TEST_IMAGE}\nRUN touch /pwned", "true", tag=victim)

    with pytest.raises(Forbidden) as refused:
        run_on(client, default_worker, request)

    message = str(refused.value)
    assert message.startswith("build: building images is off")
    assert "ORCHESTRATOR_ALLOW_BUILDS=true" in message
    assert marked(docker_client, marker) == []  # nothing was built
    assert docker_client.images.get(victim).id == before


# -- (b) a build never moves a tag outside the orchestrator's namespace -----------------------


def test_a_build_tagged_as_an_existing_image_leaves_that_image_untouched(
    client: OrchestratorClient,
    build_worker: WorkerProcess,
    docker_client: docker.DockerClient,
    marker: str,
    victim: str,
) -> None:
    before = docker_client.images.get(victim).id
    dockerfile = f"FROM {TEST_IMAGE}\nRUN echo pwned > /pwned"
    request = build_request(marker, dockerfile, "cat /pwned", tag=victim)

    result = run_on(client, build_worker, request)

    assert result["status"] == "succeeded", result  # the attacker's own run got its image
    assert result["stdout"] == "pwned\n"
    assert docker_client.images.get(victim).id == before  # the victim's tag never moved
    clean = docker_client.containers.run(
        victim, ["sh", "-c", "cat /pwned 2>/dev/null || echo clean"], remove=True
    )
    assert clean == b"clean\n"  # a later run of the victim runs the victim's layers
    [built] = marked(docker_client, marker)
    assert built.tags and all(t.startswith("orchestrator-build/attack:") for t in built.tags)
    labels = built.labels
    assert labels["orchestrator.managed"] == "true"
    assert labels["orchestrator.kind"] == "image"
    assert labels["orchestrator.host"] == build_worker.host_name
    assert int(labels["orchestrator.built-at"]) <= time.time()
    assert labels["orchestrator.requested-tag"] == victim


# -- (c) the tag is keyed by the whole input, build arguments included ------------------------


def test_builds_with_different_build_args_get_different_images(
    client: OrchestratorClient,
    build_worker: WorkerProcess,
    docker_client: docker.DockerClient,
    marker: str,
) -> None:
    dockerfile = f"FROM {TEST_IMAGE}\nARG V\nRUN echo $V > /v"
    outputs = []
    for value in ("one", "two"):
        request = build_request(marker, dockerfile, "cat /v", buildargs={"V": value})
        result = run_on(client, build_worker, request)
        assert result["status"] == "succeeded", result
        outputs.append(result["stdout"])

    assert outputs == ["one\n", "two\n"]  # neither run got the other's image
    images = marked(docker_client, marker)
    tags = {tag for image in images for tag in image.tags}
    assert len(images) == 2 and len(tags) == 2


# -- (d) the Dockerfile must be a regular file inside the context ------------------------------


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "/dev/zero", "/proc/self/environ"])
def test_a_dockerfile_path_outside_the_context_is_refused(
    client: OrchestratorClient, build_worker: WorkerProcess, build_root: Path, path: str
) -> None:
    context = build_root / f"ctx-{uuid.uuid4().hex[:6]}"
    context.mkdir()
    (context / "Dockerfile").write_text(f"FROM {TEST_IMAGE}\n")
    request = {
        "tool_name": "attack",
        "session_id": f"ci-{uuid.uuid4().hex[:10]}",
        "build": {"context": str(context), "dockerfile": path},
        "command": ["true"],
    }

    with pytest.raises(InvalidRequest) as refused:
        run_on(client, build_worker, request)

    assert "build.dockerfile: " in str(refused.value)


def test_a_dockerfile_symlinked_out_of_the_context_is_never_read(
    client: OrchestratorClient,
    build_worker: WorkerProcess,
    build_root: Path,
    docker_client: docker.DockerClient,
    tmp_path: Path,
    marker: str,
) -> None:
    # The victim: a file outside the context whose content a build would bake into an
    # image label, were the symlink followed.
    secret = tmp_path / "secret"
    secret.write_text(f"FROM {TEST_IMAGE}\nLABEL it.marker={marker}\n")
    context = build_root / f"ctx-{uuid.uuid4().hex[:6]}"
    context.mkdir()
    (context / "Dockerfile").symlink_to(secret)
    request = {
        "tool_name": "attack",
        "session_id": f"ci-{uuid.uuid4().hex[:10]}",
        "build": {"context": str(context)},
        "command": ["true"],
    }

    with pytest.raises(Forbidden) as refused:
        run_on(client, build_worker, request)

    assert str(refused.value).startswith("build.dockerfile: 'Dockerfile' resolves through")
    assert str(secret) not in str(refused.value)
    assert marked(docker_client, marker) == []


# -- (e) a build has no network: RUN steps and ADD <url> reach nothing ------------------------


@pytest.fixture(scope="module")
def gateway(docker_client: docker.DockerClient) -> Iterator[Listener]:
    """A host service on the default bridge's gateway address."""
    with gateway_listener(docker_client) as listener:
        yield listener


def test_a_run_step_reaches_no_host_service(
    client: OrchestratorClient,
    build_worker: WorkerProcess,
    docker_client: docker.DockerClient,
    gateway: Listener,
    marker: str,
) -> None:
    # The control: from the default bridge this line does reach the host service.
    line = f"echo {{}} | nc -w 3 {gateway.address} {gateway.port}"
    docker_client.containers.run(
        TEST_IMAGE, ["sh", "-c", line.format("control-" + marker)], network="bridge", remove=True
    )
    assert gateway.got(f"control-{marker}".encode()), "the control never reached the service"

    dockerfile = f"FROM {TEST_IMAGE}\nRUN {line.format('attack-' + marker)}; echo tried"
    result = run_on(client, build_worker, build_request(marker, dockerfile, "true"))

    assert result["status"] == "succeeded", result
    assert not gateway.got(f"attack-{marker}".encode())


def test_an_add_of_a_url_is_refused_before_the_engine_fetches_it(
    client: OrchestratorClient,
    build_worker: WorkerProcess,
    docker_client: docker.DockerClient,
    gateway: Listener,
    marker: str,
) -> None:
    dockerfile = f"FROM {TEST_IMAGE}\nADD http://{gateway.address}:{gateway.port}/{{}} /x\n"
    # The control: given to the engine directly, the engine itself fetches the URL, from
    # the host's network, although the build's RUN steps have no network.
    context = tar_of(dockerfile.format("control-" + marker))
    with pytest.raises((docker.errors.BuildError, docker.errors.APIError)):
        docker_client.images.build(
            fileobj=context, custom_context=True, network_mode="none", rm=True, forcerm=True
        )
    assert gateway.got(f"GET /control-{marker}".encode()), "the engine never fetched the URL"

    attack = build_request(marker, dockerfile.format("attack-" + marker), "true")
    with pytest.raises(Forbidden) as refused:
        run_on(client, build_worker, attack)

    message = str(refused.value)
    assert message.startswith("build.dockerfile_inline: line 2: the ADD source")
    assert "ORCHESTRATOR_ALLOW_BUILD_NETWORK" in message
    assert not gateway.got(f"attack-{marker}".encode())
    assert marked(docker_client, marker) == []


def tar_of(dockerfile: str) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    buffer.seek(0)
    return buffer


# -- (f) a build past its time limit is stopped -------------------------------------------------


def test_a_build_past_its_time_limit_is_stopped_with_a_clear_error(
    client: OrchestratorClient,
    build_worker: WorkerProcess,
    docker_client: docker.DockerClient,
    marker: str,
) -> None:
    dockerfile = f"FROM {TEST_IMAGE}\nRUN sleep 120; echo {marker}"
    started = time.monotonic()

    result = run_on(client, build_worker, build_request(marker, dockerfile, "true"))

    assert time.monotonic() - started < BUILD_TIMEOUT + 20
    assert result["status"] == "error", result
    assert "time limit" in result["error"]
    assert "ORCHESTRATOR_BUILD_TIMEOUT_SECONDS" in result["error"]
    assert marked(docker_client, marker) == []
    # The victim: the host's CPU and disk. The step's container is gone, not left running.
    deadline = time.monotonic() + 15
    while step_containers(docker_client, marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert step_containers(docker_client, marker) == []


def test_build_steps_share_the_pids_limit_of_their_cgroup_parent(
    client: OrchestratorClient,
    build_worker: WorkerProcess,
    pids_cgroup: Path | None,
    marker: str,
) -> None:
    require(
        pids_cgroup is not None,
        "a writable cgroup pids controller (v1 or v2) and Docker's cgroupfs driver",
    )
    assert pids_cgroup is not None
    # A fork bomb's opening: far more processes than the operator's cgroup allows.
    fork = f"FROM {TEST_IMAGE}\nRUN for i in $(seq 200); do sleep 5 & done; wait; echo {marker}"

    result = run_on(client, build_worker, build_request(marker, fork, "true"))

    assert result["status"] == "error", result
    assert "can't fork" in result["error"]
    peak = pids_cgroup / "pids.peak"  # the victim: the host's process table
    if peak.exists():
        assert int(peak.read_text()) <= BUILD_PIDS


def step_containers(docker_client: docker.DockerClient, marker: str) -> list[str]:
    """Containers whose command holds ``marker`` (a build's RUN step)."""
    found = []
    for container in docker_client.api.containers(all=True):
        if marker in str(container.get("Command", "")):
            found.append(container["Id"])
    return found


# -- (g) the janitor keeps the host within its image budget, and only with its own images ----


def test_the_janitor_reaps_built_images_over_budget_and_never_the_operators(
    client: OrchestratorClient,
    build_worker: WorkerProcess,
    docker_client: docker.DockerClient,
    marker: str,
    victim: str,
) -> None:
    test_image = docker_client.images.get(TEST_IMAGE).id
    victim_id = docker_client.images.get(victim).id
    # An operator image that looks managed (our labels, another host): not ours either.
    lookalike = f"victim/lookalike:{marker}"
    docker_client.images.build(
        fileobj=tar_of(f"FROM {TEST_IMAGE}\nLABEL orchestrator.managed=true it.marker={marker}\n"),
        custom_context=True,
        tag=lookalike,
        network_mode="none",
        rm=True,
    )
    made = []
    for name in ("unused", "in-use"):
        request = build_request(marker, f"FROM {TEST_IMAGE}\nRUN echo {name} > /n", "true")
        request["tool_name"] = f"reap-{name}"
        assert run_on(client, build_worker, request)["status"] == "succeeded"
        [tag] = [t for i in marked(docker_client, marker) for t in i.tags if f"reap-{name}" in t]
        made.append(tag)
    unused, in_use = made
    holder = docker_client.containers.create(in_use, ["true"])  # a stopped container uses it
    try:
        sent = client.app.send_task(JANITOR_HOST, queue=f"host.{build_worker.host_name}")
        report = sent.get(timeout=120)

        removed = [entry["image"] for entry in report["images_removed"]]
        assert unused in removed and in_use not in removed
        assert {t for i in marked(docker_client, marker) for t in i.tags} == {in_use, lookalike}
        assert docker_client.images.get(TEST_IMAGE).id == test_image
        assert docker_client.images.get(victim).id == victim_id
    finally:
        holder.remove(force=True)
