"""Quotas: what one session and one host may hold at once (tool runs in flight, relics,
committed memory, relic starts), kept in Redis by one Lua script per step, released on
finish, removal and cleanup, and healing by expiry when a worker dies holding them; and
the session keepalive, which can never hold a session (and its subnet) past its hard
maximum lifetime."""

from __future__ import annotations

import time
from typing import Any

import pytest

from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import Forbidden, QuotaExceeded, RelicExited
from orchestrator.models import RelicStartRequest, ToolExecutionRequest
from orchestrator.settings import Settings
from orchestrator.state import keys, sessions
from orchestrator.state import quotas as quotas_module
from orchestrator.state.logs import LiveLog, read_live
from orchestrator.state.quotas import Quotas, host_key, release_session, session_key
from orchestrator.state.subnets import SubnetPool
from orchestrator.worker import cleanup, health, networks, relics
from orchestrator.worker.execution import run_execution
from orchestrator.worker.janitor import expired_sessions, reap_host
from orchestrator.worker.runtime import Runtime

SERVICE = "service:1"
HOUR = 3600.0


def make_settings(**overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "host_name": "h1",
        "session_max_containers": 3,
        "session_max_relics": 2,
        "session_max_memory_mb": 1000,
        "host_max_memory_mb": 1500,
        "host_max_relic_starts": 2,
        "wait_slice_seconds": 0.05,
    }
    fields.update(overrides)
    return Settings(**fields)


@pytest.fixture
def quotas(redis) -> Quotas:
    return Quotas(redis, make_settings())


def hold(quotas: Quotas, holder: str, session_id: str = "s1", mb: int = 100, **kw: Any) -> None:
    quotas.acquire(
        holder,
        session_id=session_id,
        kind=kw.pop("kind", "tool"),
        memory_mb=mb,
        expires_at=kw.pop("expires_at", time.time() + HOUR),
        **kw,
    )


# -- the quotas, one by one -----------------------------------------------------------------


def test_a_session_holds_at_most_its_containers_and_the_refusal_names_the_setting(quotas):
    for n in range(3):
        hold(quotas, f"e{n}")

    with pytest.raises(QuotaExceeded) as refused:
        hold(quotas, "e3")

    message = str(refused.value)
    assert message.startswith("session_id: session 's1' already holds 3 containers")
    assert "ORCHESTRATOR_SESSION_MAX_CONTAINERS" in message
    hold(quotas, "other-1", session_id="s2")  # another session is not concerned
    assert quotas.session_usage("s1") == {"containers": 3, "relics": 0, "memory_mb": 300}


def test_a_session_holds_at_most_its_relics(quotas):
    hold(quotas, "r1", kind="relic")
    hold(quotas, "r2", kind="relic")

    with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_SESSION_MAX_RELICS"):
        hold(quotas, "r3", kind="relic")
    hold(quotas, "e1")  # a tool run still fits (3 containers)


def test_a_session_commits_at_most_its_memory(quotas):
    hold(quotas, "e1", mb=600)

    with pytest.raises(QuotaExceeded) as refused:
        hold(quotas, "e2", mb=500)

    assert str(refused.value).startswith(
        "resource_limits.memory_mb: 500 MB more would commit 1100 MB to session 's1', above "
        "its quota 1000 MB (ORCHESTRATOR_SESSION_MAX_MEMORY_MB)"
    )
    hold(quotas, "e2", mb=400)  # what fits is accepted


def test_a_host_commits_at_most_its_memory_whatever_the_sessions(quotas):
    hold(quotas, "a", session_id="s1", mb=800)
    hold(quotas, "b", session_id="s2", mb=600)

    with pytest.raises(QuotaExceeded, match=r"ORCHESTRATOR_HOST_MAX_MEMORY_MB") as refused:
        hold(quotas, "c", session_id="s3", mb=200)

    assert "1600 MB on host 'h1', above its quota 1500 MB" in str(refused.value)
    other_host = Quotas(quotas.redis, make_settings(host_name="h2"))
    hold(other_host, "c", session_id="s3", mb=200)  # another host has its own budget


def test_without_a_host_setting_the_physical_memory_is_the_quota(redis, monkeypatch):
    monkeypatch.setattr(quotas_module, "physical_memory_mb", lambda: 700)
    quotas = Quotas(redis, make_settings(host_max_memory_mb=0, session_max_memory_mb=10_000))
    hold(quotas, "a", mb=600)

    with pytest.raises(QuotaExceeded, match="above its quota 700 MB"):
        hold(quotas, "b", mb=200)


def test_the_physical_memory_is_read_from_proc_meminfo():
    quotas_module.physical_memory_mb.cache_clear()
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    assert quotas_module.physical_memory_mb() == total_kib // 1024


