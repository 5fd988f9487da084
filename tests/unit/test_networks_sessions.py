"""Behaviour of the session subnet pool, host routes, session networks on the in-memory
engine, routing and session bookkeeping."""

from __future__ import annotations

import builtins
import ipaddress
from types import SimpleNamespace

import pytest

from orchestrator.core.types import ContainerSpec, NetworkSpec
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import (
    DockerError,
    DockerUnavailable,
    HostUnavailable,
    NetworkInUse,
    NetworkNotFound,
    NetworkPoolExhausted,
    WrongHost,
)
from orchestrator.settings import Settings
from orchestrator.state import keys, routing, sessions, subnets
from orchestrator.state.subnets import SubnetPool, host_routes
from orchestrator.worker import networks, relics
from orchestrator.worker.networks import network_name
from orchestrator.worker.runtime import Runtime


def pool_of(redis, pool: str = "10.213.0.0/16", prefix: int = 26, avoid=(), host="h1"):
    return SubnetPool(
        redis, host, pool, prefix, avoid=tuple(ipaddress.ip_network(a) for a in avoid)
    )


# -- SubnetPool --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("index", "subnet"),
    [
        (0, "10.213.0.0/26"),
        (1, "10.213.0.64/26"),
        (3, "10.213.0.192/26"),
        (4, "10.213.1.0/26"),
        (1023, "10.213.255.192/26"),
    ],
)
def test_subnet_index_maps_to_consecutive_blocks_of_the_pool(redis, index, subnet):
    assert pool_of(redis).subnet(index) == ipaddress.ip_network(subnet)


@pytest.mark.parametrize(
    ("pool", "prefix", "size"),
    [
        ("10.213.0.0/16", 26, 1024),
        ("10.213.0.0/16", 16, 1),
        ("10.0.0.0/24", 29, 32),
        ("10.0.0.0/24", 16, 0),
    ],
)
def test_pool_size_is_the_number_of_subnets_that_fit(redis, pool, prefix, size):
    assert pool_of(redis, pool, prefix).size == size


def test_500_sessions_get_distinct_subnets_inside_the_pool(redis):
    pool = pool_of(redis)
    whole = ipaddress.ip_network("10.213.0.0/16")

    indices = [pool.allocate(f"s{i}") for i in range(500)]

    assert len(set(indices)) == 500
    subnets = [pool.subnet(i) for i in indices]
    assert all(s.subnet_of(whole) and s.prefixlen == 26 for s in subnets)
    ordered = sorted(subnets)
    assert not any(a.overlaps(b) for a, b in zip(ordered, ordered[1:], strict=False))


def test_same_session_gets_the_same_subnet_again(redis):
    pool = pool_of(redis)
    first = pool.allocate("s1")
    pool.allocate("s2")

    assert pool.allocate("s1") == first
    assert pool.current("s1") == first


def test_pools_of_different_hosts_are_independent(redis):
    a = pool_of(redis, "10.0.0.0/24", 26, host="a")
    b = pool_of(redis, "10.0.0.0/24", 26, host="b")
    for i in range(4):
        a.allocate(f"s{i}")

    assert b.allocate("other") in range(4)


def test_two_pool_objects_of_one_host_share_allocations(redis):
    taken = {pool_of(redis, "10.0.0.0/24", 26).allocate(f"s{i}") for i in range(4)}

    assert taken == {0, 1, 2, 3}
    with pytest.raises(NetworkPoolExhausted):
        pool_of(redis, "10.0.0.0/24", 26).allocate("late")


def test_exhausted_pool_raises_naming_the_pool_and_host(redis):
    pool = pool_of(redis, "10.213.0.0/24", 26)
    for i in range(4):
        pool.allocate(f"s{i}")

    with pytest.raises(NetworkPoolExhausted) as info:
        pool.allocate("one-too-many")

    assert "10.213.0.0/24" in str(info.value)
    assert "(/26)" in str(info.value)
    assert "host h1" in str(info.value)
    assert "ORCHESTRATOR_SESSION_SUBNET_POOL" in str(info.value)
    assert pool.current("one-too-many") is None


def test_released_subnet_is_reused(redis):
    pool = pool_of(redis, "10.213.0.0/24", 26)
    held = {f"s{i}": pool.allocate(f"s{i}") for i in range(4)}

    pool.release("s2")

    assert pool.current("s2") is None
    assert pool.allocate("newcomer") == held["s2"]


