"""Behaviour of relics on the in-memory engine: the HTTP health probe against a real local
server, container and volume names, waiting for health, and starting, describing,
stopping and removing relics."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from orchestrator.core.types import Container, ContainerSpec
from orchestrator.engine.fake import FakeEngine, FakeProgram
from orchestrator.errors import (
    LimitExceeded,
    RelicConflict,
    RelicExited,
    RelicNotFound,
    RelicUnhealthy,
)
from orchestrator.models import RelicStartRequest
from orchestrator.settings import Settings
from orchestrator.state import keys, routing
from orchestrator.state.relics import RelicEntry
from orchestrator.worker import health, relics
from orchestrator.worker.relics import probe, relic_container_name, volume_name, wait_healthy
from orchestrator.worker.runtime import Runtime

ROUTES = {"/health": 200, "/ready": 204, "/moved": 302, "/missing": 404, "/broken": 500}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        status = ROUTES.get(self.path.split("?")[0], 404)
        body = b"ok" if status < 300 else b""
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/health")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return None


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


# -- probe -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "healthy"),
    [
        ("/health", True),
        ("/ready", True),
        ("/moved", True),
        ("/missing", False),
        ("/broken", False),
    ],
)
def test_probe_is_healthy_for_statuses_below_400(server, path, healthy):
    assert probe("127.0.0.1", server, path) is healthy


def test_probe_of_a_closed_port_is_unhealthy(closed_port):
    assert probe("127.0.0.1", closed_port, "/health") is False


def test_probe_of_a_server_that_never_answers_gives_up_at_its_timeout(silent_port):
    begin = time.monotonic()

    assert probe("127.0.0.1", silent_port, "/health", timeout_seconds=0.2) is False

    assert time.monotonic() - begin < 1.0


# -- names --------------------------------------------------------------------------------


def test_a_relic_container_is_named_from_its_session_and_name():
    assert relic_container_name("s1", "db") == "orch-relic-2-s1-db"
    assert relic_container_name("s1", "db") != relic_container_name("s2", "db")
    assert relic_container_name("a", "b-db") != relic_container_name("a-b", "db")


def test_a_relic_volume_is_scoped_to_its_session():
    assert volume_name("s1", "data") == "orch-vol-2-s1-data"
    assert volume_name("s1", "data") != volume_name("s2", "data")
    assert volume_name("a", "b-data") != volume_name("a-b", "data")


# -- wait_healthy ---------------------------------------------------------------------------


def relic_request(port: int, timeout: float = 5.0, path: str = "/health") -> RelicStartRequest:
    return RelicStartRequest(
        session_id="s1",
        relic_name="db",
        image="busybox:latest",
        port=port,
        health_check_endpoint=path,
        health_timeout_seconds=timeout,
    )


def running_relic(
    engine: FakeEngine,
    networks: dict[str, str] | None = None,
    program: FakeProgram | None = None,
) -> Container:
    """A started container of its own image, at the addresses given in each network."""
    networks = networks if networks is not None else {"session_s1": "127.0.0.1"}
    engine.add_image("relic:1", program or FakeProgram(run_seconds=None))
    for name in networks:
        if engine.find_network(name) is None:
            engine.add_network(name)
    first, *others = networks
    created = engine.create_container(
        ContainerSpec(name="orch-relic-2-s1-db", image="relic:1", labels={}, network=first)
    )
    for name in others:
        engine.connect_network(name, created.id)
    engine.start_container(created.id)
    # The fake picks addresses of its own; the probe must reach this test's server.
    engine.containers[created.id].networks.update(networks)
    return engine.inspect_container(created.id)


def test_wait_healthy_returns_the_address_once_the_endpoint_answers(engine, server):
    container = running_relic(engine)

    assert wait_healthy(engine, container, "session_s1", relic_request(server)) == "127.0.0.1"


def test_wait_healthy_uses_the_first_network_when_none_is_named(engine, server):
    container = running_relic(engine, networks={"bridge": "127.0.0.1"})

    assert wait_healthy(engine, container, None, relic_request(server)) == "127.0.0.1"


def test_a_relic_that_exits_while_waited_on_raises_with_its_last_log_lines(engine, closed_port):
    lines = [f"line {i}\n".encode() for i in range(30)]
    program = FakeProgram(
        run_seconds=0.1,
        exit_code=3,
        stdout=b"".join(lines[:-1]),
        stderr=b"fatal: no config\n",
    )
    container = running_relic(engine, program=program)
    begin = time.monotonic()

    with pytest.raises(RelicExited) as caught:
        wait_healthy(engine, container, "session_s1", relic_request(closed_port))

    message = str(caught.value)
    assert time.monotonic() - begin < 2
    assert "relic 'db' exited with code 3 before it was healthy" in message
    assert message.rstrip().endswith("fatal: no config")
    assert "line 28" in message
    assert "line 9\n" not in message  # only the last 20 lines


def test_a_relic_whose_endpoint_never_answers_is_unhealthy_after_the_timeout(engine, closed_port):
    program = FakeProgram(run_seconds=None, stdout=b"listening on the wrong port\n")
    container = running_relic(engine, program=program)
    begin = time.monotonic()

    with pytest.raises(RelicUnhealthy) as caught:
        wait_healthy(engine, container, "session_s1", relic_request(closed_port, timeout=0.3))

    elapsed = time.monotonic() - begin
    assert 0.3 <= elapsed < 1.5
    message = str(caught.value)
    assert f"did not answer GET /health on port {closed_port} within 0.3 s" in message
    assert "listening on the wrong port" in message
    assert engine.inspect_container(container.id).running


def test_a_relic_answering_with_an_error_status_is_unhealthy(engine, server):
    container = running_relic(engine)
    request = relic_request(server, timeout=0.3, path="/broken")

    with pytest.raises(RelicUnhealthy):
        wait_healthy(engine, container, "session_s1", request)


def test_a_relic_without_an_address_on_the_network_is_unhealthy(engine, server):
    container = running_relic(engine, networks={"other": "127.0.0.1"})

    with pytest.raises(RelicUnhealthy):
        wait_healthy(engine, container, "session_s1", relic_request(server, timeout=0.3))


def test_the_log_tail_of_an_unreadable_container_is_empty(engine):
    assert health.logs_tail(engine, "no-such-container") == ""


# -- start, describe, stop, remove on the engine ----------------------------------------------

SERVICE = "svc:1"


class Probes:
    """Stands in for the HTTP probe: records each probe; answers ``healthy``."""

    def __init__(self) -> None:
        self.healthy = True
        self.calls: list[tuple[str, int, str]] = []

    def __call__(self, address: str, port: int, path: str, timeout: float = 1.0) -> bool:
        self.calls.append((address, port, path))
        return self.healthy


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> Probes:
    fake = Probes()
    monkeypatch.setattr(health, "probe", fake)
    return fake


@pytest.fixture
def rt(redis, engine) -> Runtime:
    engine.add_image(SERVICE, FakeProgram(run_seconds=None, stdout=b"serving\n"))
    return Runtime(Settings(host_name="h1"), redis, engine=engine)


def start_request(name: str = "db", **fields: Any) -> RelicStartRequest:
    return RelicStartRequest.model_validate(
        {"session_id": "s1", "relic_name": name, "image": SERVICE, "port": 8000, **fields}
    )


def test_a_started_relic_runs_in_the_session_network_and_is_registered(rt, engine, probes):
    info = relics.start_relic(rt, start_request(health_check_endpoint="/ready"), "r1")

    container = engine.inspect_container("orch-relic-2-s1-db")
    address = container.networks["session_s1"]
    assert info.status == "running" and info.healthy is True
    assert info.relic_id == "r1" and info.relic_name == "db" and info.session_id == "s1"
    assert (info.container_id, info.container_name) == (container.id, "orch-relic-2-s1-db")
    assert info.network == "session_s1"
    assert info.internal_url == "http://orch-relic-2-s1-db:8000"
    assert info.ip_address == address and address
    assert info.host == "h1" and info.started_at is not None and info.ports == {}
    assert probes.calls[-1] == (address, 8000, "/ready")
    spec = engine.called("create_container")[0][0]
    assert spec.network == "session_s1" and spec.aliases == ("db",)
    assert spec.labels["orchestrator.relic"] == "r1"
    assert spec.labels["orchestrator.kind"] == "relic"
    assert spec.labels["orchestrator.port"] == "8000"
    network = engine.inspect_network("session_s1")
    assert network.internal and network.labels["orchestrator.session"] == "s1"
    assert relics.lookup(rt.redis, "r1") == RelicEntry(
        relic_id="r1",
        relic_name="db",
        session_id="s1",
        host="h1",
        container_name="orch-relic-2-s1-db",
        port=8000,
        health="/ready",
    )
    assert rt.redis.sismember(keys.session_relics("s1"), "r1")
    assert routing.session_owner(rt.redis, "s1") == "h1"


def test_a_relic_that_exits_before_it_is_healthy_leaves_nothing_behind(rt, engine, probes):
    engine.add_image("crashy:1", FakeProgram(run_seconds=0.05, exit_code=7, stderr=b"boom\n"))
    probes.healthy = False

    with pytest.raises(RelicExited, match="boom"):
        relics.start_relic(rt, start_request(image="crashy:1"), "r1")

    assert engine.find_container("orch-relic-2-s1-db") is None
    assert not rt.redis.exists(keys.relic("r1"))
    assert not rt.redis.sismember(keys.session_relics("s1"), "r1")


def test_a_relic_that_never_gets_healthy_is_removed(rt, engine, probes):
    probes.healthy = False

    with pytest.raises(RelicUnhealthy, match="did not answer GET /health"):
        relics.start_relic(rt, start_request(health_timeout_seconds=0.2), "r1")

    assert engine.find_container("orch-relic-2-s1-db") is None
    with pytest.raises(RelicNotFound):
        relics.lookup(rt.redis, "r1")


def test_a_health_timeout_above_the_server_maximum_is_refused_before_anything_starts(
    rt, engine, probes
):
    with pytest.raises(
        LimitExceeded,
        match="health_timeout_seconds: 601 is above the server maximum 600 "
        r"\(ORCHESTRATOR_RELIC_MAX_HEALTH_TIMEOUT_SECONDS\)",
    ):
        relics.start_relic(rt, start_request(health_timeout_seconds=601), "r1")

    assert engine.called("create_container") == []
    assert engine.find_network("session_s1") is None


def test_another_relic_of_the_same_name_is_a_conflict(rt, engine, probes):
    first = relics.start_relic(rt, start_request(), "r1")

    with pytest.raises(RelicConflict, match="relic_name: the session already has relic r1"):
        relics.start_relic(rt, start_request(), "r2")

    assert engine.inspect_container("orch-relic-2-s1-db").id == first.container_id
    assert engine.inspect_container(first.container_id).running


def test_starting_the_same_relic_again_resumes_its_container(rt, engine, probes):
    first = relics.start_relic(rt, start_request(), "r1")

    again = relics.start_relic(rt, start_request(), "r1")

    assert again.container_id == first.container_id and again.healthy
    assert len(engine.called("create_container")) == 1
    assert len(engine.called("start_container")) == 1


def test_an_exited_container_of_the_same_relic_is_replaced(rt, engine, probes):
    first = relics.start_relic(rt, start_request(), "r1")
    engine.stop_container(first.container_id, 0)

    again = relics.start_relic(rt, start_request(), "r1")

    assert again.container_id != first.container_id and again.status == "running"


def test_named_volumes_are_scoped_to_the_session_and_labelled(redis, rt, engine, probes, tmp_path):
    settings = Settings(host_name="h1", allowed_volume_roots=[str(tmp_path)])
    with_binds = Runtime(settings, redis, engine=engine)
    volumes = [
        {"source": "data", "target": "/data"},
        {"source": str(tmp_path), "target": "/in", "read_only": True},
    ]

    relics.start_relic(with_binds, start_request(volumes=volumes), "r1")

    volume = engine.inspect_volume("orch-vol-2-s1-data")
    assert volume.labels["orchestrator.session"] == "s1"
    assert volume.labels["orchestrator.kind"] == "volume"
    assert volume.labels["orchestrator.managed"] == "true"
    assert volume.labels["orchestrator.volume"] == "data"
    spec = engine.called("create_container")[0][0]
    mounts = {(m.source, m.target, m.read_only, m.kind) for m in spec.mounts}
    assert mounts == {
        ("orch-vol-2-s1-data", "/data", False, "volume"),
        (str(tmp_path), "/in", True, "bind"),
    }


def test_an_existing_session_volume_is_reused_as_it_is(rt, engine, probes):
    volume = [{"source": "data", "target": "/d"}]
    relics.start_relic(rt, start_request(volumes=volume), "r1")
    relics.remove_relic(rt, "r1")

    relics.start_relic(rt, start_request(volumes=volume), "r2")

    assert engine.called("create_volume") == [("orch-vol-2-s1-data",)]
    assert engine.called("create_container")[-1][0].mounts[0].source == "orch-vol-2-s1-data"


def test_a_volume_under_the_old_name_is_used_only_when_it_is_the_sessions(rt, engine, probes):
    engine.create_volume("orch-s1-data", {"mine": "yes"})  # not the session's: never used
    engine.create_volume(
        "orch-s1-logs",
        {
            "orchestrator.managed": "true",
            "orchestrator.kind": "volume",
            "orchestrator.session": "s1",
        },
    )
    volumes = [{"source": "data", "target": "/d"}, {"source": "logs", "target": "/l"}]

    relics.start_relic(rt, start_request(volumes=volumes), "r1")

    sources = [m.source for m in engine.called("create_container")[0][0].mounts]
    assert sources == ["orch-vol-2-s1-data", "orch-s1-logs"]
    assert engine.inspect_volume("orch-s1-data").labels == {"mine": "yes"}


def test_published_ports_join_the_default_bridge_before_the_start(rt, engine, probes):
    info = relics.start_relic(rt, start_request(ports={8000: 28000}), "r1")

    assert info.ports == {"8000/tcp": 28000}
    assert info.network == "session_s1"
    connect = [(name, args) for name, args in engine.calls if name == "connect_network"]
    assert connect == [("connect_network", ("bridge", info.container_id))]
    names = [name for name, _ in engine.calls]
    assert names.index("connect_network") < names.index("start_container")
    assert set(engine.inspect_container(info.container_id).networks) == {"session_s1", "bridge"}


def test_without_a_private_network_the_relic_uses_the_default_bridge(redis, engine, probes):
    engine.add_image(SERVICE, FakeProgram(run_seconds=None, stdout=b"serving\n"))
    bridge = Settings(host_name="h1", allowed_network_modes=["none", "session", "bridge"])
    rt = Runtime(bridge, redis, engine=engine)  # an operator allowed the default bridge
    info = relics.start_relic(rt, start_request(create_private_network=False), "r1")

    assert info.network is None
    assert info.internal_url == f"http://{info.ip_address}:8000"
    assert engine.find_network("session_s1") is None
    assert engine.called("create_container")[0][0].network == "bridge"


def test_info_probes_a_running_relic_and_reports_a_removed_one(rt, engine, probes):
    started = relics.start_relic(rt, start_request(), "r1")
    probes.calls.clear()

    assert relics.relic_info(rt, "r1").healthy is True
    assert probes.calls == [(started.ip_address, 8000, "/health")]
    probes.healthy = False
    assert relics.relic_info(rt, "r1").healthy is False

    engine.remove_container(started.container_id)
    gone = relics.relic_info(rt, "r1")
    assert (gone.status, gone.container_name, gone.relic_name) == (
        "removed",
        "orch-relic-2-s1-db",
        "db",
    )
    assert gone.container_id is None and gone.host == "h1"


def test_stop_then_remove(rt, engine, probes):
    relics.start_relic(rt, start_request(), "r1")

    stopped = relics.stop_relic(rt, "r1", timeout_seconds=3)

    assert (stopped.status, stopped.healthy) == ("stopped", False)
    assert engine.called("stop_container")[-1][1] == 3
    assert relics.relic_info(rt, "r1").status == "stopped"
    assert relics.remove_relic(rt, "r1") == {"relic_id": "r1", "removed": True}
    assert engine.find_container("orch-relic-2-s1-db") is None
    with pytest.raises(RelicNotFound):
        relics.relic_info(rt, "r1")


def test_removing_a_relic_whose_container_is_gone_reports_it_and_forgets_it(rt, engine, probes):
    started = relics.start_relic(rt, start_request(), "r1")
    engine.remove_container(started.container_id)

    assert relics.remove_relic(rt, "r1") == {"relic_id": "r1", "removed": False}
    assert not rt.redis.sismember(keys.session_relics("s1"), "r1")


def test_local_relics_lists_this_hosts_relics_of_one_session_or_all(rt, engine, probes):
    relics.start_relic(rt, start_request("db"), "r1")
    relics.start_relic(rt, start_request("cache"), "r2")
    relics.start_relic(rt, start_request("db", session_id="s2"), "r3")

    mine = relics.local_relics(rt, "s1")
    every = relics.local_relics(rt, None)

    assert sorted((r.relic_id, r.relic_name) for r in mine) == [("r1", "db"), ("r2", "cache")]
    assert all(r.healthy and r.status == "running" for r in mine)
    assert sorted(r.relic_id for r in every) == ["r1", "r2", "r3"]
