"""Behaviour of one tool execution end to end (:func:`orchestrator.execution.run_execution`),
on fakeredis and the in-memory engine: statuses, deadlines, cancellation, cleanup,
redelivery, secrets and image errors; cold runs and warm-pool runs (``exec``)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator.core.agent import AGENT_ENTRYPOINT
from orchestrator.core.specs import tool_spec
from orchestrator.core.types import Chunk, ContainerSpec, ExecSpec, Stream
from orchestrator.engine.fake import FakeEngine, FakeExec, FakeProgram
from orchestrator.errors import ContainerNotFound, DockerError, DockerUnavailable, LimitExceeded
from orchestrator.models import FileContent, ResourceLimits, ToolExecutionRequest, ToolRunStats
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.state.images import last_used
from orchestrator.state.logs import read_live
from orchestrator.worker.exec_run import exec_command
from orchestrator.worker.execution import DuplicateDelivery, run_execution
from orchestrator.worker.images import RecentImages
from orchestrator.worker.runtime import Runtime

SETTINGS = Settings.from_env({}, host_name="h1", wait_slice_seconds=0.05, lease_seconds=5)
MB = 1024 * 1024
NAME = "orch-tool-e1"


class Recorder:
    """Records what the runtime would enqueue and what a task reports as progress."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


@pytest.fixture
def rt(redis, engine) -> Runtime:
    return Runtime(SETTINGS, redis, engine=engine, enqueue=Recorder())


def make_request(**overrides: Any) -> ToolExecutionRequest:
    fields: dict[str, Any] = {
        "session_id": "s1",
        "tool_name": "echo",
        "image": "busybox:latest",
        "command": ["sh", "-c", "echo hi"],
    }
    timeout = overrides.pop("timeout_seconds", None)
    if timeout is not None:
        fields["resource_limits"] = ResourceLimits(timeout_seconds=timeout)
    fields.update(overrides)
    return ToolExecutionRequest(**fields)


def runs(engine: FakeEngine, **program: Any) -> None:
    """What the tool (a container of ``busybox:latest``) does from now on."""
    engine.add_image("busybox:latest", FakeProgram(**program))


def created_specs(engine: FakeEngine) -> list[ContainerSpec]:
    return [spec for (spec,) in engine.called("create_container")]


def tool_specs(engine: FakeEngine) -> list[ContainerSpec]:
    """The tool containers created (pool containers left out)."""
    return [s for s in created_specs(engine) if s.labels["orchestrator.kind"] == "tool"]


def cancel_later(rt: Runtime, execution_id: str, delay: float) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: (time.sleep(delay), rt.executions.request_cancel(execution_id)),
        daemon=True,
    )
    thread.start()
    return thread


def left_behind(
    engine: FakeEngine,
    *,
    program: FakeProgram | None = None,
    started_ago: float | None = None,
    ran_for: float | None = None,
) -> str:
    """The container of execution e1 as a worker that died left it; returns its id.

    Created only (``started_ago`` None), or started ``started_ago`` seconds ago and, with
    ``ran_for``, exited that many seconds after its start.
    """
    engine.add_image("earlier:1", program or FakeProgram(run_seconds=None))
    spec = tool_spec(
        make_request(), execution_id="e1", image="earlier:1", settings=SETTINGS, now=time.time()
    )
    container = engine.create_container(spec)
    if started_ago is not None:
        engine.start_container(container.id)
        # The fake has no clock to turn back: move this container's start into the past.
        box = engine.containers[container.id]
        box.started_at = datetime.now(UTC) - timedelta(seconds=started_ago)
        if box.ends_at is not None:
            box.ends_at -= started_ago
        if ran_for is not None:
            engine.inspect_container(container.id)  # its run time is over: it exits
            box.finished_at = box.started_at + timedelta(seconds=ran_for)
    engine.calls.clear()
    return container.id


# -- outcomes ------------------------------------------------------------------------------


def test_a_tool_that_exits_0_succeeds_with_its_json_result_and_both_streams_apart(rt, engine):
    runs(engine, stdout=b'working...\n{"answer": 42}\n', stderr=b"warning: slow disk\n")
    progress = Recorder()

    result = run_execution(rt, make_request(), "e1", progress=progress)

    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.error is None
    assert result.result == {"answer": 42}
    assert result.stdout == 'working...\n{"answer": 42}\n'
    assert result.stderr == "warning: slow disk\n"
    assert not result.stdout_truncated and not result.stderr_truncated
    assert (result.execution_id, result.tool_name, result.session_id) == ("e1", "echo", "s1")
    assert result.host == "h1"
    assert result.started_at is not None and result.finished_at >= result.started_at
    assert 0 <= result.duration_seconds < 5
    assert [state for state, _ in progress.calls] == ["RUNNING"]  # the image was local
    assert progress.calls[0][1]["container_id"] == result.container_id


def test_the_container_is_created_from_the_request_and_started_once(rt, engine):
    result = run_execution(rt, make_request(parameters={"N": 3}), "e1")

    [spec] = created_specs(engine)
    assert engine.called("start_container") == [(NAME,)]
    assert spec.name == NAME
    assert spec.image == "busybox:latest"
    assert spec.command == ("sh", "-c", "echo hi")
    assert spec.environment == {"N": "3"}
    assert spec.labels["orchestrator.execution"] == "e1"
    assert spec.labels["orchestrator.kind"] == "tool"
    assert spec.network == "none"
    assert result.container_id is not None