def test_release_of_a_session_without_a_subnet_is_a_no_op(redis):
    pool = pool_of(redis, "10.213.0.0/24", 26)
    index = pool.allocate("s1")

    pool.release("never-allocated")

    assert pool.current("s1") == index


def test_release_does_not_free_a_subnet_now_held_by_another_session(redis):
    pool = pool_of(redis, "10.213.0.0/24", 26)
    index = pool.allocate("s1")
    redis.set(keys.subnet("h1", index), "s2")  # s2 owns it now (stale mapping for s1)

    pool.release("s1")

    assert redis.get(keys.subnet("h1", index)) == b"s2"
    assert pool.current("s1") is None


@pytest.mark.parametrize(
    ("avoid", "free"),
    [
        (["10.213.0.0/25"], {2, 3}),  # covers subnets 0 and 1
        (["10.213.0.70/32"], {0, 2, 3}),  # a single address inside subnet 1
        (["10.0.0.0/8"], set()),  # the whole pool
        (["192.168.0.0/16"], {0, 1, 2, 3}),  # unrelated route
    ],
)
def test_subnets_overlapping_host_routes_are_skipped(redis, avoid, free):
    pool = pool_of(redis, "10.213.0.0/24", 26, avoid=avoid)

    got = set()
    for i in range(len(free)):
        got.add(pool.allocate(f"s{i}"))

    assert got == free
    with pytest.raises(NetworkPoolExhausted):
        pool.allocate("extra")


def test_allocate_with_skip_moves_the_session_off_a_refused_subnet(redis):
    pool = pool_of(redis, "10.213.0.0/24", 26)
    first = pool.allocate("s1")

    second = pool.allocate("s1", skip={first})

    assert second != first
    assert pool.current("s1") == second


def test_subnet_skipped_during_allocation_is_not_leaked_after_release(redis):
    pool = pool_of(redis, "10.213.0.0/24", 26)
    first = pool.allocate("s1")
    pool.allocate("s1", skip={first})

    pool.release("s1")

    assert redis.get(keys.subnet("h1", first)) is None


def test_network_name_is_prefixed_with_session():
    assert network_name("abc-1") == "session_abc-1"


# -- host_routes -------------------------------------------------------------------------------

ROUTE_TABLE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    "eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    "docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n"
)


@pytest.fixture
def fake_route_file(monkeypatch, tmp_path):
    """Point host_routes at a file of our own instead of /proc/net/route."""

    def install(content: str | None) -> None:
        path = tmp_path / "route"
        if content is not None:
            path.write_text(content)

        def fake_open(name, *args, **kwargs):
            assert name == "/proc/net/route"
            return builtins.open(path, *args, **kwargs)

        monkeypatch.setattr(subnets, "open", fake_open, raising=False)
        host_routes.cache_clear()

    yield install
    host_routes.cache_clear()


def test_host_routes_are_read_from_the_kernel_table_without_the_default_route(fake_route_file):
    fake_route_file(ROUTE_TABLE)

    assert host_routes() == (
        ipaddress.ip_network("192.168.1.0/24"),
        ipaddress.ip_network("172.17.0.0/16"),
    )


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="missing_file"),
        pytest.param("", id="empty_file"),
        pytest.param("header\neth0\tnot-hex\t0\t0\t0\t0\t0\tFFFFFFFF\n", id="garbage"),
    ],
)
def test_unreadable_route_table_means_no_routes_to_avoid(fake_route_file, content):
    fake_route_file(content)

    assert host_routes() == ()


def test_subnets_overlapping_the_docker0_route_are_avoided(fake_route_file, redis):
    fake_route_file(ROUTE_TABLE)
    pool = SubnetPool(redis, "h1", "172.16.0.0/15", 16)  # avoid defaults to host_routes()

    index = pool.allocate("s1")

    assert pool.subnet(index) == ipaddress.ip_network("172.16.0.0/16")  # 172.17/16 is docker0
    with pytest.raises(NetworkPoolExhausted):
        pool.allocate("s2")


# -- session networks on the engine -------------------------------------------------------

#: Two subnets: 10.213.0.0/26 (index 0) and 10.213.0.64/26 (index 1, the first one tried).
SMALL = Settings(host_name="h1", session_subnet_pool="10.213.0.0/25", session_subnet_prefix=26)


@pytest.fixture
def no_routes(monkeypatch):
    """This machine's routes do not shrink the pools of these tests."""
    monkeypatch.setattr(subnets, "host_routes", lambda: ())


