"""Stopping and killing: Docker's rules for signals to a container's PID 1."""

from __future__ import annotations

import time

import pytest

from orchestrator.errors import ContainerNotFound, DockerError
from tests.contract.harness import Harness
from tests.contract.scenarios import EXITS_0, IGNORES_TERM, SLEEPS, TRAPS_TERM


def test_stop_escalates_to_sigkill_after_the_grace(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(IGNORES_TERM)

    started = time.monotonic()
    engine.stop_container(ref, grace_seconds=1)
    took = time.monotonic() - started

    assert 0.9 <= took < 5
    stopped = engine.inspect_container(ref)
    assert stopped.status == "exited"
    assert stopped.exit_code == 137


def test_stop_of_a_process_without_handlers_needs_the_sigkill_too(harness: Harness) -> None:
    """PID 1 ignores SIGTERM when it has no handler for it."""
    engine = harness.engine
    ref = harness.run(SLEEPS)

    started = time.monotonic()
    engine.stop_container(ref, grace_seconds=1)

    assert time.monotonic() - started >= 0.9
    assert engine.inspect_container(ref).exit_code == 137


def test_stop_of_a_process_honouring_sigterm_ends_it_quickly(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(TRAPS_TERM)
    time.sleep(0.2)  # the shell has set its trap

    started = time.monotonic()
    engine.stop_container(ref, grace_seconds=10)

    assert time.monotonic() - started < 3
    assert engine.inspect_container(ref).exit_code == 143


def test_stop_leaves_created_and_exited_containers_as_they_are(harness: Harness) -> None:
    engine = harness.engine
    created = engine.create_container(harness.spec(SLEEPS, "created")).id
    exited = harness.run(EXITS_0, "exited")
    assert engine.wait_container(exited, 10) == 0

    engine.stop_container(created, grace_seconds=1)
    engine.stop_container(exited, grace_seconds=1)

    assert engine.inspect_container(created).status == "created"
    done = engine.inspect_container(exited)
    assert done.status == "exited" and done.exit_code == 0


def test_kill_sends_sigkill_by_default(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)

    assert engine.kill_container(ref) is True

    assert engine.wait_container(ref, 10) == 137
    assert engine.inspect_container(ref).exit_code == 137


@pytest.mark.parametrize("signal", ["SIGTERM", "TERM", "15"])
def test_kill_with_sigterm_runs_the_handler(harness: Harness, signal: str) -> None:
    engine = harness.engine
    ref = harness.run(TRAPS_TERM)
    time.sleep(0.2)  # the shell has set its trap

    assert engine.kill_container(ref, signal) is True

    assert engine.wait_container(ref, 10) == 143


def test_a_signal_without_a_handler_is_ignored_by_pid_1(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(TRAPS_TERM)
    time.sleep(0.2)

    assert engine.kill_container(ref, "SIGHUP") is True
    assert engine.wait_container(ref, timeout_seconds=0.5) is None
    assert engine.inspect_container(ref).status == "running"
    assert engine.kill_container(ref, "SIGTERM") is True
    assert engine.wait_container(ref, 10) == 143


def test_kill_of_a_stopped_or_missing_container_returns_false(harness: Harness) -> None:
    engine = harness.engine
    created = engine.create_container(harness.spec(SLEEPS, "created")).id
    exited = harness.run(EXITS_0, "exited")
    assert engine.wait_container(exited, 10) == 0

    assert engine.kill_container(created) is False
    assert engine.kill_container(exited) is False
    assert engine.kill_container(harness.name("missing")) is False
    assert engine.kill_container(exited, "SIGTERM") is False


def test_kill_with_an_invalid_signal_is_refused(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)

    with pytest.raises(DockerError) as info:
        engine.kill_container(ref, "SIGNOPE")

    assert not isinstance(info.value, ContainerNotFound)
    assert engine.inspect_container(ref).status == "running"