def test_taking_the_same_holder_again_never_counts_it_twice(quotas):
    for _ in range(5):
        hold(quotas, "e1", mb=600)  # a resumed run, a relic made healthy

    assert quotas.session_usage("s1") == {"containers": 1, "relics": 0, "memory_mb": 600}
    assert quotas.host_usage()["memory_mb"] == 600


def test_a_holder_resumed_on_another_host_leaves_the_first_hosts_count(redis, quotas):
    hold(quotas, "e1", mb=600)
    elsewhere = Quotas(redis, make_settings(host_name="h2"))
    hold(elsewhere, "e1", mb=600)

    assert quotas.host_usage()["memory_mb"] == 0
    assert elsewhere.host_usage()["memory_mb"] == 600


def test_released_holders_free_their_share_at_once(quotas):
    for n in range(3):
        hold(quotas, f"e{n}", mb=300)

    quotas.release("e0", "s1")
    quotas.release("e0", "s1")  # idempotent

    hold(quotas, "e3", mb=300)
    assert quotas.host_usage() == {"containers": 3, "relics": 0, "memory_mb": 900}


def test_a_session_cleanup_releases_its_holders_on_every_host(redis, quotas):
    elsewhere = Quotas(redis, make_settings(host_name="h2"))
    hold(quotas, "e1")
    hold(elsewhere, "e2")
    hold(quotas, "keep", session_id="s2")

    assert release_session(redis, "s1") == 2

    assert redis.exists(session_key("s1")) == 0
    assert redis.hkeys(host_key("h1")) == [b"keep"]
    assert redis.hkeys(host_key("h2")) == []


def test_holders_of_a_dead_worker_stop_counting_when_they_expire(quotas, monkeypatch):
    now = time.time()
    for n in range(3):
        hold(quotas, f"e{n}", mb=300, expires_at=now + 60)

    monkeypatch.setattr(quotas_module.time, "time", lambda: now + 61)

    hold(quotas, "e3", mb=300, expires_at=now + 600)  # the expired ones are pruned first
    assert quotas.session_usage("s1") == {"containers": 1, "relics": 0, "memory_mb": 300}
    assert quotas.redis.hkeys(session_key("s1")) == [b"e3"]


def test_quota_keys_expire_after_their_last_holder(quotas):
    hold(quotas, "e1", expires_at=time.time() + 100)

    assert 100 < quotas.redis.ttl(session_key("s1")) <= 161
    assert 100 < quotas.redis.ttl(host_key("h1")) <= 161


def test_an_entry_rewritten_without_enforcing_only_moves_its_expiry(quotas):
    hold(quotas, "r1", kind="relic", mb=900)
    strict = Quotas(quotas.redis, make_settings(session_max_memory_mb=500))

    hold(strict, "r1", kind="relic", mb=900, enforce=False, expires_at=time.time() + 9 * HOUR)

    assert quotas.redis.ttl(session_key("s1")) > 8 * HOUR


def test_a_host_runs_at_most_its_relic_starts_at_once(quotas):
    expires = time.time() + 60
    with quotas.relic_start("r1", expires), quotas.relic_start("r2", expires):
        with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_HOST_MAX_RELIC_STARTS"):
            with quotas.relic_start("r3", expires):
                pass
    with quotas.relic_start("r3", expires):  # the slots came back
        pass


def test_a_relic_start_slot_of_a_dead_worker_comes_back_when_it_expires(quotas, monkeypatch):
    now = time.time()
    quotas.redis.zadd("orch:quota:relic-starts:h1", {"dead-1": now + 5, "dead-2": now + 5})
    with pytest.raises(QuotaExceeded):
        with quotas.relic_start("r1", now + 60):
            pass

    monkeypatch.setattr(quotas_module.time, "time", lambda: now + 6)
    with quotas.relic_start("r1", now + 60):
        pass


# -- tool runs ---------------------------------------------------------------------------


def tool_request(**fields: Any) -> ToolExecutionRequest:
    data: dict[str, Any] = {
        "session_id": "s1",
        "tool_name": "echo",
        "image": "busybox:latest",
        "command": ["echo", "hi"],
        "resource_limits": {"memory_mb": 100},
    }
    data.update(fields)
    return ToolExecutionRequest.model_validate(data)


@pytest.fixture
def rt(redis, engine: FakeEngine) -> Runtime:
    engine.add_image(SERVICE, FakeProgram(run_seconds=None, stdout=b"serving\n"))
    return Runtime(make_settings(), redis, engine=engine)