def outside_network(engine: FakeEngine, name: str, subnet: str) -> None:
    """A network someone else made on the engine, holding ``subnet``."""
    engine.create_network(NetworkSpec(name=name, labels={}, subnet=subnet))
    engine.calls.clear()


def test_ensure_creates_a_labelled_internal_network_on_a_pool_subnet(redis, engine, no_routes):
    network = networks.ensure_network(engine, redis, SMALL, "s1")

    assert network.name == "session_s1"
    assert network.internal is True
    assert network.labels == {
        "orchestrator.managed": "true",
        "orchestrator.kind": "session-network",
        "orchestrator.session": "s1",
        "orchestrator.host": "h1",
    }
    index = SubnetPool.for_settings(redis, SMALL).current("s1")
    assert index is not None
    assert network.subnets == (str(SubnetPool.for_settings(redis, SMALL).subnet(index)),)
    spec = engine.called("create_network")[0][0]
    assert spec.gateway == str(next(ipaddress.ip_network(spec.subnet).hosts()))


def test_ensure_with_egress_makes_a_network_that_reaches_out(redis, engine, no_routes):
    settings = SMALL.model_copy(update={"session_egress": True})

    assert networks.ensure_network(engine, redis, settings, "s1").internal is False


def test_ensure_returns_the_existing_network_without_creating_another(redis, engine, no_routes):
    first = networks.ensure_network(engine, redis, SMALL, "s1")

    again = networks.ensure_network(engine, redis, SMALL, "s1")

    assert again.id == first.id
    assert len(engine.called("create_network")) == 1


def test_a_subnet_used_outside_the_pool_is_skipped_for_another(redis, engine, no_routes):
    outside_network(engine, "theirs", "10.213.0.64/26")

    network = networks.ensure_network(engine, redis, SMALL, "s1")

    assert network.subnets == ("10.213.0.0/26",)
    assert len(engine.called("create_network")) == 2
    assert SubnetPool.for_settings(redis, SMALL).current("s1") == 0
    assert redis.get(keys.subnet("h1", 1)) is None  # the refused subnet is not held


def test_every_pool_subnet_used_outside_exhausts_the_pool_and_holds_nothing(
    redis, engine, no_routes
):
    outside_network(engine, "theirs-0", "10.213.0.0/26")
    outside_network(engine, "theirs-1", "10.213.0.64/26")

    with pytest.raises(NetworkPoolExhausted):
        networks.ensure_network(engine, redis, SMALL, "s1")

    assert SubnetPool.for_settings(redis, SMALL).current("s1") is None
    assert redis.keys("orch:subnet:h1:*") == []


def test_refusals_for_overlap_on_every_attempt_give_up_naming_the_network(redis, engine, no_routes):
    outside_network(engine, "theirs-1", "10.213.0.64/26")

    with pytest.raises(DockerError, match="could not create network session_s1"):
        networks.ensure_network(engine, redis, SMALL, "s1", attempts=1)

    assert SubnetPool.for_settings(redis, SMALL).current("s1") is None


@pytest.mark.parametrize(
    "error",
    [DockerError("engine says no"), DockerUnavailable("engine down")],
    ids=["refused", "unreachable"],
)
def test_any_other_refusal_is_raised_at_once_and_releases_the_subnet(
    redis, engine, no_routes, error
):
    engine.fail_next("create_network", error)

    with pytest.raises(type(error)) as caught:
        networks.ensure_network(engine, redis, SMALL, "s1")

    assert caught.value is error
    assert len(engine.called("create_network")) == 1
    assert SubnetPool.for_settings(redis, SMALL).current("s1") is None
    assert engine.find_network("session_s1") is None


def test_remove_removes_the_sessions_networks_only_and_releases_the_subnet(
    redis, engine, no_routes
):
    networks.ensure_network(engine, redis, SMALL, "s1")
    networks.ensure_network(engine, redis, SMALL, "s2")

    assert networks.remove_network(engine, redis, SMALL, "s1") == 1

    assert engine.find_network("session_s1") is None
    assert engine.find_network("session_s2") is not None
    assert SubnetPool.for_settings(redis, SMALL).current("s1") is None
    assert SubnetPool.for_settings(redis, SMALL).current("s2") is not None
    assert networks.remove_network(engine, redis, SMALL, "s1") == 0


