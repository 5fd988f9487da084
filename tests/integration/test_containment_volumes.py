"""Containment of volumes, bind mounts, names and ids, proven on the victims.

Each test does what an attacker choosing a request's fields (or a raw task's id) would do,
then looks at the victim: an unmanaged volume with a planted secret, another session's
volume, an unmanaged running container, an image tag, a file outside the allowed root.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from orchestrator import OrchestratorClient
from orchestrator.errors import ContainerNotFound, Forbidden, InvalidRequest, OrchestratorError
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    listed,
    settings_env,
    tool,
)
from tests.integration.test_relics import relic

SECRET = "planted-s3cr3t"


def helper_run(docker_client: docker.DockerClient, volume: str, script: str) -> str:
    """Run ``script`` in a throwaway unmanaged container with ``volume`` at /v."""
    out = docker_client.containers.run(
        TEST_IMAGE, ["sh", "-c", script], volumes={volume: {"bind": "/v"}}, remove=True
    )
    return out.decode()


@pytest.fixture
def victim_volume(docker_client: docker.DockerClient) -> Iterator[str]:
    """An unmanaged volume holding a secret (compose's redis-data, an old relic's...)."""
    name = f"victim-{uuid.uuid4().hex[:8]}"
    docker_client.volumes.create(name)
    helper_run(docker_client, name, f"echo {SECRET} > /v/secret")
    yield name
    docker_client.volumes.get(name).remove(force=True)


@pytest.fixture
def victim_container(docker_client: docker.DockerClient) -> Iterator[Any]:
    """An unmanaged running container whose name a tool run would have."""
    suffix = f"victim-{uuid.uuid4().hex[:8]}"
    container = docker_client.containers.run(
        TEST_IMAGE, ["sleep", "600"], name=f"orch-tool-{suffix}", detach=True
    )
    container.reload()  # its state as started
    container.suffix = suffix  # the execution id that maps onto its name
    yield container
    container.remove(force=True)


def cleaned(client: OrchestratorClient, *session_ids: str) -> None:
    for session_id in session_ids:
        client.cleanup_session(session_id)


# -- (a) a named volume is always the session's own -----------------------------------------------


def test_a_tool_naming_an_unmanaged_volume_gets_its_own_empty_one(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    session_id: str,
    victim_volume: str,
) -> None:
    try:
        result = client.run_tool(
            tool(
                session_id,
                "cat /r/secret 2>/dev/null || echo NO-SECRET; echo mine > /r/written",
                volumes=[{"source": victim_volume, "target": "/r"}],
            ),
            timeout=60,
        )
        assert result.status == "succeeded", result
        assert SECRET not in result.stdout and result.stdout == "NO-SECRET\n"
        # the victim: unchanged, still unlabelled
        victim = docker_client.volumes.get(victim_volume)
        assert not victim.attrs.get("Labels")
        assert helper_run(docker_client, victim_volume, "ls /v; cat /v/secret") == (
            f"secret\n{SECRET}\n"
        )
        # what the tool got: its session's volume, labelled for cleanup
        [own] = docker_client.volumes.list(filters={"label": f"orchestrator.session={session_id}"})
        assert own.attrs["Labels"]["orchestrator.volume"] == victim_volume
        assert own.attrs["Labels"]["orchestrator.managed"] == "true"
    finally:
        cleaned(client, session_id)
    assert docker_client.volumes.list(filters={"label": f"orchestrator.session={session_id}"}) == []


def test_a_relic_naming_an_unmanaged_volume_mounts_its_sessions_own(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    session_id: str,
    victim_volume: str,
) -> None:
    try:
        info = client.start_relic(
            relic(session_id, "web", volumes=[{"source": victim_volume, "target": "/r"}]),
            timeout=60,
        )
        mounts = docker_client.api.inspect_container(info.container_id)["Mounts"]
        assert [m["Name"] for m in mounts] != [victim_volume]
        [mount] = mounts
        own = docker_client.volumes.get(mount["Name"])
        assert own.attrs["Labels"]["orchestrator.session"] == session_id
        assert not docker_client.volumes.get(victim_volume).attrs.get("Labels")
    finally:
        cleaned(client, session_id)


# -- (b) sessions whose old names collided --------------------------------------------------------


def test_sessions_a_and_a_b_never_share_a_volume(
    client: OrchestratorClient, docker_client: docker.DockerClient
) -> None:
    base = f"it-{uuid.uuid4().hex[:8]}"
    first, second = (base, "b-data"), (f"{base}-b", "data")  # both were orch-<base>-b-data

    def run(pair: tuple[str, str], script: str) -> str:
        session, volume = pair
        request = tool(session, script, volumes=[{"source": volume, "target": "/d"}])
        result = client.run_tool(request, timeout=60)
        assert result.status == "succeeded", result
        return result.stdout

    try:
        assert run(first, "cat /d/marker 2>/dev/null; echo one > /d/marker") == ""
        assert run(second, "cat /d/marker 2>/dev/null; echo two > /d/marker") == ""
        assert run(first, "cat /d/marker") == "one\n"
        assert run(second, "cat /d/marker") == "two\n"
    finally:
        cleaned(client, first[0], second[0])
    for session in (first[0], second[0]):
        assert (
            docker_client.volumes.list(filters={"label": f"orchestrator.session={session}"}) == []
        )


# -- (c) ids that walk out of the container namespace ---------------------------------------------


def refused(sent: Any, *fields: str) -> OrchestratorError:
    with pytest.raises(OrchestratorError) as caught:
        sent.get(timeout=60)
    assert isinstance(caught.value, InvalidRequest), caught.value
    assert str(caught.value).startswith(fields), str(caught.value)
    return caught.value


def test_task_ids_cannot_reach_an_unmanaged_container(
    client: OrchestratorClient, docker_client: docker.DockerClient, victim_container: Any
) -> None:
    started = victim_container.attrs["State"]["StartedAt"]
    short = tool("hostile", "sleep 30", resource_limits={"timeout_seconds": 2})
    send = client.app.send_task

    def walking() -> str:  # a fresh task id each time: results are stored under it
        return f"x{uuid.uuid4().hex[:6]}/../{victim_container.name}"

    refused(send("orchestrator.tools.execute", args=[short], task_id=walking()), "execution_id")
    # a well-formed id whose container name is the victim's: refused untouched
    error = refused(
        send("orchestrator.tools.execute", args=[short], task_id=victim_container.suffix),
        "execution_id",
    )
    assert isinstance(error, Forbidden) and "is not this execution's" in str(error)
    refused(send("orchestrator.tools.cancel", args=[walking()]), "execution_id")
    relic_start = relic("hostile", "r")
    refused(send("orchestrator.relics.start", args=[relic_start], task_id=walking()), "relic_id")
    for name in ("info", "stop", "remove"):
        for relic_id in (walking(), f"../../containers/{victim_container.name}"):
            refused(send(f"orchestrator.relics.{name}", args=[relic_id]), "relic_id")
    refused(send("orchestrator.stats.container", args=[walking()]), "container")
    for ref in (victim_container.name, victim_container.id):  # only managed ones, ever
        with pytest.raises(ContainerNotFound):
            send("orchestrator.stats.container", args=[ref]).get(timeout=60)

    time.sleep(4)  # past the tool timeout, when a run would have killed its container
    victim_container.reload()
    assert victim_container.status == "running"
    assert victim_container.attrs["State"]["StartedAt"] == started
    assert victim_container.attrs["RestartCount"] == 0
    assert not victim_container.labels


def test_a_task_id_cannot_reach_image_deletion(
    client: OrchestratorClient, docker_client: docker.DockerClient
) -> None:
    tag = f"orchestrator-test/victim:{uuid.uuid4().hex[:8]}"
    docker_client.images.get(TEST_IMAGE).tag(tag)
    try:
        sent = client.app.send_task(
            "orchestrator.tools.execute",
            args=[tool("hostile", "true")],
            task_id=f"../../images/{tag}",
        )
        refused(sent, "execution_id")
        assert docker_client.images.get(tag).id == docker_client.images.get(TEST_IMAGE).id
    finally:
        docker_client.images.remove(tag)


# -- (d) symlinks and (e) missing sources ---------------------------------------------------------


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    """A secret outside every allowed root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text(SECRET)
    return outside


