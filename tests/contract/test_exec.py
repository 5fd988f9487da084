"""Commands run with ``exec`` in a running container."""

from __future__ import annotations

import pytest

from orchestrator.errors import ContainerConflict, ContainerNotFound, DockerError
from tests.contract.harness import Harness, assert_ends_when_killed, drain
from tests.contract.scenarios import (
    CAT,
    ECHO_GREETING,
    EXIT_0,
    EXIT_3,
    EXITS_0,
    OUT_AND_ERR,
    PWD,
    SLEEPS,
    SLEEPS_LONG,
    SLOW_EXIT_4,
    USER_ID,
)


def test_exit_codes(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)

    ok = engine.exec_start(ref, harness.exec_spec(EXIT_0))
    assert drain(ok) == (b"", b"")
    assert ok.exit_code() == 0

    failed = engine.exec_start(ref, harness.exec_spec(EXIT_3))
    assert drain(failed) == (b"", b"")
    assert failed.exit_code() == 3
    assert ok.id != failed.id


def test_stdout_and_stderr_come_apart(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)

    stream = engine.exec_start(ref, harness.exec_spec(OUT_AND_ERR))

    assert drain(stream) == (b"out\n", b"err\n")
    assert stream.exit_code() == 0


def test_environment_working_dir_and_user(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)

    greeting = engine.exec_start(
        ref, harness.exec_spec(ECHO_GREETING, environment={"GREETING": "hello there"})
    )
    assert drain(greeting) == (b"hello there\n", b"")

    where = engine.exec_start(ref, harness.exec_spec(PWD, working_dir="/bin"))
    assert drain(where) == (b"/bin\n", b"")

    who = engine.exec_start(ref, harness.exec_spec(USER_ID, user="1234"))
    assert drain(who) == (b"1234\n", b"")


@pytest.mark.parametrize(
    "data",
    [b"line one\nline two\n", bytes(range(256)) * 400, b""],
    ids=["text", "binary-100k", "empty"],
)
def test_stdin_bytes_are_delivered_then_closed(harness: Harness, data: bytes) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)

    stream = engine.exec_start(ref, harness.exec_spec(CAT, stdin=data))

    assert drain(stream) == (data, b"")
    assert stream.exit_code() == 0


def test_the_exit_code_is_none_while_the_command_runs(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)

    stream = engine.exec_start(ref, harness.exec_spec(SLOW_EXIT_4))
    assert stream.exit_code() is None

    drain(stream)
    assert stream.exit_code() == 4


def test_a_command_ends_with_its_container(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)
    stream = engine.exec_start(ref, harness.exec_spec(SLEEPS_LONG))
    assert_ends_when_killed(engine, ref, stream)


def test_exec_in_a_container_that_is_not_running_is_refused(harness: Harness) -> None:
    engine = harness.engine
    exited = harness.run(EXITS_0, "exited")
    assert engine.wait_container(exited, 10) == 0
    created = engine.create_container(harness.spec(SLEEPS, "created")).id

    for ref in (exited, created):
        with pytest.raises(DockerError) as info:
            engine.exec_start(ref, harness.exec_spec(EXIT_0))
        assert not isinstance(info.value, ContainerNotFound | ContainerConflict)


def test_exec_in_a_missing_container_is_not_found(harness: Harness) -> None:
    with pytest.raises(ContainerNotFound):
        harness.engine.exec_start(harness.name("missing"), harness.exec_spec(EXIT_0))
