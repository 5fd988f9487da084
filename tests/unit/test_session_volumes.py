"""Named volumes are always the session's own; bind mounts are checked again after the pull or
build, right before the container is created and again before it starts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from orchestrator.core.types import ContainerSpec
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import Forbidden
from orchestrator.models import RelicStartRequest, ToolExecutionRequest
from orchestrator.settings import Settings
from orchestrator.state import keys
from orchestrator.worker import cleanup, execution, health, janitor, networks, relics, volumes
from orchestrator.worker.execution import run_execution
from orchestrator.worker.runtime import Runtime

SESSION_LABELS = {
    "orchestrator.managed": "true",
    "orchestrator.kind": "volume",
    "orchestrator.session": "s1",
    "orchestrator.host": "h1",
    "orchestrator.deadline": "0",
    "orchestrator.volume": "data",
}


@pytest.fixture
def allowed(tmp_path: Path) -> Path:
    root = tmp_path.resolve() / "allowed"
    (root / "work").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s3cr3t")
    return root


@pytest.fixture
def rt(redis, engine: FakeEngine, allowed: Path) -> Runtime:
    engine.add_image("svc:1", FakeProgram(run_seconds=None))
    settings = Settings(
        host_name="h1", wait_slice_seconds=0.05, allowed_volume_roots=[str(allowed)]
    )
    return Runtime(settings, redis, engine=engine)


@pytest.fixture(autouse=True)
def healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "probe", lambda *args, **kwargs: True)


def tool(session_id: str = "s1", *mounts: dict[str, Any]) -> ToolExecutionRequest:
    return ToolExecutionRequest(
        session_id=session_id,
        tool_name="t",
        image="busybox:latest",
        command=["true"],
        volumes=list(mounts),
    )


def relic(*mounts: dict[str, Any]) -> RelicStartRequest:
    return RelicStartRequest(
        session_id="s1",
        relic_name="db",
        image="svc:1",
        volumes=list(mounts),
        health_timeout_seconds=2,
    )


def mounted(engine: FakeEngine) -> list[tuple[str, str]]:
    """(engine source, target) of every mount of every container created."""
    return [
        (m.source, m.target) for (spec,) in engine.called("create_container") for m in spec.mounts
    ]


# -- named volumes -------------------------------------------------------------------------------


def test_a_tools_named_volume_is_the_sessions_own_labelled_and_recorded(rt, engine, redis):
    result = run_execution(rt, tool("s1", {"source": "data", "target": "/d"}), "e1")

    assert result.status == "succeeded"
    assert mounted(engine) == [("orch-vol-2-s1-data", "/d")]
    made = dict(engine.inspect_volume("orch-vol-2-s1-data").labels)
    assert made | SESSION_LABELS == made  # every one of them, whatever else is set
    # known to the registry: cleanup visits this host, the janitor keeps it while it lives
    assert redis.sismember(keys.SESSIONS, "s1")
    assert redis.sismember(keys.session_hosts("s1"), "h1")


def test_the_name_of_a_volume_outside_the_session_gives_the_sessions_own(rt, engine):
    engine.create_volume("redis-data", {})  # compose's, another session's relic, anything

    run_execution(rt, tool("s1", {"source": "redis-data", "target": "/r"}), "e1")

    assert mounted(engine) == [("orch-vol-2-s1-redis-data", "/r")]
    assert dict(engine.inspect_volume("redis-data").labels) == {}


def test_sessions_whose_names_collided_before_get_different_volumes(rt, engine):
    run_execution(rt, tool("a", {"source": "b-data", "target": "/d"}), "e1")
    run_execution(rt, tool("a-b", {"source": "data", "target": "/d"}), "e2")

    [first, second] = mounted(engine)
    assert first[0] != second[0]
    assert engine.inspect_volume(first[0]).labels["orchestrator.session"] == "a"
    assert engine.inspect_volume(second[0]).labels["orchestrator.session"] == "a-b"


@pytest.mark.parametrize(
    "squatter_labels",
    [
        {},
        {**SESSION_LABELS, "orchestrator.session": "other"},
        {**SESSION_LABELS, "orchestrator.volume": "cache"},
        {**SESSION_LABELS, "orchestrator.managed": "false"},
    ],
    ids=["unmanaged", "other_session", "other_volume", "unmanaged_label"],
)
def test_a_volume_squatting_the_sessions_name_is_never_mounted(rt, engine, squatter_labels):
    engine.create_volume("orch-vol-2-s1-data", squatter_labels)

    with pytest.raises(Forbidden, match=r"^volumes\.0\.source: the engine volume"):
        run_execution(rt, tool("s1", {"source": "data", "target": "/d"}), "e1")

    assert engine.called("create_container") == []
    assert dict(engine.inspect_volume("orch-vol-2-s1-data").labels) == squatter_labels


def test_a_volume_made_unlabelled_by_a_racing_creator_is_never_mounted(rt, engine, monkeypatch):
    create = engine.create_volume

    def racer(name: str, labels: Any) -> Any:
        create(name, {})  # someone else wins the race without labels
        return create(name, labels)  # Docker keeps the first labels

    monkeypatch.setattr(engine, "create_volume", racer)

    with pytest.raises(Forbidden, match="is not session 's1'"):
        run_execution(rt, tool("s1", {"source": "data", "target": "/d"}), "e1")

    assert engine.called("create_container") == []


def test_a_tool_uses_the_sessions_volume_of_the_old_naming(rt, engine):
    legacy = {k: v for k, v in SESSION_LABELS.items() if k != "orchestrator.volume"}
    engine.create_volume("orch-s1-data", legacy)

    run_execution(rt, tool("s1", {"source": "data", "target": "/d"}), "e1")

    assert mounted(engine) == [("orch-s1-data", "/d")]


def test_session_cleanup_and_the_janitor_remove_tool_volumes(rt, engine, redis):
    run_execution(rt, tool("s1", {"source": "data", "target": "/d"}), "e1")
    run_execution(rt, tool("s2", {"source": "data", "target": "/d"}), "e2")
    rt.pool.drain()  # the removal queued behind the run

    report = cleanup.remove_volumes(rt, cleanup.new_host_report(rt, "s1", True, False))
    assert report["volumes_removed"] == 1
    assert [v.name for v in engine.list_volumes()] == ["orch-vol-2-s2-data"]

    redis.srem(keys.SESSIONS, "s2")  # the session ended and was forgotten
    janitor.reap_host(rt)
    assert engine.list_volumes() == []


# -- bind mounts: checked again after the pull, before create, before start ----------------------


def swap_for_symlink(directory: Path, target: Path) -> None:
    """What a tool with the allowed root mounted writable could do meanwhile."""
    directory.rmdir()
    os.symlink(target, directory)


def during(owner: Any, name: str, monkeypatch: pytest.MonkeyPatch, act: Callable[[], None]) -> None:
    original = getattr(owner, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        act()
        return result

    monkeypatch.setattr(owner, name, wrapped)


def test_a_directory_swapped_for_a_symlink_during_the_pull_is_refused_before_create(
    rt, engine, allowed, monkeypatch
):
    work = allowed / "work"
    during(
        execution,
        "resolve_image",
        monkeypatch,
        lambda: swap_for_symlink(work, work.parent.parent / "outside"),
    )

    with pytest.raises(Forbidden, match=r"^volumes\.0\.source: .*outside the allowed roots"):
        run_execution(rt, tool("s1", {"source": str(work), "target": "/w"}), "e1")

    assert engine.called("create_container") == []


def test_a_relic_path_swapped_during_the_pull_is_refused_before_create(
    rt, engine, allowed, monkeypatch
):
    work = allowed / "work"
    inside = allowed / "elsewhere"
    inside.mkdir()
    during(relics, "resolve_image", monkeypatch, lambda: swap_for_symlink(work, inside))

    with pytest.raises(Forbidden, match=r"work' is a symbolic link"):
        relics.start_relic(rt, relic({"source": str(work), "target": "/w"}), "r1")

    assert engine.called("create_container") == []


def test_a_tool_path_swapped_after_create_is_refused_before_start(rt, engine, allowed, monkeypatch):
    work = allowed / "work"
    during(engine, "create_container", monkeypatch, lambda: swap_for_symlink(work, allowed))

    with pytest.raises(Forbidden, match="is a symbolic link"):
        run_execution(rt, tool("s1", {"source": str(work), "target": "/w"}), "e1")

    assert engine.called("start_container") == []
    rt.pool.drain()  # the removal queued behind the run
    assert engine.list_containers() == []  # removed, never started


def test_a_relic_path_swapped_after_create_is_refused_before_start(
    rt, engine, allowed, monkeypatch
):
    work = allowed / "work"
    during(engine, "create_container", monkeypatch, lambda: swap_for_symlink(work, allowed))

    with pytest.raises(Forbidden, match="is a symbolic link"):
        relics.start_relic(rt, relic({"source": str(work), "target": "/w"}), "r1")

    assert engine.called("start_container") == []
    assert engine.list_containers() == []


def test_a_missing_bind_source_is_refused_before_anything_and_never_created(rt, engine, allowed):
    missing = allowed / "not-yet"

    with pytest.raises(Forbidden, match="does not exist where the worker looks"):
        run_execution(rt, tool("s1", {"source": str(missing), "target": "/w"}), "e1")

    assert engine.calls == []
    assert not missing.exists()


def test_the_recheck_is_the_spec_builders_check(rt, allowed):
    volumes.recheck_binds(rt, tool("s1", {"source": str(allowed / "work"), "target": "/w"}).volumes)
    with pytest.raises(Forbidden):
        volumes.recheck_binds(
            rt, tool("s1", {"source": str(allowed / "x"), "target": "/w"}).volumes
        )


def test_a_legitimate_bind_runs_with_the_path_as_given(rt, engine, allowed):
    result = run_execution(rt, tool("s1", {"source": str(allowed / "work"), "target": "/w"}), "e1")

    assert result.status == "succeeded"
    assert mounted(engine) == [(str(allowed / "work"), "/w")]
    assert isinstance(engine.called("create_container")[0][0], ContainerSpec)


# -- relics of the old naming ---------------------------------------------------------------------


def legacy_relic(rt: Runtime, engine: FakeEngine, relic_id: str) -> str:
    """A relic container started before the naming changed (``orch-relic-<session>-<name>``)."""
    relic_labels = {
        "orchestrator.managed": "true",
        "orchestrator.kind": "relic",
        "orchestrator.session": "s1",
        "orchestrator.host": "h1",
        "orchestrator.relic": relic_id,
        "orchestrator.relic_name": "db",
        "orchestrator.port": "8000",
    }
    network = networks.ensure_network(engine, rt.redis, rt.settings, "s1").name
    spec = ContainerSpec(
        name="orch-relic-s1-db", image="svc:1", labels=relic_labels, network=network
    )
    container = engine.create_container(spec)
    engine.start_container(container.id)
    engine.calls.clear()
    return container.id


def test_a_relic_of_the_old_naming_is_found_by_its_labels(rt, engine):
    old = legacy_relic(rt, engine, "r1")

    with pytest.raises(relics.RelicConflict, match="already has relic r1"):
        relics.start_relic(rt, relic(), "r2")
    resumed = relics.start_relic(rt, relic(), "r1")

    assert resumed.container_id == old and resumed.container_name == "orch-relic-s1-db"
    assert engine.called("create_container") == []
    assert relics.lookup(rt.redis, "r1").container_name == "orch-relic-s1-db"
    relics.remove_relic(rt, "r1")
    assert engine.find_container(old) is None
