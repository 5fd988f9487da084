"""How a pool container ends after its run, on the real engine.

After a clean run the agent waits for its standard input to close: the container is left
to its caller (the pool removes it once the result was sent), and ends by itself shortly
after if nobody does.

The agent's trailer (``orchestrator.core.agent``) carries a nonce the tool is not given;
a tool that gets it anyway (by reading its agent's memory, say) can write the trailers
itself and end its own run early. What it gains is checked here, with the nonce handed
to the tool on purpose: its run reports what it forged, and its container is killed
within seconds instead of running on unwatched.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import docker
import pytest

from orchestrator.core.agent import AGENT_ENDED, AGENT_ENTRYPOINT
from orchestrator.core.types import ContainerSpec, ExecSpec
from orchestrator.engine import docker_engine
from orchestrator.engine.docker_engine import DockerEngine
from tests.integration.harness import TEST_IMAGE

NONCE = "5ec7e75ec7e75ec7e75ec7e75ec7e75e"


@pytest.fixture
def engine(services: None) -> Iterator[DockerEngine]:
    real = DockerEngine(docker.from_env())
    yield real
    real.close()


@pytest.fixture
def agent(engine: DockerEngine) -> Iterator[str]:
    """A started pool agent, as the pool makes them (removed afterwards)."""
    spec = ContainerSpec(
        name=f"trailer-{uuid.uuid4().hex[:8]}",
        image=TEST_IMAGE,
        labels={"orchestrator.test": "trailer"},
        entrypoint=AGENT_ENTRYPOINT,
        command=(),
        stdin_open=True,
    )
    ref = engine.create_container(spec).id
    try:
        engine.start_container(ref)
        yield ref
    finally:
        engine.remove_container(ref)


def test_a_forged_trailer_ends_the_run_and_the_container_is_killed_soon(
    engine: DockerEngine, agent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker_engine, "new_nonce", lambda: NONCE)
    trailer = (AGENT_ENDED + NONCE.encode() + b" 0").decode()
    script = (
        f"echo before; echo {trailer}; echo {trailer} >&2; while :; do echo after; sleep 0.1; done"
    )
    started = time.monotonic()
    stream = engine.run_attached(agent, ExecSpec(argv=("sh", "-c", script)))
    output: dict[int, bytes] = {1: b"", 2: b""}
    for number, data in stream:
        output[number] += data
    assert (output[1], output[2]) == (b"before\n", b"")
    assert stream.exit_code() == 0
    stream.close()
    assert time.monotonic() - started < 1
    # the tool still runs (it forged the end): killed after the trailer's grace
    assert engine.wait_container(agent, 10) == 137
    assert time.monotonic() - started < 2 + docker_engine._TRAILER_EXIT_SECONDS


def test_after_a_clean_run_the_container_waits_for_its_caller_then_ends_by_itself(
    engine: DockerEngine, agent: str
) -> None:
    started = time.monotonic()
    stream = engine.run_attached(agent, ExecSpec(argv=("sh", "-c", "cat; echo done")))
    output = b"".join(data for number, data in stream if number == 1)
    assert output == b"done\n"  # its standard input was /dev/null: cat did not wait
    assert stream.exit_code() == 0
    stream.close()
    # the teardown is not on the run's path: the container still runs for its caller...
    assert engine.wait_container(agent, 0.3) is None
    # ...and, with none removing it, ends by itself (with the tool's code) soon after
    assert engine.wait_container(agent, 10) == 0
    assert time.monotonic() - started < 1 + docker_engine._TRAILER_EXIT_SECONDS


def test_a_used_container_removed_by_its_caller_ends_at_once(
    engine: DockerEngine, agent: str
) -> None:
    stream = engine.run_attached(agent, ExecSpec(argv=("true",)))
    assert list(stream) == [] and stream.exit_code() == 0
    stream.close()
    started = time.monotonic()
    assert engine.remove_container(agent)
    assert time.monotonic() - started < 1
    assert engine.find_container(agent) is None