def test_a_bind_through_a_symlink_is_refused_for_tools_and_relics(
    client: OrchestratorClient, shared_dir: Path, planted: Path, session_id: str
) -> None:
    token = uuid.uuid4().hex[:8]
    inner = shared_dir / f"inner-{token}"
    inner.mkdir()
    escaping = shared_dir / f"escape-{token}"
    escaping.symlink_to(planted)
    staying = shared_dir / f"stay-{token}"
    staying.symlink_to(inner)
    try:
        for source, rule in ((escaping, "outside the allowed roots"), (staying, "symbolic link")):
            mount = [{"source": str(source), "target": "/x"}]
            with pytest.raises(Forbidden, match=rule):
                client.run_tool(tool(session_id, "cat /x/secret", volumes=mount), timeout=60)
            with pytest.raises(Forbidden, match=rule):
                client.start_relic(relic(session_id, "web", volumes=mount), timeout=60)
    finally:
        cleaned(client, session_id)


def test_a_missing_bind_source_is_refused_and_never_created(
    client: OrchestratorClient, shared_dir: Path, session_id: str
) -> None:
    missing = shared_dir / f"missing-{uuid.uuid4().hex[:8]}"
    mount = [{"source": str(missing / "deeper"), "target": "/x"}]
    try:
        with pytest.raises(Forbidden, match="does not exist"):
            client.run_tool(tool(session_id, "true", volumes=mount), timeout=60)
        with pytest.raises(Forbidden, match="does not exist"):
            client.start_relic(relic(session_id, "web", volumes=mount), timeout=60)
        assert not missing.exists()
    finally:
        cleaned(client, session_id)