def test_usage_is_sampled_from_the_stats_stream_while_it_runs(rt, engine):
    runs(engine, run_seconds=0.5, memory_bytes=50 * MB)
    engine.stats_interval_seconds = 0.05

    result = run_execution(rt, make_request(), "e1")

    # While it ran, from USAGE_DELAY_SECONDS on; none once it stopped.
    assert 3 <= result.stats.samples <= 7
    assert result.stats.peak_memory_mb == 50.0
    assert result.stats.cpu_seconds == 0.001


def test_a_tool_that_ended_before_its_first_sample_has_no_usage_figures(rt, engine):
    result = run_execution(rt, make_request(), "e1")  # it exits as it starts

    assert result.status == "succeeded"
    assert result.stats == ToolRunStats()  # the stopped (zero-time) sample is not counted


def test_a_non_zero_exit_is_failed_with_its_exit_code(rt, engine):
    runs(engine, exit_code=3, stderr=b"boom\n")

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "failed"
    assert result.exit_code == 3
    assert result.error == "exited with code 3"
    assert result.stderr == "boom\n"


def test_an_oom_killed_container_is_oom_killed_with_the_memory_limit_named(rt, engine):
    runs(engine, exit_code=137, oom_killed=True)

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "oom_killed"
    assert result.exit_code == 137
    assert "512 MB" in result.error


def test_a_container_that_never_exits_is_killed_at_its_timeout(rt, engine):
    runs(engine, run_seconds=None, stdout=b"still going\n")
    begin = time.monotonic()

    result = run_execution(rt, make_request(timeout_seconds=1), "e1")

    elapsed = time.monotonic() - begin
    assert result.status == "timed_out"
    assert "1 s timeout" in result.error
    assert 0.9 <= elapsed < 3
    assert (NAME, "SIGKILL") in engine.called("kill_container")
    assert result.exit_code == 137
    assert result.stdout == "still going\n"


def test_cancellation_while_it_runs_kills_it_within_a_second(rt, engine):
    runs(engine, run_seconds=None)
    cancel_later(rt, "e1", 0.2)
    begin = time.monotonic()

    result = run_execution(rt, make_request(timeout_seconds=60), "e1")

    assert time.monotonic() - begin < 1.2
    assert result.status == "cancelled"
    assert result.error == "cancelled by request"
    assert (NAME, "SIGKILL") in engine.called("kill_container")


def test_cancellation_asked_before_it_started_creates_no_container(rt, engine):
    rt.executions.request_cancel("e1")

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "cancelled"
    assert "before it started" in result.error
    assert result.container_id is None
    assert engine.called("create_container") == []
    assert engine.called("pull_image") == []


def test_a_late_takeover_of_a_container_that_finished_in_time_reports_its_exit(rt, engine):
    left_behind(
        engine,
        program=FakeProgram(stdout=b'{"ok": 1}\n', run_seconds=5),
        started_ago=120,
        ran_for=5,
    )

    result = run_execution(rt, make_request(timeout_seconds=60), "e1", requeued=True)

    assert result.status == "succeeded"
    assert result.result == {"ok": 1}
    assert result.duration_seconds == 5.0  # the engine's times, not this worker's
    assert engine.called("start_container") == []


def remove_after(engine: FakeEngine, delay: float) -> None:
    """Remove the execution's container behind the worker's back (``docker rm -f``)."""

    def remove() -> None:
        time.sleep(delay)
        engine.remove_container(NAME)

    threading.Thread(target=remove, daemon=True).start()


def test_a_container_removed_behind_its_back_ends_the_run_without_a_rerun(rt, engine):
    runs(engine, run_seconds=None)
    remove_after(engine, 0.15)
    begin = time.monotonic()

    result = run_execution(rt, make_request(timeout_seconds=60), "e1")
    assert result.status == "error"

    assert time.monotonic() - begin < 2
    assert rt.executions.inflight() == []  # the reaper does not run it a second time
    assert rt.leases.holder("e1") is None


def test_a_container_removed_behind_its_back_gives_an_error_result(rt, engine):
    runs(engine, run_seconds=None)
    remove_after(engine, 0.15)

    result = run_execution(rt, make_request(timeout_seconds=60), "e1")

    assert result.status == "error"
    assert NAME in result.error
    assert rt.executions.result("e1") == result


# -- cleanup -------------------------------------------------------------------------------


def test_the_container_is_removed_after_the_run_when_cleanup_is_true(rt, engine):
    result = run_execution(rt, make_request(cleanup=True), "e1")

    assert result.status == "succeeded"
    rt.pool.drain()  # the removal queued behind the run
    assert engine.containers == {}
    assert engine.called("remove_container") == [(NAME,)]


def test_the_removal_comes_after_the_result_and_behind_the_runs_in_progress(rt, engine):
    rt.pool.run_started("orch-tool-other")  # another run of this worker, still going

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert rt.executions.result("e1") is not None  # stored first
    time.sleep(0.3)
    assert engine.find_container(NAME) is not None  # not while the other run goes on
    rt.pool.run_ended("orch-tool-other")
    deadline = time.monotonic() + 5
    while engine.find_container(NAME) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.find_container(NAME) is None
    rt.pool.drain()


