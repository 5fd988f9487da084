"""A container's output (logs) and resource usage (stats)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from orchestrator.errors import ContainerNotFound
from tests.contract.harness import Harness, read_all
from tests.contract.scenarios import SLEEPS, WRITES_LINES, WRITES_SLOWLY, Behaviour

ZERO_TIME = "0001-01-01T00:00:00Z"


def finished(harness: Harness, behaviour: Behaviour = WRITES_LINES) -> str:
    """A container of ``behaviour`` that has run to its end."""
    ref = harness.run(behaviour)
    harness.engine.wait_container(ref, 10)
    return ref


def test_stdout_and_stderr_apart_or_together(harness: Harness) -> None:
    engine = harness.engine
    ref = finished(harness)

    assert read_all(engine.container_logs(ref, stderr=False)) == b"one\ntwo\nthree\n"
    assert read_all(engine.container_logs(ref, stdout=False)) == b"oops\n"
    both = read_all(engine.container_logs(ref))
    assert sorted(both.splitlines()) == [b"one", b"oops", b"three", b"two"]


def test_tail_counts_the_lines_of_both_streams(harness: Harness) -> None:
    """Docker takes the log's last lines first, then picks the streams asked for."""
    engine = harness.engine
    ref = finished(harness)

    assert read_all(engine.container_logs(ref, tail=2)) == b"three\noops\n"
    assert read_all(engine.container_logs(ref, stderr=False, tail=2)) == b"three\n"
    assert read_all(engine.container_logs(ref, stderr=False, tail=1)) == b""
    assert read_all(engine.container_logs(ref, stdout=False, tail=1)) == b"oops\n"
    assert read_all(engine.container_logs(ref, tail=0)) == b""
    assert read_all(engine.container_logs(ref, tail=100)).count(b"\n") == 4


def test_follow_ends_when_the_container_exits(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(WRITES_SLOWLY)

    started = time.monotonic()
    output = read_all(engine.container_logs(ref, follow=True))

    assert output == b"a\nb\n"
    assert time.monotonic() - started < 5
    assert engine.inspect_container(ref).status == "exited"


def test_follow_of_an_exited_container_returns_at_once(harness: Harness) -> None:
    engine = harness.engine
    ref = finished(harness)

    started = time.monotonic()
    assert read_all(engine.container_logs(ref, stdout=False, follow=True)) == b"oops\n"
    assert time.monotonic() - started < 2


def test_a_created_container_has_no_logs(harness: Harness) -> None:
    engine = harness.engine
    ref = engine.create_container(harness.spec(WRITES_LINES)).id

    assert read_all(engine.container_logs(ref)) == b""


def test_logs_of_a_missing_container(harness: Harness) -> None:
    with pytest.raises(ContainerNotFound):
        harness.engine.container_logs(harness.name("missing"))


def joined(chunks: list[tuple[int, bytes]], number: int) -> bytes:
    return b"".join(data for n, data in chunks if n == number)


def test_follow_output_tags_each_stream_and_ends_with_the_container(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(WRITES_LINES)

    started = time.monotonic()
    chunks = list(engine.follow_output(ref))

    assert joined(chunks, 1) == b"one\ntwo\nthree\n"
    assert joined(chunks, 2) == b"oops\n"
    assert {n for n, _ in chunks} == {1, 2}
    assert time.monotonic() - started < 5
    assert engine.inspect_container(ref).status == "exited"
    assert joined(list(engine.follow_output(ref)), 1) == b"one\ntwo\nthree\n"  # exited


def test_closing_a_followed_output_ends_a_reader_blocked_on_it(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS)
    stream = engine.follow_output(ref)
    reader = threading.Thread(target=lambda: list_quietly(stream), daemon=True)
    reader.start()
    time.sleep(0.2)

    stream.close()

    reader.join(5)
    assert not reader.is_alive()
    assert engine.inspect_container(ref).running


def list_quietly(stream: Any) -> None:
    try:
        list(stream)
    except Exception:  # noqa: BLE001, S110 - a closed stream may end with an error
        pass


def test_follow_output_of_a_missing_container(harness: Harness) -> None:
    with pytest.raises(ContainerNotFound):
        harness.engine.follow_output(harness.name("missing"))


def test_one_stats_sample_running_and_stopped(harness: Harness) -> None:
    engine = harness.engine
    ref = harness.run(SLEEPS, memory_mb=64)

    live = engine.container_stats(ref)
    assert live["read"] != ZERO_TIME
    assert live["memory_stats"]["usage"] > 0
    assert live["memory_stats"]["limit"] == 64 * 1024 * 1024
    assert {"cpu_stats", "precpu_stats", "pids_stats", "blkio_stats"} <= set(live)

    engine.kill_container(ref)
    engine.wait_container(ref, 10)
    stopped = engine.container_stats(ref)
    assert stopped["read"] == ZERO_TIME
    assert stopped["memory_stats"] == {}


def test_the_stats_stream_goes_on_with_empty_samples_once_stopped(harness: Harness) -> None:
    """The stream does not end with the container: its samples turn empty (zero time)."""
    engine = harness.engine
    ref = harness.run(SLEEPS)
    stream = engine.stream_stats(ref)
    seen: list[str] = []
    try:
        for sample in stream:
            seen.append(sample["read"])
            if len(seen) == 1:
                engine.kill_container(ref)
            if sample["read"] == ZERO_TIME or len(seen) > 5:
                break
    finally:
        stream.close()

    assert seen[0] != ZERO_TIME
    assert seen[-1] == ZERO_TIME


def test_stats_of_a_missing_container(harness: Harness) -> None:
    missing = harness.name("missing")

    with pytest.raises(ContainerNotFound):
        harness.engine.container_stats(missing)
    with pytest.raises(ContainerNotFound):
        harness.engine.stream_stats(missing)
