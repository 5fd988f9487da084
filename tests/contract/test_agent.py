"""Commands given to a warm-pool agent (``run_attached``): the container becomes the command."""

from __future__ import annotations

import time

import pytest

from orchestrator.core.agent import AGENT_ENTRYPOINT
from orchestrator.engine.fake import FakeProgram
from orchestrator.errors import ContainerNotFound, DockerError
from tests.contract.harness import Harness, assert_ends_when_killed, drain
from tests.contract.scenarios import (
    CAT,
    ECHO_GREETING,
    EXIT_3,
    FAKES_A_TRAILER,
    LEAVES_A_WRITER,
    OUT_AND_ERR,
    SLEEPS,
    SLEEPS_LONG,
    SLOW_EXIT_4,
    Behaviour,
)


def agent(harness: Harness, what: str = "agent") -> str:
    """A started pool agent (as the pool makes them), waiting for its command."""
    return harness.run(SLEEPS, what, entrypoint=AGENT_ENTRYPOINT, command=(), stdin_open=True)


def test_output_comes_apart_and_the_exit_code_is_the_containers(harness: Harness) -> None:
    engine = harness.engine
    first, second = agent(harness, "one"), agent(harness, "two")

    ok = engine.run_attached(first, harness.exec_spec(OUT_AND_ERR))
    assert drain(ok) == (b"out\n", b"err\n")
    assert ok.exit_code() == 0

    failed = engine.run_attached(second, harness.exec_spec(EXIT_3))
    assert drain(failed) == (b"", b"")
    assert failed.exit_code() == 3
    assert engine.wait_container(second, 10) == 3  # the agent execed it: it was the container


@pytest.mark.parametrize(
    "value",
    ["hello there", 'it\'s "$(id)" `id` ${HOME}', "two\nlines\n", ""],
    ids=["plain", "shell-syntax", "newlines", "empty"],
)
def test_environment_values_arrive_as_they_are(harness: Harness, value: str) -> None:
    ref = agent(harness)
    stream = harness.engine.run_attached(
        ref, harness.exec_spec(ECHO_GREETING, environment={"GREETING": value})
    )
    assert drain(stream) == (value.encode() + b"\n", b"")


@pytest.mark.parametrize(
    "data", [b"line one\nline two\n", bytes(range(256)) * 400, b""], ids=["text", "binary", "none"]
)
def test_stdin_follows_the_command_then_closes(harness: Harness, data: bytes) -> None:
    ref = agent(harness)
    stream = harness.engine.run_attached(ref, harness.exec_spec(CAT, stdin=data or None))
    assert drain(stream) == (data, b"")
    assert stream.exit_code() == 0


def test_the_exit_code_is_none_while_the_command_runs(harness: Harness) -> None:
    stream = harness.engine.run_attached(agent(harness), harness.exec_spec(SLOW_EXIT_4))
    assert stream.exit_code() is None
    drain(stream)
    assert stream.exit_code() == 4


def test_a_killed_command_ends_its_stream_with_137(harness: Harness) -> None:
    engine = harness.engine
    ref = agent(harness)
    stream = engine.run_attached(ref, harness.exec_spec(SLEEPS_LONG))
    assert_ends_when_killed(engine, ref, stream)


def test_the_run_ends_with_the_command_not_with_what_it_left_behind(harness: Harness) -> None:
    engine = harness.engine
    ref = agent(harness)
    started = time.monotonic()
    stream = engine.run_attached(ref, harness.exec_spec(LEAVES_A_WRITER))
    assert drain(stream) == (b"done\n", b"")
    assert stream.exit_code() == 0
    assert time.monotonic() - started < 1.5  # the leftover writes at 2 s
    assert engine.wait_container(ref, 10) == 0  # and the container ended with the command


def test_a_trailer_the_command_writes_is_its_output(harness: Harness) -> None:
    stream = harness.engine.run_attached(agent(harness), harness.exec_spec(FAKES_A_TRAILER))
    fake = b"orchestrator-agent-ended 00000000000000000000000000000000 0\n"
    assert drain(stream) == (fake + b"real\n", fake)
    assert stream.exit_code() == 5


def test_an_agent_serves_one_command(harness: Harness) -> None:
    engine = harness.engine
    ref = agent(harness)
    drain(engine.run_attached(ref, harness.exec_spec(OUT_AND_ERR)))
    assert engine.wait_container(ref, 10) == 0
    with pytest.raises(DockerError) as info:
        engine.run_attached(ref, harness.exec_spec(OUT_AND_ERR))
    assert not isinstance(info.value, ContainerNotFound)


def test_an_agent_that_was_never_started_or_is_missing_is_refused(harness: Harness) -> None:
    engine = harness.engine
    created = engine.create_container(
        harness.spec(SLEEPS, "created", entrypoint=AGENT_ENTRYPOINT, command=(), stdin_open=True)
    ).id
    with pytest.raises(DockerError) as info:
        engine.run_attached(created, harness.exec_spec(OUT_AND_ERR))
    assert not isinstance(info.value, ContainerNotFound)
    with pytest.raises(ContainerNotFound):
        engine.run_attached(harness.name("missing"), harness.exec_spec(OUT_AND_ERR))


def test_what_the_agent_cannot_carry_is_refused_before_anything_runs(harness: Harness) -> None:
    engine = harness.engine
    ref = agent(harness)
    for bad in (
        harness.exec_spec(OUT_AND_ERR, environment={"A-B": "x"}),
        harness.exec_spec(OUT_AND_ERR, user="1234"),
    ):
        with pytest.raises(DockerError, match="command|user"):
            engine.run_attached(ref, bad)
    # still waiting: the refusals gave it nothing
    assert drain(engine.run_attached(ref, harness.exec_spec(OUT_AND_ERR))) == (b"out\n", b"err\n")


#: Not an agent: after reading its line it floods stdout and never acknowledges.
FLOODS = Behaviour(
    "floods",
    "read line; head -c 3000000 /dev/zero; sleep 30",
    FakeProgram(run_seconds=None, signal_exit_codes={}),
)


def test_a_container_that_floods_output_unacknowledged_is_refused_soon(harness: Harness) -> None:
    ref = harness.run(FLOODS, "floods", stdin_open=True)
    started = time.monotonic()
    with pytest.raises(DockerError, match="not a pool agent|did not take its command"):
        harness.engine.run_attached(ref, harness.exec_spec(OUT_AND_ERR))
    assert time.monotonic() - started < 8  # at the held-output cap, not the 10 s watchdog