def test_a_network_removed_by_someone_else_meanwhile_is_not_counted(redis, engine, no_routes):
    networks.ensure_network(engine, redis, SMALL, "s1")
    engine.fail_next("remove_network", NetworkNotFound("network session_s1 not found"))

    assert networks.remove_network(engine, redis, SMALL, "s1") == 0
    assert SubnetPool.for_settings(redis, SMALL).current("s1") is None


def test_a_network_with_a_running_container_is_in_use(redis, engine, no_routes):
    network = networks.ensure_network(engine, redis, SMALL, "s1")
    engine.add_image("svc:1", FakeProgram(run_seconds=None))
    box = engine.create_container(
        ContainerSpec(name="c1", image="svc:1", labels={}, network=network.name)
    )
    engine.start_container(box.id)

    with pytest.raises(NetworkInUse):
        networks.remove_network(engine, redis, SMALL, "s1")

    assert engine.find_network("session_s1") is not None


def test_joining_the_session_network_claims_the_session_and_records_the_host(
    redis, engine, no_routes
):
    rt = make_runtime(redis, "h1", engine)

    assert networks.join_session_network(rt, "s1") == "session_s1"

    assert routing.session_owner(redis, "s1") == "h1"
    assert sessions.hosts_of(redis, "s1") == ["h1"]
    assert set(sessions.expiry(redis, "s1")) == {"created_at", "expires_at"}
    assert engine.find_network("session_s1") is not None


def test_joining_a_session_owned_by_another_live_host_creates_nothing(redis, engine, no_routes):
    make_runtime(redis, "h1").heartbeat()
    sessions.claim(redis, "s1", "h1")

    with pytest.raises(WrongHost):
        networks.join_session_network(make_runtime(redis, "h2", engine), "s1")

    assert engine.called("create_network") == []


# -- routing -----------------------------------------------------------------------------------


def test_session_work_goes_to_the_owner_hosts_queue(redis):
    redis.set(keys.session_owner("s1"), "dock-2")
    redis.set(keys.host("dock-2"), "{}")

    assert routing.session_owner(redis, "s1") == "dock-2"
    assert routing.queue_for(redis, "s1", "relics") == "host.dock-2"


def test_session_work_for_a_dead_owner_fails_at_once_instead_of_waiting(redis):
    from orchestrator.errors import HostUnavailable

    redis.set(keys.session_owner("s1"), "dock-2")  # no heartbeat for dock-2

    with pytest.raises(HostUnavailable, match="dock-2"):
        routing.queue_for(redis, "s1", "relics")


@pytest.mark.parametrize("session_id", ["unowned", None, ""])
def test_work_without_an_owner_goes_to_the_default_queue(redis, session_id):
    assert routing.queue_for(redis, session_id, "tools") == "tools"


def test_owner_of_an_unclaimed_session_is_none(redis):
    assert routing.session_owner(redis, "s1") is None


def test_host_queue_name():
    assert routing.host_queue("alpha") == "host.alpha"


# -- sessions ----------------------------------------------------------------------------------


def test_first_host_to_claim_a_session_owns_it(redis):
    assert sessions.claim(redis, "s1", "h1") == "h1"
    assert sessions.claim(redis, "s1", "h2") == "h1"
    assert sessions.claim(redis, "s1", "h1") == "h1"
    assert routing.session_owner(redis, "s1") == "h1"


def test_claims_of_different_sessions_are_independent(redis):
    sessions.claim(redis, "s1", "h1")

    assert sessions.claim(redis, "s2", "h2") == "h2"


def make_runtime(redis, host: str, engine: FakeEngine | None = None) -> Runtime:
    return Runtime(Settings(host_name=host), redis, engine=engine or FakeEngine())


def test_require_owner_claims_an_unowned_session_for_this_host(redis):
    sessions.require_owner(make_runtime(redis, "h1"), "s1")

    assert routing.session_owner(redis, "s1") == "h1"


def test_require_owner_sends_work_to_a_live_owner(redis):
    owner = make_runtime(redis, "h1")
    owner.heartbeat()
    sessions.claim(redis, "s1", "h1")

    with pytest.raises(WrongHost) as info:
        sessions.require_owner(make_runtime(redis, "h2"), "s1")

    assert info.value.owner == "h1"


def test_require_owner_reports_a_dead_owner_naming_the_session_and_host(redis):
    sessions.claim(redis, "s1", "gone-host")

    with pytest.raises(HostUnavailable) as info:
        sessions.require_owner(make_runtime(redis, "h2"), "s1")

    assert str(info.value).startswith("session_id: session 's1' lives on host 'gone-host'")