def test_a_cold_run_holds_the_background_work_back_while_it_runs(rt, engine):
    runs(engine, run_seconds=0.3)
    held: list[bool] = []
    engine_start = engine.start_container

    def start(ref: str) -> None:
        held.append(not rt.pool.gate.wait_clear(0.05))
        engine_start(ref)

    engine.start_container = start  # type: ignore[method-assign]
    run_execution(rt, make_request(), "e1")

    assert held == [True]
    assert rt.pool.gate.active == 0  # and lets it go once over
    rt.pool.drain()


def test_the_container_is_kept_when_cleanup_is_false(rt, engine):
    run_execution(rt, make_request(cleanup=False), "e1")

    assert engine.called("remove_container") == []
    kept = engine.inspect_container(NAME)
    assert kept.status == "exited"
    assert kept.labels["orchestrator.keep"] == "true"


def test_the_container_is_removed_when_the_engine_fails_during_the_run(rt, engine):
    failure = DockerError(f"start container {NAME}: driver failed programming")
    engine.fail_next("start_container", failure)

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "error"
    assert result.error == str(failure)
    assert result.container_id is not None
    rt.pool.drain()  # the removal queued behind the run
    assert engine.containers == {}
    assert engine.called("remove_container") == [(NAME,)]


def test_a_failed_removal_does_not_change_the_result(rt, engine):
    engine.fail_next("remove_container", DockerError("device or resource busy"))

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert engine.find_container(NAME) is not None  # left for the janitor


# -- redelivery ------------------------------------------------------------------------------


def test_a_second_delivery_while_the_first_holds_the_lease_is_refused(rt, redis, engine):
    runs(engine, run_seconds=None)
    first: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: first.update(result=run_execution(rt, make_request(), "e1")), daemon=True
    )
    runner.start()
    for _ in range(100):
        if engine.containers and rt.leases.holder("e1"):
            break
        time.sleep(0.01)
    other_worker = Runtime(SETTINGS, redis, engine=engine)

    with pytest.raises(DuplicateDelivery, match="e1"):
        run_execution(other_worker, make_request(), "e1")
    with pytest.raises(DuplicateDelivery):
        run_execution(rt, make_request(), "e1")  # the same worker is not re-entrant either

    rt.executions.request_cancel("e1")
    runner.join(5)
    assert first["result"].status == "cancelled"
    assert len(engine.called("create_container")) == 1


def test_a_delivery_after_the_run_finished_returns_the_stored_result(rt, engine):
    runs(engine, stdout=b'{"n": 1}\n')
    first = run_execution(rt, make_request(), "e1")

    again = run_execution(rt, make_request(), "e1")

    assert again == first
    assert len(engine.called("create_container")) == 1
    assert rt.leases.holder("e1") is None


def test_a_redelivery_attaches_to_the_running_container_of_a_dead_worker(rt, engine):
    existing = left_behind(
        engine,
        program=FakeProgram(stdout=b'{"resumed": true}\n', run_seconds=2.2),
        started_ago=2.0,
    )

    result = run_execution(rt, make_request(timeout_seconds=60), "e1", requeued=True)

    assert result.status == "succeeded"
    assert result.result == {"resumed": True}
    assert result.container_id == existing
    assert engine.called("create_container") == []
    assert engine.called("start_container") == []


def test_a_redelivery_starts_a_container_that_was_created_but_never_started(rt, engine):
    existing = left_behind(engine, program=FakeProgram(stdout=b"ok\n"))

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert result.stdout == "ok\n"
    assert result.container_id == existing
    rt.pool.drain()  # the removal queued behind the run
    assert list(engine.containers) == []  # the one container, run and removed
    assert engine.called("start_container") == [(NAME,)]


def test_a_takeover_counts_the_time_already_run_against_the_timeout(rt, engine):
    left_behind(engine, started_ago=0.8)
    begin = time.monotonic()

    result = run_execution(rt, make_request(timeout_seconds=1), "e1")

    assert result.status == "timed_out"
    assert time.monotonic() - begin < 0.8


def test_a_name_conflict_on_create_attaches_to_the_container_that_won(rt, engine, monkeypatch):
    engine.add_image("winner:1", FakeProgram(stdout=b"from the winner\n"))
    create = engine.create_container

    def racing_delivery(spec: ContainerSpec) -> Any:
        monkeypatch.undo()
        create(replace(spec, image="winner:1"))  # another delivery creates it first
        return create(spec)

    monkeypatch.setattr(engine, "create_container", racing_delivery)

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert result.stdout == "from the winner\n"


def test_a_requeued_run_with_secrets_and_no_container_is_an_error_not_a_rerun(rt, engine):
    request = make_request(secret_parameters={"API_TOKEN": "tok-123456"})

    result = run_execution(rt, request, "e1", requeued=True)

    assert result.status == "error"
    assert "secret parameters" in result.error
    assert "submit the run again" in result.error
    assert engine.called("create_container") == []


