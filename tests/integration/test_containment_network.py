"""Containment of networks, published ports, quotas and credentials, attacked as an attacker
would (every request field chosen by a language model) and judged on the victim: the
service on the bridge gateway that a refused container would have reached, the interface
a published port answers on, the other sessions that must keep working, the Flower that
a rebinding web page reaches with the documented password."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

from orchestrator import OrchestratorClient
from orchestrator.engine.hosts_file import LOOPBACK_HOSTS, VOLUME
from orchestrator.errors import Forbidden, LimitExceeded, QuotaExceeded
from orchestrator.settings import Settings
from orchestrator.state.quotas import Quotas, release_session
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    REDIS_URL,
    ROOT,
    TEST_IMAGE,
    Listener,
    WorkerProcess,
    assert_only_its_loopback,
    bridge_gateway,
    force_remove_managed,
    gateway_listener,
    gone,
    listed,
    listener_on,
    no_network_probe,
    settings_env,
    tool,
)

EXECUTE = "orchestrator.tools.execute"
START = "orchestrator.relics.start"
HTTPD = "mkdir -p /www && echo ok > /www/health && exec httpd -f -p 8000 -h /www"


def relic(session_id: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "relic_name": name,
        "session_id": session_id,
        "image": TEST_IMAGE,
        "command": ["sh", "-c", HTTPD],
        "health_timeout_seconds": 20,
        "resource_limits": {"memory_mb": 64},
        **extra,
    }


def session_containers(docker_client: docker.DockerClient, session_id: str) -> list[str]:
    label = {"label": f"orchestrator.session={session_id}"}
    return [c.name for c in listed(docker_client, label)]


def new_session() -> str:
    return f"cn-{uuid.uuid4().hex[:10]}"


# -- the victim: a service on the default bridge's gateway (the host, seen from a container) --


@pytest.fixture(scope="module")
def gateway(docker_client: docker.DockerClient) -> Iterator[Listener]:
    """A host service on the default bridge's gateway address."""
    with gateway_listener(docker_client) as listener:
        yield listener


def reach(listener: Listener, marker: str) -> str:
    """A shell line sending ``marker`` to the listener, whatever network it is on."""
    return f"echo {marker} | nc -w 3 {listener.address} {listener.port}; echo sent"