class Clock:
    """A settable replacement for the ``time`` module inside orchestrator.sessions."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock(1_000_000.0)
    monkeypatch.setattr(sessions, "time", SimpleNamespace(time=fake.time))
    return fake


def test_expiry_of_an_unknown_session_is_empty(redis):
    assert sessions.expiry(redis, "s1") == {}


def test_first_touch_starts_the_session_clock(redis, clock):
    expires = sessions.touch(redis, "s1", extend_seconds=60, max_lifetime_seconds=3600)

    assert expires == 1_000_060.0
    assert sessions.expiry(redis, "s1") == {"created_at": 1_000_000.0, "expires_at": 1_000_060.0}
    assert redis.sismember(keys.SESSIONS, "s1")


def test_touch_extends_the_expiry_from_now(redis, clock):
    sessions.touch(redis, "s1", 60, 3600)
    clock.now += 50

    expires = sessions.touch(redis, "s1", 60, 3600)

    assert expires == 1_000_110.0
    assert sessions.expiry(redis, "s1")["expires_at"] == 1_000_110.0
    assert sessions.expiry(redis, "s1")["created_at"] == 1_000_000.0


def test_touch_never_shortens_the_expiry(redis, clock):
    sessions.touch(redis, "s1", 600, 3600)

    expires = sessions.touch(redis, "s1", 10, 3600)

    assert expires == 1_000_600.0
    assert sessions.expiry(redis, "s1")["expires_at"] == 1_000_600.0


@pytest.mark.parametrize(
    ("elapsed", "extend", "expected"),
    [
        (0, 100_000, 1_003_600.0),  # capped at created_at + max lifetime
        (3000, 3600, 1_003_600.0),
        (3500, 50, 1_003_550.0),  # under the cap: now + extend
        (5000, 60, 1_003_600.0),  # past the cap: stays at the cap
    ],
)
def test_touch_never_extends_beyond_the_maximum_lifetime(redis, clock, elapsed, extend, expected):
    sessions.touch(redis, "s1", 60, 3600)
    clock.now += elapsed

    expires = sessions.touch(redis, "s1", extend, max_lifetime_seconds=3600)

    assert expires == expected
    assert sessions.expiry(redis, "s1")["expires_at"] == expected


def test_touch_respects_a_created_at_recorded_earlier(redis, clock):
    redis.hset(
        keys.session_expiry("s1"), mapping={"created_at": 999_000.0, "expires_at": 999_500.0}
    )

    expires = sessions.touch(redis, "s1", 3600, max_lifetime_seconds=1500)

    assert expires == 1_000_500.0  # 999 000 + 1 500
    assert sessions.expiry(redis, "s1")["created_at"] == 999_000.0


def test_forget_clears_every_key_of_the_session_only(redis, clock):
    for session_id in ("s1", "s2"):
        sessions.claim(redis, session_id, "h1")
        redis.sadd(keys.session_hosts(session_id), "h1", "h2")
        redis.sadd(keys.session_relics(session_id), "r1")
        sessions.touch(redis, session_id, 60, 3600)
    assert sessions.hosts_of(redis, "s1") == ["h1", "h2"]

    sessions.forget(redis, "s1")

    assert (
        redis.exists(
            keys.session_owner("s1"),
            keys.session_hosts("s1"),
            keys.session_relics("s1"),
            keys.session_expiry("s1"),
        )
        == 0
    )
    assert not redis.sismember(keys.SESSIONS, "s1")
    assert sessions.hosts_of(redis, "s1") == []
    assert sessions.expiry(redis, "s1") == {}
    assert routing.session_owner(redis, "s2") == "h1"
    assert redis.sismember(keys.SESSIONS, "s2")
    assert sessions.hosts_of(redis, "s2") == ["h1", "h2"]


@pytest.mark.parametrize("call", [relics.relic_info, relics.stop_relic, relics.remove_relic])
def test_a_relic_on_a_dead_host_fails_at_once_and_on_a_live_one_is_forwarded(redis, call):
    redis.hset(keys.relic("r1"), mapping={"host": "gone-host", "container_name": "c1"})

    with pytest.raises(HostUnavailable, match="relic r1 lives on host 'gone-host', which has no"):
        call(make_runtime(redis, "h2"), "r1")

    make_runtime(redis, "gone-host").heartbeat()
    with pytest.raises(WrongHost) as info:
        call(make_runtime(redis, "h2"), "r1")
    assert info.value.owner == "gone-host"