def test_a_requeued_run_without_secrets_and_no_container_runs_again(rt, engine):
    result = run_execution(rt, make_request(), "e1", requeued=True)

    assert result.status == "succeeded"
    assert len(engine.called("create_container")) == 1


# -- secrets -------------------------------------------------------------------------------


def test_secret_values_never_appear_in_the_result_or_the_live_log(rt, redis, engine):
    runs(
        engine,
        stdout=b'using tok-123456\n{"echo": "tok-123456", "n": [1, "x{\\"id\\": 9}"]}\n',
        stderr=b"auth tok-123456 failed once\n",
    )
    request = make_request(secret_parameters={"API_TOKEN": "tok-123456", "PIN": {"v": 12345}})

    result = run_execution(rt, request, "e1")

    dumped = result.model_dump_json()
    assert "tok-123456" not in dumped
    assert result.stdout.startswith("using ***\n")
    assert result.stderr == "auth *** failed once\n"
    assert result.result["echo"] == "***"
    live = read_live(redis, "e1")
    assert "tok-123456" not in live["stdout"] + live["stderr"]
    assert "***" in live["stderr"]
    stored = json.loads(rt.executions.get("e1").request)
    assert stored["secret_parameters"] == {"API_TOKEN": "***", "PIN": "***"}
    [spec] = created_specs(engine)
    assert spec.environment["API_TOKEN"] == "tok-123456"  # the tool itself gets it


@pytest.mark.parametrize("secret", ["pässwörd-1", 'pa"ss-word'])
def test_secrets_with_characters_json_escapes_are_redacted_from_the_result(rt, engine, secret):
    runs(engine, stdout=json.dumps({"echo": secret}, ensure_ascii=False).encode() + b"\n")

    result = run_execution(rt, make_request(secret_parameters={"S": secret}), "e1")

    assert result.result == {"echo": "***"}


# -- images --------------------------------------------------------------------------------


def test_a_missing_image_that_cannot_be_pulled_is_an_error_naming_it(rt, engine):
    result = run_execution(rt, make_request(image="nope:1.0"), "e1")

    assert result.status == "error"
    assert "'nope:1.0'" in result.error
    assert "is not on host h1 and could not be pulled" in result.error
    assert "pull access denied" in result.error  # the engine's own reason
    assert engine.called("pull_image") == [("nope:1.0",)]
    assert engine.called("create_container") == []
    assert rt.executions.inflight() == []


def test_a_missing_image_is_pulled_once_then_run(rt, engine):
    engine.registry["alpine:3.20"] = FakeProgram(stdout=b"from alpine\n")
    progress = Recorder()

    result = run_execution(rt, make_request(image="alpine:3.20"), "e1", progress=progress)

    assert result.status == "succeeded"
    assert result.stdout == "from alpine\n"
    assert engine.called("pull_image") == [("alpine:3.20",)]
    assert created_specs(engine)[0].image == "alpine:3.20"
    assert [state for state, _ in progress.calls] == ["PULLING", "RUNNING"]


def test_an_image_created_from_lately_is_not_looked_up_again(rt, engine):
    runs(engine, stdout=b"hi\n")

    first = run_execution(rt, make_request(), "e1")
    second = run_execution(rt, make_request(), "e2")

    assert first.status == second.status == "succeeded"
    assert engine.called("inspect_image") == [("busybox:latest",)]  # the first run's only
    used = last_used(rt.redis, rt.host_name)["busybox:latest"]
    assert used >= time.time() - 5  # each use still recorded


def test_an_image_removed_since_it_was_seen_is_pulled_again_then_run(rt, engine):
    runs(engine, stdout=b"hi\n")
    assert run_execution(rt, make_request(), "e1").status == "succeeded"
    rt.pool.drain()  # the removal queued behind the run
    engine.remove_image("busybox:latest")
    engine.registry["busybox:latest"] = FakeProgram(stdout=b"pulled\n")
    progress = Recorder()

    result = run_execution(rt, make_request(), "e2", progress=progress)

    assert result.status == "succeeded"
    assert result.stdout == "pulled\n"
    assert engine.called("pull_image") == [("busybox:latest",)]
    assert [state for state, _ in progress.calls] == ["PULLING", "RUNNING"]
    rt.pool.drain()  # the removal queued behind the run
    assert list(engine.containers) == []


def test_an_image_seen_long_ago_is_looked_up_again(rt, engine):
    runs(engine, stdout=b"hi\n")
    now = [0.0]
    rt.images = RecentImages(ttl_seconds=60, clock=lambda: now[0])

    run_execution(rt, make_request(), "e1")
    now[0] = 59.0
    run_execution(rt, make_request(), "e2")
    now[0] = 119.5  # 60.5 s after e2's create, which counted as a sighting
    run_execution(rt, make_request(), "e3")

    assert len(engine.called("inspect_image")) == 2  # e1's and e3's


def test_an_unreachable_engine_raises_for_a_retry_and_frees_the_lease(rt, engine):
    engine.fail_next("wait_container", DockerUnavailable("wait: Docker engine unreachable"))

    with pytest.raises(DockerUnavailable):
        run_execution(rt, make_request(), "e1")

    assert rt.leases.holder("e1") is None
    assert rt.executions.result("e1") is None
    assert rt.executions.inflight() == []  # the retry registers it again; no reaper re-run


