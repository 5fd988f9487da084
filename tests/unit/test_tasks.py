"""The Celery task adapters in ``tasks/`` (tool runs, cancel, relic start), without a broker:
``task.apply()`` runs them eagerly on a Runtime of fakeredis and the in-memory engine,
injected with :func:`tasks.runtime.reset_runtime`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Ignore

from orchestrator.engine.fake import FakeEngine
from orchestrator.errors import InvalidRequest
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.worker.runtime import Runtime
from tasks import relics as relic_tasks
from tasks import runtime as task_runtime
from tasks import tools as tool_tasks

SETTINGS = Settings.from_env({}, host_name="h1", wait_slice_seconds=0.05, lease_seconds=5)


@pytest.fixture(autouse=True)
def app() -> Iterator[Celery]:
    """An in-memory Celery app the shared tasks bind to: no broker, no result backend."""
    celery = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=True)
    celery.conf.task_store_eager_result = False
    yield celery
    celery.close()


@pytest.fixture
def rt(redis: Any, engine: FakeEngine) -> Iterator[Runtime]:
    runtime = Runtime(SETTINGS, redis, engine=engine, enqueue=lambda *args: None)
    task_runtime.reset_runtime(runtime)
    yield runtime
    task_runtime.reset_runtime(None)


def request(**overrides: Any) -> dict[str, Any]:
    return {
        "tool_name": "t",
        "session_id": "s1",
        "image": "busybox:latest",
        "command": ["sh", "-c", "echo hi"],
        **overrides,
    }


def test_a_tool_run_returns_the_result_of_the_execution(rt: Runtime, engine: FakeEngine) -> None:
    outcome = tool_tasks.execute.apply(args=[request()], task_id="e1")
    assert outcome.successful(), outcome.traceback
    result = outcome.get()
    assert result["execution_id"] == "e1"
    assert result["status"] == "succeeded"
    assert result["host"] == "h1"
    rt.pool.drain()  # the removal queued behind the run
    assert engine.containers == {}  # removed after the run (cleanup defaults to true)


def test_the_request_may_come_as_keyword_fields(rt: Runtime) -> None:
    outcome = tool_tasks.execute.apply(kwargs=request(), task_id="e2")
    assert outcome.get()["status"] == "succeeded"


@pytest.mark.parametrize(
    "bad",
    [
        {"tool_name": "t"},  # most fields missing
        request(unknown_field=1),  # extra="forbid"
        request(image=["busybox"]),  # wrong type
        "not a request",
    ],
)
def test_a_request_that_does_not_parse_is_an_invalid_request(rt: Runtime, bad: Any) -> None:
    outcome = tool_tasks.execute.apply(args=[bad], task_id="e3")
    assert outcome.failed()
    assert isinstance(outcome.result, InvalidRequest), outcome.result


def test_an_execution_id_that_is_not_a_valid_id_is_refused(rt: Runtime) -> None:
    outcome = tool_tasks.execute.apply(args=[request()], task_id="../../etc")
    assert outcome.failed()
    assert isinstance(outcome.result, InvalidRequest), outcome.result


def test_a_second_delivery_while_another_worker_holds_the_lease_is_ignored(
    rt: Runtime, engine: FakeEngine
) -> None:
    assert rt.leases.acquire("e4")  # the first delivery runs it right now
    outcome = tool_tasks.execute.apply(args=[request()], task_id="e4")
    assert outcome.state == "IGNORED", (outcome.state, outcome.result)
    assert engine.called("create_container") == []  # nothing was started


def test_the_ignore_path_raises_ignore_and_returns_no_result(rt: Runtime) -> None:
    """`raise Ignore()` matters: a returned value would be stored over the real result."""
    assert rt.leases.acquire("e5")
    task = tool_tasks.execute
    with pytest.raises(Ignore):
        tool_tasks._execute(_FakeTask(task, "e5"), request(), False)


class _FakeTask:
    """What the adapters use of a bound task: its request id, progress and replace."""

    def __init__(self, task: Any, task_id: str) -> None:
        self.task = task
        self.request = type("R", (), {"id": task_id})()
        self.replaced: list[Any] = []
        self.states: list[str] = []

    def update_state(self, state: str, meta: dict[str, Any]) -> None:
        self.states.append(state)

    def signature(self, args: Any, kwargs: Any) -> Any:
        return self.task.signature(args=args, kwargs=kwargs)

    def replace(self, signature: Any) -> Exception:
        self.replaced.append(signature)
        return Ignore("replaced")


def owned_by_h2(rt: Runtime, session_id: str) -> None:
    rt.redis.set(keys.session_owner(session_id), "h2")
    rt.hosts.beat("h2", {})


def test_a_session_run_on_the_wrong_host_replaces_itself_onto_the_owner_queue(
    rt: Runtime, engine: FakeEngine
) -> None:
    owned_by_h2(rt, "s1")
    fake = _FakeTask(tool_tasks.execute, "e6")
    with pytest.raises(Ignore):
        tool_tasks._execute(fake, request(network_mode="session"), False)
    [signature] = fake.replaced
    assert signature.options["queue"] == "host.h2"
    assert signature.task == "orchestrator.tools.execute"
    assert signature.args[0]["session_id"] == "s1"
    assert signature.kwargs == {"requeued": False}
    assert engine.called("create_container") == []  # nothing ran here


def test_a_session_run_for_a_host_without_a_live_worker_fails_clearly(rt: Runtime) -> None:
    rt.redis.set(keys.session_owner("s1"), "gone")
    outcome = tool_tasks.execute.apply(args=[request(network_mode="session")], task_id="e7")
    assert outcome.failed()
    assert "no live worker" in str(outcome.result)


def test_a_run_that_finished_before_returns_its_stored_result(
    rt: Runtime, engine: FakeEngine
) -> None:
    first = tool_tasks.execute.apply(args=[request()], task_id="e8").get()
    again = tool_tasks.execute.apply(args=[request()], task_id="e8").get()
    assert again == first
    assert len(engine.called("create_container")) == 1  # ran once


def test_cancel_of_a_finished_run_cancels_nothing(rt: Runtime) -> None:
    tool_tasks.execute.apply(args=[request()], task_id="e9").get()
    reply = tool_tasks.cancel.apply(args=["e9"]).get()
    assert reply == {"execution_id": "e9", "cancelled": False, "status": "succeeded"}
    assert not rt.executions.cancel_requested("e9")


def test_cancel_of_an_unknown_run_sets_the_flag_and_revokes(
    rt: Runtime, app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    revoked: list[str] = []
    monkeypatch.setattr(app.control, "revoke", lambda task_id: revoked.append(task_id))
    reply = tool_tasks.cancel.apply(args=["e10"]).get()
    assert reply == {"execution_id": "e10", "cancelled": True, "status": "cancelled"}
    assert rt.executions.cancel_requested("e10")
    assert revoked == ["e10"]


def test_cancel_refuses_an_invalid_execution_id(rt: Runtime) -> None:
    outcome = tool_tasks.cancel.apply(args=["no/such id"])
    assert outcome.failed()
    assert isinstance(outcome.result, InvalidRequest), outcome.result


def test_a_relic_start_that_does_not_parse_is_an_invalid_request(rt: Runtime) -> None:
    outcome = relic_tasks.start.apply(args=[{"relic_name": "x"}], task_id="r1")
    assert outcome.failed()
    assert isinstance(outcome.result, InvalidRequest), outcome.result


def test_arguments_too_big_to_store_with_the_state_are_replaced_by_a_note():
    from tasks.base import STORED_ARGUMENTS_MAX_BYTES, _bounded

    small = ([{"a": 1}], {})
    assert _bounded(*small) == small
    args, kwargs = _bounded([{"environment": {"X": "x" * STORED_ARGUMENTS_MAX_BYTES}}], {})
    assert kwargs == {} and len(args) == 1 and "not stored" in args[0]