@pytest.fixture
def build_host(
    services: None, docker_client: docker.DockerClient, tmp_path: Path
) -> Iterator[tuple[str, Path]]:
    """A worker of its own (builds allowed, an allowed root of its own), fed only through its
    host queue so it takes no other test's work."""
    name = f"it-swap-{uuid.uuid4().hex[:6]}"
    root = tmp_path / "root"
    root.mkdir()
    USED_HOSTS.add(name)
    env = settings_env(
        name, ORCHESTRATOR_ALLOWED_VOLUME_ROOTS=str(root), ORCHESTRATOR_ALLOW_BUILDS="true"
    )
    process = WorkerProcess(name, tmp_path, env=env, args=("-Q", f"host.{name}")).start()
    try:
        yield name, root
    finally:
        process.stop()
        force_remove_managed(docker_client, name)


def test_a_directory_swapped_for_a_symlink_during_a_build_is_refused(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    build_host: tuple[str, Path],
    planted: Path,
    session_id: str,
) -> None:
    host, root = build_host
    work = root / "work"
    work.mkdir()
    token = uuid.uuid4().hex[:10]
    request = {
        "tool_name": f"swap{token}",
        "session_id": session_id,
        "build": {"dockerfile_inline": f"FROM {TEST_IMAGE}\nRUN sleep 4\nLABEL t={token}\n"},
        "command": ["cat", "/w/secret"],
        "volumes": [{"source": str(work), "target": "/w"}],
    }
    sent = client.app.send_task("orchestrator.tools.execute", args=[request], queue=f"host.{host}")
    try:
        deadline = time.monotonic() + 60
        while (state := sent.state) != "BUILDING":  # checked on arrival; now it builds
            assert state == "PENDING" and time.monotonic() < deadline, state
            time.sleep(0.05)
        work.rmdir()
        work.symlink_to(planted)  # what a tool with the root mounted writable could do
        with pytest.raises(Forbidden, match="outside the allowed roots") as caught:
            sent.get(timeout=120)
        assert SECRET not in str(caught.value)
        created = listed(docker_client, {"label": f"orchestrator.execution={sent.id}"})
        assert created == []
    finally:
        sent.get(timeout=120, propagate=False)  # the build is over: its image can go
        for image in docker_client.images.list():
            if any(token in t for t in image.tags):
                docker_client.images.remove(image.id, force=True)
        cleaned(client, session_id)