def test_a_wait_slice_that_ends_before_the_exit_only_ends_that_slice(rt, engine):
    runs(engine, run_seconds=0.3, stdout=b"late\n")

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert result.stdout == "late\n"
    slices = engine.called("wait_container")
    assert len(slices) >= 3  # 0.05 s slices over 0.3 s
    assert all(seconds <= SETTINGS.wait_slice_seconds for _, seconds in slices)


def test_limits_above_the_server_maximum_are_refused_before_anything_starts(rt, engine):
    with pytest.raises(LimitExceeded, match="timeout_seconds"):
        run_execution(rt, make_request(timeout_seconds=99_999), "e1")

    assert engine.called("create_container") == []
    assert rt.leases.holder("e1") is None
    assert rt.executions.inflight() == []


# -- output ---------------------------------------------------------------------------------


class BrokenStream:
    """A follow stream whose connection breaks after the first line of output."""

    def __init__(self, inner: Stream[Chunk]) -> None:
        self.inner = inner

    def __iter__(self) -> Iterator[Chunk]:
        for number, chunk in self.inner:
            yield number, chunk.splitlines(keepends=True)[0]
            raise DockerUnavailable(f"read logs of {NAME}: Connection broken: IncompleteRead")

    def close(self) -> None:
        self.inner.close()


def break_follow_streams(engine: FakeEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    follow = engine.follow_output
    monkeypatch.setattr(engine, "follow_output", lambda ref: BrokenStream(follow(ref)))


def test_when_a_follow_stream_breaks_the_output_is_read_from_the_engine_log(
    rt, redis, engine, monkeypatch
):
    runs(engine, stdout=b'line 1\nline 2\n{"done": true}\n', run_seconds=0.1)
    break_follow_streams(engine, monkeypatch)

    result = run_execution(rt, make_request(), "e1")

    assert result.status == "succeeded"
    assert result.stdout == 'line 1\nline 2\n{"done": true}\n'
    assert result.result == {"done": True}
    assert (NAME, False) in engine.called("container_logs")  # read again, not followed
    assert read_live(redis, "e1")["stdout"] == "line 1\n"  # live output got what it saw


def test_output_above_the_cap_keeps_head_and_tail_and_is_flagged(rt, engine):
    cap = SETTINGS.log_cap_bytes
    runs(engine, stdout=b"H" * cap + b"M" * cap + b"T" * cap)

    result = run_execution(rt, make_request(), "e1")

    assert result.stdout_truncated is True
    assert result.stdout.startswith("H" * 100)
    assert result.stdout.endswith("T" * 100)
    assert "bytes truncated" in result.stdout
    assert not result.stderr_truncated


# -- registry ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("program", "status"),
    [
        ({}, "succeeded"),
        ({"exit_code": 1}, "failed"),
        ({"exit_code": 137, "oom_killed": True}, "oom_killed"),
    ],
)
def test_after_a_run_nothing_is_in_flight_and_the_metrics_count_it(
    rt, redis, engine, program, status
):
    runs(engine, **program)

    result = run_execution(rt, make_request(), "e1")

    assert result.status == status
    assert rt.executions.inflight() == []
    assert rt.executions.get("e1").state == "finished"
    assert rt.executions.result("e1") == result
    assert redis.hget(keys.METRICS_BY_STATUS, status) == b"1"
    assert redis.hget(keys.METRICS_BY_TOOL, "echo") == b"1"
    assert redis.llen(keys.METRICS_DURATIONS) == 1
    assert rt.leases.holder("e1") is None
    assert rt.leases.held == frozenset()


def test_two_runs_add_up_in_the_metrics(rt, redis, engine):
    run_execution(rt, make_request(), "e1")
    runs(engine, exit_code=2)
    run_execution(rt, make_request(), "e2")
    run_execution(rt, make_request(), "e3")

    assert redis.hgetall(keys.METRICS_BY_STATUS) == {b"succeeded": b"1", b"failed": b"2"}
    assert redis.hget(keys.METRICS_BY_TOOL, "echo") == b"3"


# -- the warm pool: runs with exec in containers started ahead of time ----------------------

POOL_IMAGE = "tool:1"
POOL_LIMITS = {"memory_mb": 96, "cpu_limit": 0.5}
POOL_SETTINGS = Settings.from_env(
    {"ORCHESTRATOR_POOL": json.dumps([{"image": POOL_IMAGE, "size": 2, **POOL_LIMITS}])},
    host_name="h1",
    wait_slice_seconds=0.05,
    lease_seconds=5,
)


class Execs:
    """What the tool does when exec'd in a pool container; records each exec's spec."""

    def __init__(self, result: FakeExec | None = None) -> None:
        self.result = result or FakeExec()
        self.specs: list[ExecSpec] = []

    def __call__(self, spec: ExecSpec) -> FakeExec:
        self.specs.append(spec)
        return self.result


@pytest.fixture
def execs() -> Execs:
    return Execs()