def test_a_tool_run_holds_its_share_while_it_runs_and_gives_it_back(rt, redis, engine):
    seen: list[dict[str, int]] = []
    create = engine.create_container

    def watching(spec: Any) -> Any:
        seen.append(Quotas(redis, rt.settings).session_usage("s1"))
        return create(spec)

    engine.create_container = watching  # type: ignore[method-assign]

    result = run_execution(rt, tool_request(), "e1")

    assert result.status == "succeeded"
    assert seen == [{"containers": 1, "relics": 0, "memory_mb": 100}]
    assert Quotas(redis, rt.settings).session_usage("s1")["containers"] == 0


def test_a_tool_run_over_the_sessions_quota_starts_nothing(rt, redis, engine):
    quotas = Quotas(redis, rt.settings)
    for n in range(3):
        hold(quotas, f"busy-{n}")

    with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_SESSION_MAX_CONTAINERS"):
        run_execution(rt, tool_request(), "e1")

    assert engine.called("create_container") == []
    assert rt.executions.inflight() == []  # never registered: the reaper will not resume it
    assert run_execution(rt, tool_request(session_id="s2"), "e2").status == "succeeded"


def test_a_tool_run_over_the_hosts_memory_starts_nothing(rt, redis, engine):
    hold(Quotas(redis, rt.settings), "other-sessions-relic", session_id="s9", mb=900)

    with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_HOST_MAX_MEMORY_MB"):
        run_execution(rt, tool_request(resource_limits={"memory_mb": 700}), "e1")

    assert engine.called("create_container") == []


# -- image builds --------------------------------------------------------------------------

BUILD = {"dockerfile_inline": "FROM busybox:latest\nRUN true\n"}


def test_a_build_counts_its_memory_on_the_host_but_no_container_of_a_session(quotas):
    with quotas.building("orchestrator-build/x:1", 1000, time.time() + HOUR):
        assert quotas.host_usage() == {"containers": 0, "relics": 0, "memory_mb": 1000}
        hold(quotas, "small", mb=400)  # 1400 of 1500
        with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_HOST_MAX_MEMORY_MB"):
            hold(quotas, "large", session_id="s2", mb=200)
        with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_BUILD_MEMORY_MB"):
            with quotas.building("orchestrator-build/y:1", 200, time.time() + HOUR):
                pass
        assert quotas.session_usage("s1") == {"containers": 1, "relics": 0, "memory_mb": 400}
    assert quotas.host_usage() == {"containers": 1, "relics": 0, "memory_mb": 400}


def test_a_dead_workers_build_stops_counting_when_it_expires(quotas, monkeypatch):
    now = time.time()
    dead = quotas.building("orchestrator-build/x:1", 1400, now + 30)
    dead.__enter__()  # its worker dies in the build: the block is never left

    with pytest.raises(QuotaExceeded):
        hold(quotas, "t1", mb=200)
    monkeypatch.setattr(quotas_module.time, "time", lambda: now + 31)
    hold(quotas, "t1", mb=200)
    assert quotas.host_usage()["memory_mb"] == 200


def test_a_tool_run_whose_build_has_no_room_in_the_hosts_memory_starts_nothing(redis, engine):
    settings = make_settings(allow_builds=True, build_memory_mb=1024)
    rt = Runtime(settings, redis, engine=engine)

    with pytest.raises(QuotaExceeded) as info:
        run_execution(
            rt, tool_request(image=None, build=BUILD, resource_limits={"memory_mb": 600}), "e1"
        )

    assert str(info.value).startswith("build: ")
    assert "would commit 1624 MB on host 'h1', above its quota 1500 MB" in str(info.value)
    assert engine.called("build_image") == engine.called("create_container") == []
    assert Quotas(redis, settings).host_usage()["memory_mb"] == 0  # the run's share given back
    fits = tool_request(image=None, build=BUILD, resource_limits={"memory_mb": 400})
    assert run_execution(rt, fits, "e2").status == "succeeded"


def test_a_build_refused_by_policy_creates_and_charges_nothing(rt, redis, engine):
    """Builds off (the default): refused before any lease, record, quota, network or
    engine call, for a tool run and a relic start alike."""
    keys_before = set(redis.keys("*"))

    with pytest.raises(Forbidden, match="ORCHESTRATOR_ALLOW_BUILDS=true"):
        run_execution(rt, tool_request(image=None, build=BUILD), "e1")
    with pytest.raises(Forbidden, match="ORCHESTRATOR_ALLOW_BUILDS=true"):
        relics.start_relic(rt, relic_request(image=None, build=BUILD), "r1")

    assert set(redis.keys("*")) == keys_before
    assert engine.calls == []


# -- relics ------------------------------------------------------------------------------


def relic_request(name: str = "db", **fields: Any) -> RelicStartRequest:
    data: dict[str, Any] = {
        "session_id": "s1",
        "relic_name": name,
        "image": SERVICE,
        "resource_limits": {"memory_mb": 300},
    }
    data.update(fields)
    return RelicStartRequest.model_validate(data)


