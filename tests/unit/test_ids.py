"""One id rule for every id that can reach a Docker name or an engine API path, applied at
every task boundary (Celery task ids included), and a tool run that never adopts a
container it did not make."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from orchestrator.core.specs import labels
from orchestrator.core.types import ContainerSpec
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import Forbidden, InvalidRequest
from orchestrator.models import ToolExecutionRequest, check_identifier
from orchestrator.protocol import CONTAINER_REF_MAX_LENGTH, is_valid_id, validate_id
from orchestrator.settings import Settings
from orchestrator.worker.execution import run_execution
from orchestrator.worker.runtime import Runtime
from tasks import cleanup, relics, runtime, sessions, stats, tools

GOOD_IDS = [
    str(uuid.uuid4()),
    "a",
    "7",
    "A.b_c-d",
    "x" * 64,
    "a..b",  # no slash: it cannot walk anywhere
    "orch-tool-victim",
]
BAD_IDS = [
    "",
    "x/../victim",
    "../../images/busybox",
    "a/b",
    "a\\b",
    "-a",
    ".a",
    "_a",
    "..",
    "a b",
    "a\n",
    "a\x00b",
    "a%2Fb",
    "a:b",
    "a@b",
    "a?b",
    "a#b",
    "é",
    "x" * 65,
    None,
    5,
    ["a"],
    {"a": 1},
]


@pytest.mark.parametrize("value", GOOD_IDS)
def test_a_well_formed_id_passes_unchanged(value):
    assert validate_id("relic_id", value) == value
    assert is_valid_id(value)


@pytest.mark.parametrize("value", BAD_IDS, ids=repr)
def test_anything_else_is_refused_naming_the_field_and_the_rule(value):
    with pytest.raises(InvalidRequest) as info:
        validate_id("execution_id", value)

    assert str(info.value).startswith("execution_id: must be 1 to 64 letters, digits")
    assert not is_valid_id(value)


def test_a_container_reference_may_be_longer_with_the_same_alphabet():
    long_name = "orch-relic-64-" + "s" * 64 + "-" + "r" * 64

    assert validate_id("container", long_name, max_length=CONTAINER_REF_MAX_LENGTH)
    with pytest.raises(InvalidRequest, match="^container: must be 1 to 255"):
        validate_id("container", "x/" + long_name, max_length=CONTAINER_REF_MAX_LENGTH)


def test_an_error_message_shows_a_long_value_truncated():
    with pytest.raises(InvalidRequest) as info:
        validate_id("session_id", "/" * 10_000)

    assert len(str(info.value)) < 250


@pytest.mark.parametrize("value", GOOD_IDS + [v for v in BAD_IDS if isinstance(v, str)], ids=repr)
def test_the_request_models_and_bare_arguments_follow_the_same_rule(value):
    try:
        ToolExecutionRequest(session_id=value, tool_name=value, image="busybox")
        model_ok = True
    except ValidationError:
        model_ok = False
    try:
        check_identifier(value, "session_id")
        bare_ok = True
    except InvalidRequest:
        bare_ok = False

    assert model_ok == bare_ok == is_valid_id(value)


# -- at every task boundary, before anything is touched --------------------------------------------


@pytest.fixture
def rt(redis, engine) -> Iterator[Runtime]:
    made = Runtime(Settings(host_name="h1"), redis, engine=engine)
    runtime.reset_runtime(made)
    yield made
    runtime.reset_runtime(None)


TOOL = {"tool_name": "t", "session_id": "s1", "image": "busybox:latest", "command": ["true"]}
RELIC = {"relic_name": "db", "session_id": "s1", "image": "busybox:latest"}
WALK = "x/../orch-tool-victim"


def report(session_id: Any) -> dict[str, Any]:
    counts = {"containers_removed": 0, "networks_removed": 0, "volumes_removed": 0}
    flags = {"force": True, "keep_volumes": False}
    return {"session_id": session_id, "host": "h1", **flags, **counts, "errors": []}


# (case, task, args, task id (None: a fresh one), the field the refusal names)
BOUNDARIES: list[tuple[str, Any, list[Any], str | None, str]] = [
    ("execute_task_id", tools.execute, [TOOL], WALK, "execution_id"),
    ("execute_images", tools.execute, [TOOL], "../../images/busybox", "execution_id"),
    ("cancel", tools.cancel, [WALK], None, "execution_id"),
    ("relic_start_task_id", relics.start, [RELIC], WALK, "relic_id"),
    ("relic_info", relics.info, [WALK], None, "relic_id"),
    ("relic_stop", relics.stop, [WALK], None, "relic_id"),
    ("relic_remove", relics.remove, [WALK], None, "relic_id"),
    ("relic_list", relics.list_relics, ["../s1"], None, "session_id"),
    ("relic_list_host", relics.list_host, ["../s1"], None, "session_id"),
    ("stats_container", stats.container, ["../orch-tool-victim"], None, "container"),
    ("stats_container_images", stats.container, ["../../images/busybox"], None, "container"),
    ("cleanup_session", cleanup.session, ["s1/../s2"], None, "session_id"),
    ("cleanup_stop", cleanup.stop_containers, ["s1/..", True, False], None, "session_id"),
    ("cleanup_remove", cleanup.remove_containers, [report("a/b")], None, "report.session_id"),
    ("cleanup_volumes", cleanup.remove_volumes, [report("a b")], None, "report.session_id"),
    ("cleanup_network", cleanup.remove_network, [report(None)], None, "report.session_id"),
    ("cleanup_report_shape", cleanup.remove_network, ["s1"], None, "report"),
    ("cleanup_merge", cleanup.merge, [[], "../s1", []], None, "session_id"),
    ("touch", sessions.touch, ["s1/../s2"], None, "session_id"),
]


@pytest.mark.parametrize(
    ("case", "task", "args", "task_id", "field"), BOUNDARIES, ids=[b[0] for b in BOUNDARIES]
)
def test_a_bad_id_is_refused_at_the_task_boundary_and_nothing_is_touched(
    rt, engine, redis, case, task, args, task_id, field
):
    outcome = task.apply(args=args, task_id=task_id or str(uuid.uuid4()))

    assert outcome.failed()
    assert isinstance(outcome.result, InvalidRequest), outcome.result
    assert str(outcome.result).startswith(f"{field}: "), str(outcome.result)
    assert engine.calls == []
    assert redis.dbsize() == 0


def test_a_good_task_id_runs(rt, engine):
    outcome = tools.execute.apply(args=[TOOL], task_id="run-1")

    assert outcome.successful(), outcome.result
    assert outcome.result["status"] == "succeeded"


# -- a tool run never adopts a container it did not make -------------------------------------------


def victim(engine: FakeEngine, name: str, **label_values: str) -> str:
    engine.add_image("victim:1", FakeProgram(run_seconds=None))
    container = engine.create_container(
        ContainerSpec(name=name, image="victim:1", labels=label_values)
    )
    engine.start_container(container.id)
    engine.calls.clear()
    return container.id


OTHER_RUN = labels("tool", "s1", 0, "h1", execution="other")
STRANGERS = [
    ("unmanaged", {}),
    ("another_execution", OTHER_RUN),
    ("a_relic", labels("relic", "s1", 0, "h1", relic="victim-1")),
    ("forged_managed_only", {"orchestrator.managed": "true"}),
]


@pytest.mark.parametrize(("case", "label_values"), STRANGERS, ids=[s[0] for s in STRANGERS])
def test_a_container_that_only_has_the_runs_name_is_refused_untouched(
    rt, engine, case, label_values
):
    container_id = victim(engine, "orch-tool-victim-1", **label_values)
    request = ToolExecutionRequest(**TOOL)

    with pytest.raises(Forbidden, match=r"^execution_id: 'victim-1' would run in container"):
        run_execution(rt, request, "victim-1")

    # Looking is all it does: the image and the name are checked, a create is refused.
    touched = [c for c, _ in engine.calls if c not in ("inspect_container", "inspect_image")]
    assert touched == ["create_container"]
    assert list(engine.containers) == [container_id]
    assert engine.inspect_container(container_id).running


def test_a_name_conflict_with_a_stranger_on_create_is_refused_untouched(rt, engine, monkeypatch):
    create = engine.create_container

    def stranger_wins(spec: ContainerSpec) -> Any:
        monkeypatch.undo()
        victim(engine, spec.name)  # an unmanaged container takes the name meanwhile
        return create(spec)

    monkeypatch.setattr(engine, "create_container", stranger_wins)

    with pytest.raises(Forbidden, match="is not this execution's"):
        run_execution(rt, ToolExecutionRequest(**TOOL), "e1")

    assert engine.inspect_container("orch-tool-e1").running
    assert engine.called("remove_container") == engine.called("kill_container") == []