@pytest.fixture
def pool_rt(redis, engine, execs) -> Iterator[Runtime]:
    """A runtime with a pool of two idle containers of ``tool:1``."""
    # A pool container runs the idle script until it is stopped; the tool runs with exec.
    engine.add_image(POOL_IMAGE, FakeProgram(run_seconds=None, on_exec=execs))
    rt = Runtime(POOL_SETTINGS, redis, engine=engine, enqueue=Recorder())
    assert rt.pool.refill() == 2
    yield rt
    rt.pool.drain()


def pooled_request(**overrides: Any) -> ToolExecutionRequest:
    limits = {**POOL_LIMITS, **overrides.pop("limits", {})}
    return make_request(image=POOL_IMAGE, resource_limits=limits, **overrides)


def idle_pool(rt: Runtime) -> set[str]:
    [spec] = rt.settings.pool
    return {m.decode() for m in rt.redis.smembers(keys.pool("h1", spec.key))}


def exec_refs(engine: FakeEngine) -> list[str]:
    """The containers pool agents were given a tool run in."""
    return [ref for ref, _ in engine.called("run_attached")]


def settle(rt: Runtime) -> None:
    """Let the background discards finish (and empty the pool)."""
    rt.pool.drain()


def test_refill_starts_sandboxed_idle_pool_containers(pool_rt, engine):
    specs = created_specs(engine)

    assert len(specs) == 2
    for spec in specs:
        assert spec.name.startswith("orch-pool-")
        assert spec.image == POOL_IMAGE
        assert spec.entrypoint == AGENT_ENTRYPOINT and spec.stdin_open
        assert spec.network == "none"
        assert (spec.memory_mb, spec.cpu_limit) == (96, 0.5)
        assert spec.cap_drop == ("ALL",)
        assert spec.labels["orchestrator.kind"] == "pool"
        assert spec.labels["orchestrator.host"] == "h1"
        assert float(spec.labels["orchestrator.deadline"]) > time.time()
    running = {c.id for c in engine.list_containers(["orchestrator.kind=pool"]) if c.running}
    assert idle_pool(pool_rt) == running
    assert len(running) == 2


def test_drain_removes_every_idle_pool_container(pool_rt, engine):
    assert pool_rt.pool.drain() == 2

    assert engine.containers == {}
    assert idle_pool(pool_rt) == set()


def test_a_matching_run_execs_the_tool_in_a_pool_container_then_discards_it(
    pool_rt, redis, engine, execs
):
    execs.result = FakeExec(stdout=b'{"who": "pool"}\n', stderr=b"err\n")
    idle = idle_pool(pool_rt)
    progress = Recorder()

    result = run_execution(
        pool_rt, pooled_request(parameters={"WHO": "pool"}), "e1", progress=progress
    )

    assert result.status == "succeeded"
    assert result.exit_code == 0
    assert result.result == {"who": "pool"}
    assert (result.stdout, result.stderr) == ('{"who": "pool"}\n', "err\n")
    assert result.container_id in idle  # it ran in a container made ahead of time
    assert result.started_at is not None and result.finished_at >= result.started_at
    [spec] = execs.specs
    assert spec.argv == ("sh", "-c", "echo hi")
    assert spec.environment == {"WHO": "pool"}
    assert exec_refs(engine) == [result.container_id]
    assert tool_specs(engine) == []  # no cold container
    assert progress.calls == [
        ("RUNNING", {"host": "h1", "container_id": result.container_id, "tool_name": "echo"})
    ]
    entry = pool_rt.executions.get("e1")
    assert (entry.pooled, entry.container_id) == (True, result.container_id)
    assert read_live(redis, "e1") == {"stdout": '{"who": "pool"}\n', "stderr": "err\n"}
    settle(pool_rt)
    assert engine.find_container(result.container_id) is None  # used once, then discarded


def test_each_pooled_run_gets_a_container_of_its_own(pool_rt, engine):
    first = run_execution(pool_rt, pooled_request(), "e1")
    second = run_execution(pool_rt, pooled_request(), "e2")

    assert first.status == second.status == "succeeded"
    assert first.container_id != second.container_id
    assert exec_refs(engine) == [first.container_id, second.container_id]


def test_a_pooled_run_without_a_command_execs_the_images_entrypoint_and_cmd(pool_rt, engine, execs):
    image = engine.images[POOL_IMAGE]
    engine.images[POOL_IMAGE] = replace(image, entrypoint=("/bin/tool",), cmd=("--fast",))

    result = run_execution(pool_rt, pooled_request(command=None), "e1")

    assert result.status == "succeeded"
    assert [spec.argv for spec in execs.specs] == [("/bin/tool", "--fast")]
    assert (POOL_IMAGE,) in engine.called("inspect_image")


def test_a_pooled_run_that_fails_reports_its_exit_code_and_output(pool_rt, engine, execs):
    execs.result = FakeExec(stderr=b"bad\n", exit_code=5)

    result = run_execution(pool_rt, pooled_request(), "e1")

    assert (result.status, result.exit_code, result.stderr) == ("failed", 5, "bad\n")
    assert result.error == "exited with code 5"
    assert (result.container_id,) in engine.called("inspect_container")  # was it OOM?