@pytest.fixture(scope="module")
def bridge_worker(
    services: None, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[WorkerProcess]:
    """The control: a worker whose operator allowed the default bridge, on its own queue."""
    name = f"it-bridge-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    env = {"ORCHESTRATOR_ALLOWED_NETWORK_MODES": "none,session,bridge"}
    process = WorkerProcess(
        name, tmp_path_factory.mktemp("logs-bridge"), env=env, args=("-Q", f"host.{name}")
    ).start()
    yield process
    process.stop()
    force_remove_managed(docker_client, name)


def test_a_tool_asking_the_default_bridge_is_refused_and_reaches_nothing(
    client: OrchestratorClient,
    bridge_worker: WorkerProcess,
    gateway: Listener,
    docker_client: docker.DockerClient,
) -> None:
    # The control: where an operator allows it, this very request reaches the host service.
    control = tool(new_session(), reach(gateway, "control-tool"), network_mode="bridge")
    done = client.app.send_task(EXECUTE, args=[control], queue=f"host.{bridge_worker.host_name}")
    assert done.get(timeout=60)["status"] == "succeeded"
    deadline = time.monotonic() + 5
    while b"control-tool\n" not in gateway.received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert b"control-tool\n" in gateway.received, "the control never reached the gateway"

    session_id = new_session()
    attack = tool(session_id, reach(gateway, "attack-tool"), network_mode="bridge")
    with pytest.raises(Forbidden) as refused:
        client.run_tool(attack, timeout=60)
    message = str(refused.value)
    assert message.startswith("network_mode: 'bridge' is not allowed")
    assert "ORCHESTRATOR_ALLOWED_NETWORK_MODES" in message
    with pytest.raises(Forbidden, match="network_mode"):  # raw, past any client check
        client.app.send_task(EXECUTE, args=[attack]).get(timeout=60)
    time.sleep(1)
    assert b"attack-tool\n" not in gateway.received
    assert gone(lambda: session_containers(docker_client, session_id)) == []  # nothing started


def test_a_tool_without_a_network_has_only_its_own_loopback(
    client: OrchestratorClient, gateway: Listener
) -> None:
    """The default ``network_mode="none"``: a namespace of its own (made by the runtime,
    without the engine's network sandbox) holding only a loopback, where ``localhost``
    resolves. The victims: this host's service on the bridge gateway and one on the host's
    loopback (which a container in the host's namespace would reach)."""
    with listener_on("127.0.0.1") as host_loopback:
        # Limits no other test asks: a pool of its own, so this first run is a cold one.
        limits = {"memory_mb": 88, "cpu_limit": 0.3}
        victims = [gateway, host_loopback]
        request = tool(new_session(), no_network_probe(victims, "cold"), resource_limits=limits)
        result = client.run_tool(request, timeout=60)
        assert_only_its_loopback(result.stdout, victims, "cold")


def test_two_tools_without_a_network_cannot_reach_each_others_loopback(
    client: OrchestratorClient,
) -> None:
    """The victim serves a secret on its loopback for a few seconds; the attacker, running
    at the same time, connects to the same port on its own ``localhost``."""
    victim = tool(
        new_session(),
        "nc -ll -p 7788 -e echo victim-secret & server=$!; sleep 5; "
        "echo | nc -w 2 localhost 7788; kill $server",  # the control: it was serving
    )
    attacker = tool(new_session(), "sleep 1; echo x | nc -w 2 localhost 7788 || echo refused")
    with ThreadPoolExecutor(2) as running:
        served = running.submit(client.run_tool, victim, timeout=60)
        time.sleep(0.5)
        attacked = running.submit(client.run_tool, attacker, timeout=60)
        assert served.result().stdout == "victim-secret\n"
        assert attacked.result().stdout == "refused\n"


def test_a_tool_cannot_change_the_hosts_file_the_others_get(client: OrchestratorClient) -> None:
    """Containers without a network share one ``/etc/hosts`` of the engine's host, mounted
    read-only: the attacker (root in its container) tries to point ``localhost`` elsewhere
    for every later tool; the victim, run after it, still reaches its own loopback."""
    poison = "echo '10.9.9.9 localhost' >> /etc/hosts || echo refused; cat /etc/hosts"
    attacked = client.run_tool(tool(new_session(), poison), timeout=60)
    assert attacked.stdout.startswith("refused\n127.0.0.1\tlocalhost\n"), attacked
    assert "10.9.9.9" not in attacked.stdout
    victim = client.run_tool(tool(new_session(), "cat /etc/hosts"), timeout=60)
    assert victim.stdout == LOOPBACK_HOSTS


def test_a_pruned_hosts_volume_leaves_runs_their_localhost(
    client: OrchestratorClient, docker_client: docker.DockerClient
) -> None:
    """``docker volume prune`` removes the shared file's volume (no container uses it as a
    volume): the next run gets the file uploaded, and the one after it writes it again."""
    probe = "nc -ll -p 7777 -e echo up & s=$!; sleep 0.3; "
    probe += "echo hi | nc -w 2 localhost 7777; kill $s; cat /etc/hosts"
    client.run_tool(tool(new_session(), "true"), timeout=60)  # the volume is there
    docker_client.volumes.get(VOLUME).remove()
    for _ in range(2):
        result = client.run_tool(tool(new_session(), probe), timeout=60)
        assert result.stdout == "up\n" + LOOPBACK_HOSTS, result
    assert docker_client.volumes.get(VOLUME).name == VOLUME  # written again


def test_a_relic_without_its_private_network_is_refused_and_reaches_nothing(
    client: OrchestratorClient, gateway: Listener, docker_client: docker.DockerClient
) -> None:
    session_id = new_session()
    script = f"{reach(gateway, 'attack-relic')}; {HTTPD}"
    attack = relic(session_id, "web", command=["sh", "-c", script], create_private_network=False)

    with pytest.raises(Forbidden, match=r"^create_private_network: false .*ALLOWED_NETWORK_MODES"):
        client.start_relic(attack, timeout=60)

    time.sleep(1)
    assert b"attack-relic\n" not in gateway.received
    assert gone(lambda: session_containers(docker_client, session_id)) == []
    client.cleanup_session(session_id)


# -- published ports ----------------------------------------------------------------------


def free_port_in_range(low: int = 20000, high: int = 30000) -> int:
    for port in range(low + uuid.uuid4().int % (high - low - 100), high):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in the range")


def outside_addresses(docker_client: docker.DockerClient) -> list[str]:
    """Addresses of this host that are not loopback: the default bridge's gateway (what
    containers reach) and the address of the default route (what the LAN reaches)."""
    found = [bridge_gateway(docker_client)]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only the route is looked up
            found.append(str(probe.getsockname()[0]))
    except OSError:  # no default route on this machine
        pass
    return [address for address in found if not address.startswith("127.")]


def answers(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def test_a_published_port_is_bound_on_loopback_only(
    client: OrchestratorClient, docker_client: docker.DockerClient
) -> None:
    session_id = new_session()
    port = free_port_in_range()
    try:
        info = client.start_relic(relic(session_id, "web", ports={8000: port}), timeout=60)
        container = docker_client.containers.get(info.container_id)
        bound = container.attrs["NetworkSettings"]["Ports"]["8000/tcp"]
        assert [(b["HostIp"], b["HostPort"]) for b in bound] == [("127.0.0.1", str(port))]
        assert container.attrs["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostIp"] == (
            "127.0.0.1"
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as reply:
            assert reply.read() == b"ok\n"
        for address in outside_addresses(docker_client):
            assert not answers(address, port), f"{address}:{port} answers: not only loopback"
    finally:
        client.cleanup_session(session_id)


@pytest.mark.parametrize(
    ("ports", "error", "field"),
    [
        ({8000: 80}, Forbidden, r"^ports\.8000: host port 80 is privileged"),
        ({8000: 8080}, Forbidden, r"^ports\.8000: host port 8080 is outside .*PORT_RANGE"),
        ({8000: 45000}, Forbidden, r"^ports\.8000: host port 45000 is outside"),
        ({8000 + n: 21000 + n for n in range(5)}, LimitExceeded, r"^ports: 5 .*MAX_PORTS"),
    ],
)  # fmt: skip
def test_published_ports_outside_the_policy_are_refused_and_nothing_listens(
    client: OrchestratorClient,
    docker_client: docker.DockerClient,
    ports: dict[int, int],
    error: type[Exception],
    field: str,
) -> None:
    session_id = new_session()
    listening_before = {p for p in ports.values() if answers("127.0.0.1", p)}
    with pytest.raises(error, match=field):
        client.app.send_task(START, args=[relic(session_id, "web", ports=ports)]).get(timeout=60)
    assert gone(lambda: session_containers(docker_client, session_id)) == []
    assert {p for p in ports.values() if answers("127.0.0.1", p)} == listening_before
    client.cleanup_session(session_id)


# -- request size -------------------------------------------------------------------------


def test_a_ten_megabyte_environment_value_is_refused_and_starts_nothing(
    client: OrchestratorClient, docker_client: docker.DockerClient
) -> None:
    session_id = new_session()
    huge = tool(session_id, "echo $BIG | wc -c", environment={"BIG": "x" * (10 * 1024 * 1024)})

    with pytest.raises(LimitExceeded, match=r"ORCHESTRATOR_MAX_REQUEST_BYTES"):
        client.app.send_task(EXECUTE, args=[huge]).get(timeout=120)

    assert gone(lambda: session_containers(docker_client, session_id)) == []
    fine = tool(session_id, "echo $SMALL", environment={"SMALL": "x" * 1000})
    assert client.run_tool(fine, timeout=60).stdout == "x" * 1000 + "\n"


# -- quotas -------------------------------------------------------------------------------

QUOTAS = {
    "ORCHESTRATOR_SESSION_MAX_CONTAINERS": "3",
    "ORCHESTRATOR_SESSION_MAX_RELICS": "2",
    "ORCHESTRATOR_SESSION_MAX_MEMORY_MB": "400",
    "ORCHESTRATOR_HOST_MAX_MEMORY_MB": "1000",
    "ORCHESTRATOR_HOST_MAX_RELIC_STARTS": "1",
}


@pytest.fixture(scope="module")
def quota_worker(
    services: None, tmp_path_factory: pytest.TempPathFactory, docker_client: docker.DockerClient
) -> Iterator[WorkerProcess]:
    """A worker with small quotas, fed only through its own host queue."""
    name = f"it-quota-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    process = WorkerProcess(
        name, tmp_path_factory.mktemp("logs-quota"), env=QUOTAS, args=("-Q", f"host.{name}")
    ).start()
    yield process
    process.stop()
    force_remove_managed(docker_client, name)


class Sender:
    """Raw messages to the quota worker's queue, as any Celery client can send them."""

    def __init__(self, client: OrchestratorClient, worker: WorkerProcess) -> None:
        self.client = client
        self.queue = f"host.{worker.host_name}"
        self.sessions: list[str] = []

    def session(self) -> str:
        self.sessions.append(new_session())
        return self.sessions[-1]

    def send(self, task: str, payload: dict[str, Any]) -> Any:
        return self.client.app.send_task(task, args=[payload], queue=self.queue)

    def sleeper(self, session_id: str, memory_mb: int = 64) -> Any:
        limits = {"memory_mb": memory_mb, "timeout_seconds": 120}
        return self.send(EXECUTE, tool(session_id, "sleep 90", resource_limits=limits))

    def quick(self, session_id: str, memory_mb: int = 64) -> dict[str, Any]:
        limits = {"memory_mb": memory_mb}
        run = self.send(EXECUTE, tool(session_id, "echo ok", resource_limits=limits))
        result: dict[str, Any] = run.get(timeout=60)
        return result


@pytest.fixture
def sender(client: OrchestratorClient, quota_worker: WorkerProcess) -> Iterator[Sender]:
    sent = Sender(client, quota_worker)
    yield sent
    for session_id in sent.sessions:
        client.cleanup_session(session_id, timeout=120)


def wait_running(docker_client: docker.DockerClient, session_id: str, count: int) -> None:
    label = {"label": f"orchestrator.session={session_id}", "status": "running"}
    deadline = time.monotonic() + 60
    while len(listed(docker_client, label, all=False)) < count:
        assert time.monotonic() < deadline, f"{count} containers of {session_id} never ran"
        time.sleep(0.2)


def outcome(sent: Any) -> str:
    """``ran`` for a result, else the error's type and text."""
    try:
        sent.get(timeout=150)
    except Exception as exc:  # noqa: BLE001 - the refusal is what we look at
        return f"{type(exc).__name__}: {exc}"
    return "ran"


def test_concurrent_runs_of_one_session_never_pass_its_container_quota_together(
    sender: Sender, docker_client: docker.DockerClient
) -> None:
    session_id = sender.session()
    burst = [sender.sleeper(session_id) for _ in range(8)]  # one burst: 16 worker threads
    wait_running(docker_client, session_id, 3)
    time.sleep(2)  # every message of the burst was taken by then
    assert len(session_containers(docker_client, session_id)) == 3  # never a fourth
    other = sender.session()
    assert sender.quick(other)["status"] == "succeeded"  # other sessions keep working
    sender.client.cleanup_session(session_id, timeout=120)  # ends the three sleepers
    outcomes = [outcome(sent) for sent in burst]
    refused = [o for o in outcomes if o.startswith("QuotaExceeded")]
    assert len(refused) == 5, outcomes
    assert all("ORCHESTRATOR_SESSION_MAX_CONTAINERS" in o for o in refused)
    assert sender.quick(session_id)["status"] == "succeeded"  # the share came back


def test_a_session_holds_at_most_its_relics_and_others_still_start_theirs(
    sender: Sender, docker_client: docker.DockerClient
) -> None:
    session_id = sender.session()
    first = sender.send(START, relic(session_id, "a")).get(timeout=60)
    sender.send(START, relic(session_id, "b")).get(timeout=60)

    with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_SESSION_MAX_RELICS"):
        sender.send(START, relic(session_id, "c")).get(timeout=60)
    assert len(session_containers(docker_client, session_id)) == 2

    other = sender.session()
    assert sender.send(START, relic(other, "a")).get(timeout=60)["healthy"] is True
    sender.client.remove_relic(first["relic_id"], timeout=60)
    assert sender.send(START, relic(session_id, "c")).get(timeout=60)["healthy"] is True


def test_a_session_commits_at_most_its_memory(
    sender: Sender, docker_client: docker.DockerClient
) -> None:
    session_id = sender.session()
    big = sender.sleeper(session_id, memory_mb=300)
    wait_running(docker_client, session_id, 1)

    refused = outcome(sender.sleeper(session_id, memory_mb=200))

    assert refused.startswith("QuotaExceeded: resource_limits.memory_mb: 200 MB more would")
    assert "ORCHESTRATOR_SESSION_MAX_MEMORY_MB" in refused
    assert sender.quick(session_id, memory_mb=64)["status"] == "succeeded"  # 364 MB fit
    assert sender.quick(sender.session(), memory_mb=300)["status"] == "succeeded"
    sender.client.cleanup_session(session_id, timeout=120)
    big.get(timeout=60)


def test_a_host_commits_at_most_its_memory(
    sender: Sender, docker_client: docker.DockerClient
) -> None:
    first, second, third = sender.session(), sender.session(), sender.session()
    sleepers = [sender.sleeper(first, 350), sender.sleeper(second, 350)]
    wait_running(docker_client, first, 1)
    wait_running(docker_client, second, 1)

    refused = outcome(sender.sleeper(third, 350))

    assert refused.startswith("QuotaExceeded: resource_limits.memory_mb: 350 MB more would")
    assert "ORCHESTRATOR_HOST_MAX_MEMORY_MB" in refused
    assert gone(lambda: session_containers(docker_client, third)) == []
    assert sender.quick(third, memory_mb=200)["status"] == "succeeded"  # what fits runs
    for session_id in (first, second):
        sender.client.cleanup_session(session_id, timeout=120)
    for sent in sleepers:
        sent.get(timeout=60)


def test_relic_health_waits_cannot_take_every_worker_thread(
    sender: Sender, docker_client: docker.DockerClient
) -> None:
    stuck_session = sender.session()
    mute = relic(
        stuck_session, "mute", command=["sh", "-c", "sleep 600"], health_timeout_seconds=60
    )
    stuck = sender.send(START, mute)
    wait_running(docker_client, stuck_session, 1)  # now it waits for a health answer

    started = time.monotonic()
    with pytest.raises(QuotaExceeded, match="ORCHESTRATOR_HOST_MAX_RELIC_STARTS"):
        sender.send(START, relic(sender.session(), "web")).get(timeout=60)
    assert time.monotonic() - started < 30  # refused at once, no thread held for it
    assert sender.quick(sender.session())["status"] == "succeeded"  # threads remain for tools

    sender.client.cleanup_session(stuck_session, timeout=120)
    assert outcome(stuck) != "ran"
    later = sender.session()
    assert sender.send(START, relic(later, "web")).get(timeout=60)["healthy"] is True


def test_concurrent_acquisitions_on_real_redis_never_overshoot(services: None) -> None:
    store = redis.Redis.from_url(REDIS_URL)
    host = f"it-q-{uuid.uuid4().hex[:6]}"
    settings = Settings.from_env(
        {}, host_name=host, session_max_containers=5, session_max_memory_mb=100_000
    )
    session_id = new_session()

    def take(n: int) -> bool:
        try:
            Quotas(store, settings).acquire(
                f"h{n}", session_id=session_id, kind="tool", memory_mb=1,
                expires_at=time.time() + 60,
            )  # fmt: skip
            return True
        except QuotaExceeded:
            return False

    try:
        with ThreadPoolExecutor(max_workers=40) as pool:
            taken = list(pool.map(take, range(200)))
        assert sum(taken) == 5
    finally:
        release_session(store, session_id)
        store.close()


# -- Flower: default credentials and the Host header ---------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flower_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **settings_env(f"it-flower-{uuid.uuid4().hex[:6]}")}
    for name in [n for n in env if n.startswith(("FLOWER_", "ORCHESTRATOR_FLOWER_"))]:
        del env[name]
    env.pop("ORCHESTRATOR_DEV_ALLOW_DEFAULT_CREDENTIALS", None)
    env.update(extra)
    return env


class FlowerProcess:
    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.port = free_port()
        self.log_path = log_path
        command = [sys.executable, "-m", "celery", "-A", "worker", "flower"]
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*command, f"--port={self.port}", "--address=127.0.0.1", *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def get(self, path: str, host: str | None = None, auth: str | None = None) -> int:
        headers = {}
        if host is not None:
            headers["Host"] = host
        if auth is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()

    def wait_answering(self, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"flower exited; log:\n{self.log()}"
            try:
                if self.get("/healthcheck") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"flower did not answer; log:\n{self.log()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.mark.parametrize(
    "credentials",
    [
        {},  # nothing set: the Settings default admin:orchestrator
        {"ORCHESTRATOR_FLOWER_BASIC_AUTH": "admin:orchestrator"},
        {"FLOWER_BASIC_AUTH": "admin:orchestrator"},  # Flower's own variable
        {"ORCHESTRATOR_FLOWER_BASIC_AUTH": "ops:"},  # no password
    ],
)
def test_flower_with_default_credentials_refuses_to_start(
    services: None, tmp_path: Path, credentials: dict[str, str]
) -> None:
    flower = FlowerProcess(flower_env(**credentials), tmp_path / "flower.log")
    try:
        code = flower.proc.wait(60)
    finally:
        flower.stop()
    log = flower.log()
    assert code != 0, log
    assert "Flower refuses to start" in log and "ORCHESTRATOR_FLOWER_BASIC_AUTH" in log, log
    assert "ORCHESTRATOR_DEV_ALLOW_DEFAULT_CREDENTIALS" in log
    with pytest.raises(OSError):
        flower.get("/healthcheck")  # nothing ever listened


def test_flower_with_default_credentials_starts_under_the_development_flag(
    services: None, tmp_path: Path
) -> None:
    env = flower_env(ORCHESTRATOR_DEV_ALLOW_DEFAULT_CREDENTIALS="true")
    flower = FlowerProcess(env, tmp_path / "flower.log")
    try:
        flower.wait_answering()
        assert flower.get("/api/workers", auth="admin:orchestrator") == 200
    finally:
        flower.stop()


@pytest.fixture(scope="module")
def flower(services: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowerProcess]:
    env = flower_env(ORCHESTRATOR_FLOWER_BASIC_AUTH="ops:s3cret-pass")
    process = FlowerProcess(env, tmp_path_factory.mktemp("flower") / "flower.log")
    try:
        process.wait_answering()
        yield process
    finally:
        process.stop()


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example",  # a page that rebound its own name to 127.0.0.1
        "attacker.example:{port}",
        "localhost.attacker.example:{port}",
        "10.0.0.7:{port}",
    ],
)
def test_flower_refuses_a_foreign_host_header_even_with_the_password(
    flower: FlowerProcess, host: str
) -> None:
    header = host.format(port=flower.port)
    for path in ("/api/workers", "/", "/tasks", "/metrics", "/static/css/flower.css"):
        assert flower.get(path, host=header, auth="ops:s3cret-pass") == 400, (path, header)


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "LOCALHOST", "[::1]"])
def test_flower_answers_the_names_it_serves(flower: FlowerProcess, host: str) -> None:
    header = host.format(port=flower.port)
    assert flower.get("/api/workers", host=header, auth="ops:s3cret-pass") == 200
    assert flower.get("/api/workers", host=header) == 401  # and still asks for the password


def test_flower_healthcheck_answers_any_host_for_probes(flower: FlowerProcess) -> None:
    assert flower.get("/healthcheck", host="172.18.0.5:5555") == 200


def test_an_operator_adds_the_name_flower_is_served_by(services: None, tmp_path: Path) -> None:
    env = flower_env(
        ORCHESTRATOR_FLOWER_BASIC_AUTH="ops:s3cret-pass",
        ORCHESTRATOR_FLOWER_ALLOWED_HOSTS="flower.internal,localhost",
    )
    flower = FlowerProcess(env, tmp_path / "flower.log")
    try:
        flower.wait_answering()
        assert flower.get("/api/workers", host="flower.internal", auth="ops:s3cret-pass") == 200
        assert flower.get("/api/workers", host="127.0.0.1", auth="ops:s3cret-pass") == 200
        assert flower.get("/api/workers", host="other.internal", auth="ops:s3cret-pass") == 400
    finally:
        flower.stop()