@pytest.fixture
def healthy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "probe", lambda *args, **kwargs: True)


def test_a_relic_holds_its_share_until_its_session_ends(rt, redis, healthy):
    relics.start_relic(rt, relic_request("a"), "r1")
    relics.start_relic(rt, relic_request("b"), "r2")

    with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_SESSION_MAX_RELICS"):
        relics.start_relic(rt, relic_request("c"), "r3")

    quotas = Quotas(redis, rt.settings)
    assert quotas.session_usage("s1") == {"containers": 2, "relics": 2, "memory_mb": 600}
    created = sessions.expiry(redis, "s1")["created_at"]
    hard_end = created + rt.settings.session_max_lifetime_seconds
    assert hard_end - 120 < time.time() + redis.ttl(session_key("s1")) - 60 <= hard_end + 2
    assert redis.zcard("orch:quota:relic-starts:h1") == 0  # start slots given back
    relics.start_relic(rt, relic_request("c", session_id="s2"), "r4")  # others still start


def test_removing_a_relic_gives_its_share_back(rt, redis, healthy):
    relics.start_relic(rt, relic_request("a"), "r1")
    relics.start_relic(rt, relic_request("b"), "r2")

    relics.remove_relic(rt, "r1")

    relics.start_relic(rt, relic_request("c"), "r3")
    assert Quotas(redis, rt.settings).session_usage("s1")["relics"] == 2


def test_a_relic_that_fails_to_start_holds_nothing(rt, redis, engine):
    engine.add_image("crash:1", FakeProgram(exit_code=3, stdout=b"boom\n"))

    with pytest.raises(RelicExited):
        relics.start_relic(rt, relic_request(image="crash:1"), "r1")

    assert Quotas(redis, rt.settings).session_usage("s1")["containers"] == 0
    assert redis.zcard("orch:quota:relic-starts:h1") == 0


def test_session_cleanup_gives_the_sessions_share_back(rt, redis, healthy):
    relics.start_relic(rt, relic_request("a"), "r1")

    cleanup.forget_session(redis, "s1")

    assert Quotas(redis, rt.settings).host_usage()["memory_mb"] == 0


# -- keepalive ----------------------------------------------------------------------------


def test_touch_never_holds_a_session_and_its_subnet_past_the_hard_lifetime(rt, redis, monkeypatch):
    sessions.record_host(rt, "s1")
    networks.ensure_network(rt.engine, redis, rt.settings, "s1")
    pool = SubnetPool.for_settings(redis, rt.settings)
    created = sessions.expiry(redis, "s1")["created_at"]
    cap = created + rt.settings.session_max_lifetime_seconds

    ten_years = 10 * 365 * 86400.0
    assert sessions.touch(redis, "s1", ten_years, rt.settings.session_max_lifetime_seconds) == cap
    monkeypatch.setattr(sessions.time, "time", lambda: cap - 1)  # touched again, near the end
    assert sessions.touch(redis, "s1", ten_years, rt.settings.session_max_lifetime_seconds) == cap

    later = cap + 1
    assert expired_sessions(redis, later, rt.settings.session_max_lifetime_seconds) == {
        "s1": "max_lifetime"
    }
    report = reap_host(rt, now=later, network_grace_seconds=0)
    assert report["networks_removed"] == 1
    assert pool.current("s1") is None  # the subnet went back to the pool


# -- Redis budgets ------------------------------------------------------------------------


def test_live_output_expires_from_its_first_write_even_if_its_worker_dies(redis):
    live = LiveLog(redis, "e1", budget_bytes=1024, ttl_seconds=600)

    live.append("stdout", b"some output\n")  # and the worker dies: close() never comes

    assert 0 < redis.ttl(keys.logs("e1")) <= 600


def test_live_output_has_its_own_smaller_budget_and_lifetime(redis, engine):
    settings = make_settings(live_log_cap_bytes=2048, live_log_ttl_seconds=120)
    rt = Runtime(settings, redis, engine=engine)
    engine.add_image("busybox:latest", FakeProgram(stdout=b"x" * 10_000 + b"\n"))

    result = run_execution(rt, tool_request(), "e1")

    assert len(result.stdout) == 10_001  # the result keeps what log_cap_bytes allows
    assert len(read_live(redis, "e1")["stdout"]) == 2048
    assert 0 < redis.ttl(keys.logs("e1")) <= 120
    assert Settings().live_log_ttl_seconds == 3600 < Settings().result_ttl_seconds
    assert Settings().live_log_cap_bytes == 65_536 < Settings().log_cap_bytes == 262_144