def test_a_pooled_run_past_its_timeout_is_killed_with_its_container(pool_rt, engine, execs):
    execs.result = FakeExec(stdout=b"begun\n", run_seconds=60)
    begin = time.monotonic()

    result = run_execution(pool_rt, pooled_request(limits={"timeout_seconds": 1}), "e1")

    assert 0.9 <= time.monotonic() - begin < 3
    assert result.status == "timed_out"
    assert "1 s timeout" in result.error
    assert result.stdout == "begun\n"
    assert (result.container_id, "SIGKILL") in engine.called("kill_container")


def test_a_pooled_run_is_cancelled_by_killing_its_container(pool_rt, engine, execs):
    execs.result = FakeExec(run_seconds=60)
    cancel_later(pool_rt, "e1", 0.2)
    begin = time.monotonic()

    result = run_execution(pool_rt, pooled_request(limits={"timeout_seconds": 60}), "e1")

    assert time.monotonic() - begin < 1.2
    assert (result.status, result.error) == ("cancelled", "cancelled by request")
    assert (result.container_id, "SIGKILL") in engine.called("kill_container")


def test_a_pooled_run_whose_container_is_oom_killed_is_oom_killed(redis, engine, execs):
    # The container (its cgroup) is OOM-killed 0.5 s after it started, while the exec runs.
    engine.add_image(
        POOL_IMAGE, FakeProgram(run_seconds=0.5, exit_code=137, oom_killed=True, on_exec=execs)
    )
    execs.result = FakeExec(run_seconds=10)
    # The fake notices a container's own end when it is looked at: the stats stream does.
    engine.stats_interval_seconds = 0.05
    rt = Runtime(POOL_SETTINGS, redis, engine=engine)
    rt.pool.refill()

    result = run_execution(rt, pooled_request(), "e1")

    assert result.status == "oom_killed"
    assert result.exit_code == 137
    assert "96 MB" in result.error
    settle(rt)


def test_secrets_reach_the_exec_but_never_its_result_or_live_log(pool_rt, redis, engine, execs):
    execs.result = FakeExec(stdout=b"token tok-123456\n")

    result = run_execution(pool_rt, pooled_request(secret_parameters={"T": "tok-123456"}), "e1")

    assert execs.specs[0].environment == {"T": "tok-123456"}
    assert result.stdout == "token ***\n"
    assert "tok-123456" not in read_live(redis, "e1")["stdout"]


def test_a_pool_container_that_died_while_idle_is_discarded_and_the_run_goes_cold(pool_rt, engine):
    idle = idle_pool(pool_rt)
    for container_id in idle:
        engine.kill_container(container_id)
    runs_cold = FakeProgram(stdout=b"cold\n", on_exec=lambda spec: FakeExec())
    engine.add_image(POOL_IMAGE, runs_cold)

    result = run_execution(pool_rt, pooled_request(), "e1")

    assert result.status == "succeeded"
    assert result.stdout == "cold\n"
    assert result.container_id not in idle
    [taken] = exec_refs(engine)  # the exec failed: the container was not running
    assert taken in idle
    [spec] = tool_specs(engine)
    assert spec.name == NAME
    assert not pool_rt.executions.get("e1").pooled
    settle(pool_rt)
    assert engine.find_container(taken) is None


def wait_removed(engine: FakeEngine, container_id: str, within: float) -> float:
    """Seconds until ``container_id`` is gone (by the pool's background remover)."""
    started = time.monotonic()
    while engine.find_container(container_id) is not None:
        assert time.monotonic() - started < within, f"{container_id} was not removed"
        time.sleep(0.01)
    return time.monotonic() - started


def test_a_used_pool_container_is_removed_in_the_background(pool_rt, engine):
    result = run_execution(pool_rt, pooled_request(), "e1")

    assert result.status == "succeeded"
    wait_removed(engine, result.container_id, within=2)  # no drain: the remover did it


def test_a_pool_container_whose_agent_never_got_the_tool_is_removed_without_waiting(
    pool_rt, engine
):
    idle = idle_pool(pool_rt)
    engine.add_image(POOL_IMAGE, FakeProgram(stdout=b"cold\n", on_exec=lambda spec: FakeExec()))
    # the agent's line cannot carry this name: refused before anything ran, the run goes cold
    result = run_execution(pool_rt, pooled_request(parameters={"_oa_x": "1"}), "e1")

    assert (result.status, result.stdout) == ("succeeded", "cold\n")
    [taken] = exec_refs(engine)
    assert taken in idle and result.container_id not in idle
    assert wait_removed(engine, taken, within=1.5) < 1.5  # no wait for it to exit


def test_a_sizing_round_drops_idle_containers_that_died_and_refills(pool_rt, engine):
    idle = idle_pool(pool_rt)
    dead = next(iter(idle))
    engine.kill_container(dead)
    pool_rt.pool._next_sweep = 0.0  # the fixture's refill swept a moment ago

    made = pool_rt.pool.size_pools().made

    assert made == 1
    after = idle_pool(pool_rt)
    assert dead not in after and len(after) == 2 and idle - {dead} <= after
    settle(pool_rt)
    assert engine.find_container(dead) is None  # removed behind the runs
    # the sweep runs at most every DEAD_SWEEP_SECONDS: the next round lists nothing
    listed = len(engine.called("list_containers"))
    pool_rt.pool.size_pools()
    assert len(engine.called("list_containers")) == listed


def test_a_pool_whose_containers_cannot_idle_backs_off_instead_of_remaking_them(
    redis, engine, execs
):
    # an image without sh: the agent never starts, each container exits 127 at once
    engine.add_image(POOL_IMAGE, FakeProgram(run_seconds=0.0, exit_code=127, on_exec=execs))
    rt = Runtime(POOL_SETTINGS, redis, engine=engine, enqueue=Recorder())
    assert rt.pool.refill() == 2
    rt.pool._next_sweep = 0.0

    again = rt.pool.size_pools()

    assert again.made == 0  # dropped, and no new ones for a while
    assert idle_pool(rt) == set()
    result = run_execution(rt, pooled_request(), "e1")  # runs cold meanwhile
    assert result.status == "failed" and result.exit_code == 127
    settle(rt)


def test_an_engine_error_after_the_exec_started_is_an_error_never_a_cold_rerun(
    pool_rt, engine, execs
):
    def exec_then_vanish(spec: ExecSpec) -> FakeExec:
        # Its container vanishes once the tool ran: the OOM check cannot inspect it.
        engine.fail_next("inspect_container", ContainerNotFound("No such container: gone"))
        return FakeExec(exit_code=3)

    engine.program_of(POOL_IMAGE).on_exec = exec_then_vanish

    # (A short timeout: a cold re-run, which must not happen, would idle until it.)
    result = run_execution(pool_rt, pooled_request(limits={"timeout_seconds": 2}), "e1")

    assert result.status == "error"
    assert result.error == "No such container: gone"
    assert len(exec_refs(engine)) == 1
    assert tool_specs(engine) == []  # the tool ran once: at most once
    assert pool_rt.executions.get("e1").pooled


def test_a_redelivered_pooled_run_is_never_run_again(pool_rt, engine):
    request = pooled_request()
    taken = pool_rt.pool.take(request)  # as the worker that died did
    pool_rt.executions.start("e1", {"request": request.redacted()})
    pool_rt.executions.update("e1", container_id=taken, pooled="1")

    result = run_execution(pool_rt, request, "e1", requeued=True)

    assert result.status == "error"
    assert "at most once" in result.error
    assert exec_refs(engine) == []
    assert tool_specs(engine) == []
    settle(pool_rt)
    assert engine.find_container(taken) is None


def test_a_pooled_run_gets_its_stdin_after_the_agents_line(pool_rt, engine, execs):
    execs.result = FakeExec(stdout=b"read\n")
    idle = idle_pool(pool_rt)

    result = run_execution(pool_rt, pooled_request(stdin="line one\nüñï\n"), "e1")

    assert result.container_id in idle and result.stdout == "read\n"
    assert execs.specs[0].stdin == "line one\nüñï\n".encode()


def test_a_pooled_run_gets_its_files_and_its_outputs_are_collected(pool_rt, engine, execs):
    execs.result = FakeExec(stdout=b"ok\n")
    idle = idle_pool(pool_rt)
    request = pooled_request(
        files=[FileContent.of("/in/data.txt", b"input bytes", mode=0o640)],
        collect=["/in/data.txt", "/out/missing"],
    )

    result = run_execution(pool_rt, request, "e1")

    assert result.container_id in idle and result.status == "succeeded"
    [(ref, path)] = engine.called("put_archive")
    assert ref == result.container_id  # into the idle container, before the tool
    [got] = result.files
    assert (got.path, got.data(), got.mode) == ("/in/data.txt", b"input bytes", 0o640)
    assert result.missing_files == ["/out/missing"]
    settle(pool_rt)


def test_requests_that_do_not_match_the_pool_run_cold(pool_rt, engine):
    idle = idle_pool(pool_rt)
    engine.add_image(POOL_IMAGE, FakeProgram(stdout=b"cold\n"))

    other = run_execution(pool_rt, pooled_request(limits={"memory_mb": 64}), "e1")

    assert other.stdout == "cold\n"
    assert other.container_id not in idle
    assert exec_refs(engine) == []
    assert idle_pool(pool_rt) == idle


def test_a_run_that_keeps_its_container_never_uses_the_pool(pool_rt, engine):
    idle = idle_pool(pool_rt)
    engine.add_image(POOL_IMAGE, FakeProgram(stdout=b"kept\n"))

    result = run_execution(pool_rt, pooled_request(cleanup=False), "e1")

    assert result.stdout == "kept\n"
    assert exec_refs(engine) == []
    assert engine.inspect_container(NAME).id == result.container_id
    assert idle_pool(pool_rt) == idle


@pytest.mark.parametrize(
    ("command", "entrypoint", "cmd", "argv"),
    [
        ("echo 'a b' c", (), (), ["echo", "a b", "c"]),
        (["python", "-c", "print(1)"], ("/ignored",), (), ["python", "-c", "print(1)"]),
        (None, ("/bin/tool",), ("--fast",), ["/bin/tool", "--fast"]),
        (None, (), ("sh",), ["sh"]),
    ],
)
def test_the_exec_argv_is_the_command_else_the_images_entrypoint_and_cmd(
    engine, command, entrypoint, cmd, argv
):
    image = replace(engine.inspect_image("busybox:latest"), entrypoint=entrypoint, cmd=cmd)

    assert exec_command(command, image) == argv
