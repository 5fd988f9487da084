"""Real processes for integration tests: workers on Docker hosts, service checks, leak checks."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest
import redis

from orchestrator.protocol import Kind, label

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("ORCHESTRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The broker of the workers and clients under test: Redis unless a pass sets another
# (scripts/test.sh runs part of the suite again on RabbitMQ); REDIS_URL stays the backend.
BROKER_URL = os.environ.get("ORCHESTRATOR_TEST_BROKER_URL") or REDIS_URL
T = TypeVar("T")

TEST_IMAGE = "orchestrator-test/busybox:latest"
#: The Fernet key workers and clients share in the tests (secret_parameters travel encrypted).
TEST_SECRET_KEY = "x8kY2s1b0dXpQm9aXG0tqB6o3mQh1kQWm2m4T9cFv1E="
MANAGED = "orchestrator.managed=true"


def require(ok: bool, what: str) -> None:
    """Fail when CI is set, skip otherwise, if a needed service is missing."""
    if ok:
        return
    message = f"{what} is not available; run `scripts/setup.sh` first"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def redis_ok(url: str = REDIS_URL) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def docker_ok(base_url: str | None = None) -> bool:
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
        client.ping()
        client.images.get(TEST_IMAGE)
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable"
        return False


def settings_env(host_name: str, **extra: str) -> dict[str, str]:
    """Environment for a worker or client in the tests: fast leases and heartbeats."""
    env = {
        "ORCHESTRATOR_BROKER_URL": BROKER_URL,
        "ORCHESTRATOR_RESULT_BACKEND": REDIS_URL,
        "ORCHESTRATOR_HOST_NAME": host_name,
        "ORCHESTRATOR_WORKER_CONCURRENCY": "16",
        "ORCHESTRATOR_LEASE_SECONDS": "6",
        "ORCHESTRATOR_REAPER_INTERVAL_SECONDS": "1",
        "ORCHESTRATOR_HEARTBEAT_SECONDS": "1",
        "ORCHESTRATOR_HOST_TTL_SECONDS": "5",
        "ORCHESTRATOR_MAX_MEMORY_MB": "2048",
        "ORCHESTRATOR_MAX_TIMEOUT_SECONDS": "600",
        "ORCHESTRATOR_NETWORK_GRACE_SECONDS": "1",
        # Memory limits, not use: the load test commits 16 x 512 MB per host, more than the
        # default host quota (the machine's memory) on a small CI machine.
        "ORCHESTRATOR_HOST_MAX_MEMORY_MB": "65536",
        # The load test runs 300 tools of one session, 32 at a time: quota tests start their
        # own workers with small limits.
        "ORCHESTRATOR_SESSION_MAX_CONTAINERS": "256",
        "ORCHESTRATOR_SESSION_MAX_MEMORY_MB": "131072",
        "ORCHESTRATOR_SECRET_KEY": TEST_SECRET_KEY,
        # No pool sized from demand: a test's repeated runs stay cold (and a worker a test
        # kills leaves no idle pool container); the pool tests turn it on.
        "ORCHESTRATOR_POOL_MEMORY_MB": "0",
    }
    env.update(extra)
    return env


class WorkerProcess:
    """A real ``celery -A worker worker`` process, optionally inside a network namespace."""

    def __init__(
        self,
        host_name: str,
        log_dir: Path,
        env: dict[str, str] | None = None,
        netns: str | None = None,
        docker_host: str | None = None,
        args: tuple[str, ...] = (),
        registry_url: str | None = None,
    ) -> None:
        self.host_name = host_name
        self.registry_url = registry_url or REDIS_URL
        self.log_path = log_dir / f"worker-{host_name}-{uuid.uuid4().hex[:6]}.log"
        self.env = {**os.environ, **settings_env(host_name), **(env or {})}
        if docker_host:
            self.env["DOCKER_HOST"] = docker_host
        self.netns = netns
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_seconds: float = 30) -> WorkerProcess:
        command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-l", "info"]
        command += list(self.args)
        if self.netns:
            command = ["nsenter", f"--net=/var/run/netns/{self.netns}", *command]
        log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready(wait_seconds)
        return self

    def wait_ready(self, wait_seconds: float) -> None:
        """Wait for this host's heartbeat and the 'ready' line in the log."""
        r = redis.Redis.from_url(self.registry_url)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; log:\n{self.log()}")
            if r.exists(f"orch:host:{self.host_name}") and b"ready." in self.log_bytes():
                return
            time.sleep(0.2)
        raise RuntimeError(f"worker {self.host_name} not ready; log:\n{self.log()}")

    def log_bytes(self) -> bytes:
        return self.log_path.read_bytes() if self.log_path.exists() else b""

    def log(self) -> str:
        return self.log_bytes().decode(errors="replace")[-5000:]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the whole worker process group (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


NOTHING_LEFT: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}


@dataclass(frozen=True)
class Listed:
    """A container as the engine's list endpoint shows it."""

    id: str
    name: str
    labels: dict[str, str]
    state: str


def listed(client: Any, filters: dict[str, Any], *, all: bool = True) -> list[Listed]:
    """The containers matching ``filters``, read from the engine's list endpoint alone.

    docker-py's ``containers.list()`` inspects each container it lists, and Docker lists a
    container a moment before its inspect finds it (being created) and after it is gone
    (being removed): that inspect's 404 would fail a test that only asked what exists.
    """
    return [
        Listed(
            id=entry["Id"],
            name=(entry.get("Names") or ["/"])[0].lstrip("/"),
            labels=entry.get("Labels") or {},
            state=entry.get("State", ""),
        )
        for entry in client.api.containers(all=all, filters=filters)
    ]


def gone(probe: Callable[[], list[T]], timeout: float = 10) -> list[T]:
    """What ``probe`` lists once it lists nothing, or after ``timeout`` seconds.

    A finished tool run's container is removed right after its result, in the background
    behind the worker's other runs: a check that it is gone waits for that moment.
    """
    deadline = time.monotonic() + timeout
    while (found := probe()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def managed_leftovers(
    client: Any, host_label: str | None = None, *, idle_pool: bool = True
) -> dict[str, list[str]]:
    """Managed containers, networks and volumes still on an engine (optionally one host's).

    ``idle_pool=False`` leaves out warm-pool containers: a running worker keeps them as its
    host's state (sized from demand), and removes them when it stops.
    """
    filters = [MANAGED] + ([f"orchestrator.host={host_label}"] if host_label else [])
    containers = listed(client, {"label": filters})
    if not idle_pool:
        containers = [c for c in containers if c.labels.get(label("kind")) != Kind.POOL]
    networks = client.networks.list(filters={"label": filters})
    volumes = client.volumes.list(filters={"label": filters})
    return {
        "containers": sorted(c.name for c in containers),
        "networks": sorted(n.name for n in networks),
        "volumes": sorted(v.name for v in volumes),
    }


def engine_name(client: Any) -> str:
    """Which engine a Docker client talks to (its API base URL)."""
    return str(getattr(client.api, "base_url", "?"))


@dataclass
class Leak:
    """What one host left on one engine, found before any teardown removed it."""

    engine: str
    host: str
    objects: dict[str, list[str]]
    test: str  # the last test that had run when the leak was found
    where: str  # the teardown (or check) that found it

    def __str__(self) -> str:
        found = ", ".join(f"{kind}: {names}" for kind, names in self.objects.items() if names)
        on = f"with host label {self.host} on {self.engine}"
        return f"{found} {on}, left by {self.test} ({self.where})"


@dataclass
class LeakLedger:
    """Session-wide record of leftovers; tests/integration/test_zz_leaks.py asserts it is
    empty, and conftest's pytest_sessionfinish fails the run on leaks found after that."""

    leaks: list[Leak] = field(default_factory=list)
    #: how many leaks a leak check has already reported (later ones fail the session)
    reported: int = 0
    #: every (engine, host label) pair this suite recorded or used
    checked: set[tuple[str, str]] = field(default_factory=set)
    current_test: str = "(no test yet)"

    def unreported(self) -> list[Leak]:
        return self.leaks[self.reported :]


LEDGER = LeakLedger()


def record_leftovers(
    client: Any,
    host_label: str,
    where: str = "teardown",
    expected: dict[str, list[str]] | None = None,
    settle_seconds: float = 10,
) -> dict[str, list[str]]:
    """Record into LEDGER what a host left on an engine, and return it.

    Call it BEFORE anything force-removes that host's objects. Removals a worker finishes
    in the background get ``settle_seconds``. ``expected`` names objects a test leaves on
    purpose (each must then really be there: an expectation that no longer holds is a leak
    check that lost its teeth, and is recorded too).
    """
    if not host_label:
        raise ValueError("leak accounting is per host label; none given")
    expected = {kind: sorted(names) for kind, names in (expected or {}).items() if names}
    engine = engine_name(client)
    LEDGER.checked.add((engine, host_label))

    def unexpected(found: dict[str, list[str]]) -> dict[str, list[str]]:
        return {k: [n for n in v if n not in expected.get(k, [])] for k, v in found.items()}

    deadline = time.monotonic() + settle_seconds
    left = managed_leftovers(client, host_label)
    while any(unexpected(left).values()) and time.monotonic() < deadline:
        time.sleep(0.5)
        left = managed_leftovers(client, host_label)
    extra = unexpected(left)
    missing = {k: [n for n in v if n not in left.get(k, [])] for k, v in expected.items()}
    if any(extra.values()):
        LEDGER.leaks.append(Leak(engine, host_label, extra, LEDGER.current_test, where))
    if any(missing.values()):
        objects = {f"expected but absent {k}": v for k, v in missing.items() if v}
        LEDGER.leaks.append(Leak(engine, host_label, objects, LEDGER.current_test, where))
    return extra


def force_remove_managed(
    client: Any,
    host_label: str,
    where: str = "teardown",
    expected: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """Teardown: record what a test host left (LEDGER), then remove it; returns the record."""
    left = record_leftovers(client, host_label, where=where, expected=expected)
    remove_labelled(client, host_label)
    return left


def remove_labelled(client: Any, host_label: str, containers_only: bool = False) -> None:
    """Remove every container (then network and volume) labelled with ``host_label``,
    unrecorded: for what a test made itself, or after :func:`record_leftovers` took its
    record."""
    label = {"label": [f"orchestrator.host={host_label}"]}
    for container in client.containers.list(all=True, filters=label, ignore_removed=True):
        container.remove(force=True, v=True)
    if containers_only:
        return
    for network in client.networks.list(filters=label):
        network.remove()
    for volume in client.volumes.list(filters=label):
        volume.remove(force=True)


def remove_built_images(client: Any, requested_tag: str) -> None:
    """Teardown: remove the images builds made for ``requested_tag`` (a build's ``tag`` is
    only a label: the image is tagged ``orchestrator-build/<name>:<hash>``)."""
    label = {"label": [MANAGED, f"orchestrator.requested-tag={requested_tag}"]}
    for image in client.images.list(filters=label):
        client.images.remove(image.id, force=True)


def have(command: str) -> bool:
    return shutil.which(command) is not None


def tool(session_id: str, script: str, **extra: Any) -> dict[str, Any]:
    """A tool request that runs ``script`` with the test image's ``sh``.

    ``tool_name`` is ``sh`` unless given; other keywords are request fields.
    """
    return {
        "tool_name": extra.pop("tool_name", "sh"),
        "session_id": session_id,
        "image": TEST_IMAGE,
        "command": ["sh", "-c", script],
        **extra,
    }


# -- a private redis-server, as docker-compose.yml runs it ------------------------------------


def free_port(start: int = 6390) -> int:
    for port in range(start, start + 100):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for a private redis-server")


def shipped_appendfsync() -> str:
    """The ``--appendfsync`` docker-compose.yml gives its Redis when nothing overrides it:
    the word after ``--appendfsync`` in the redis service's command, or, when that is a
    variable (``$$NAME`` or ``${NAME...}``), the default its ``${NAME:-default}`` gets."""
    compose = (ROOT / "docker-compose.yml").read_text()
    found = re.search(r"--appendfsync\s+(?:-\s+)?\"?(\$\$\{?(\w+)|\$\{(\w+)|(\w+))", compose)
    assert found, "docker-compose.yml no longer passes --appendfsync to redis"
    literal, variable = found.group(4), found.group(2) or found.group(3)
    if literal:
        return literal
    default = re.search(rf"\$\{{{variable}:-(\w+)\}}", compose)
    assert default, f"docker-compose.yml gives {variable} (the --appendfsync) no default"
    return default.group(1)


class RedisServer:
    """A private redis-server with an append-only file, fsynced as docker-compose.yml ships."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_seconds: float = 20) -> RedisServer:
        command = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--appendonly", "yes",
            "--appendfsync", shipped_appendfsync(),
            "--save", "",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, start_new_session=True)
        deadline = time.monotonic() + wait_seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()}")
            if self.ping():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on {self.port} did not answer: {self.log()}")

    def ping(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def shutdown(self) -> None:
        """SHUTDOWN: the server flushes its append-only file and exits."""
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True)
        self._reap()

    def kill(self) -> None:
        """SIGKILL: only what the append-only file holds survives (everysec: up to ~1 s lost;
        the client re-sends what the broker lost, the lease and stored result stop reruns)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@contextmanager
def private_redis(start_port: int = 6390) -> Iterator[RedisServer]:
    """A started private redis-server on a free port, killed and its files removed after."""
    require(have("redis-server") and have("redis-cli"), "redis-server and redis-cli")
    directory = Path(tempfile.mkdtemp(prefix="orch-redis-"))
    server = RedisServer(free_port(start_port), directory)
    try:
        yield server.start()
    finally:
        server.kill()
        shutil.rmtree(directory, ignore_errors=True)


# -- counted runs: a tool that says each time it starts ----------------------------------------

EXECUTE = "orchestrator.tools.execute"


def counting_tool(session_id: str, runs: Path, seconds: int) -> dict[str, Any]:
    """A tool that appends ``start`` to ``runs/count``, sleeps, then prints ``{"ok": 1}``."""
    runs.mkdir(exist_ok=True)
    runs.chmod(0o777)
    return {
        "tool_name": "counted",
        "session_id": session_id,
        "image": TEST_IMAGE,
        "command": [
            "sh",
            "-c",
            f"echo start >> /runs/count; sleep {seconds}; echo '{{\"ok\": 1}}'",
        ],
        "volumes": [{"source": str(runs), "target": "/runs"}],
    }


class ContainerEvents:
    """The engine's container events carrying a label, recorded live from now on.

    Read back later with ``since``, events are only what the engine still keeps (its last
    256): on a machine shared by other test sessions a count of creations or starts would
    come out low, and a test of "started once" could not fail.

    Args:
        client: a docker-py client.
        label: ``key`` or ``key=value``, as the engine's ``label`` filter takes it.
    """

    def __init__(self, client: Any, label: str) -> None:
        filters = {"type": "container", "label": label}
        self._stream = client.events(since=int(time.time()), decode=True, filters=filters)
        self.seen: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                self.seen.append(event)
        except Exception:  # noqa: BLE001 - the stream was closed
            return

    def per(self, action: str, key: str) -> dict[str, int]:
        """How many ``action`` events (``create``, ``start`` ...) per value of label ``key``."""
        counts: dict[str, int] = {}
        for event in list(self.seen):
            value = event.get("Actor", {}).get("Attributes", {}).get(key)
            if event.get("Action") == action and value:  # relics carry an empty execution
                counts[value] = counts.get(value, 0) + 1
        return counts

    def count(self, action: str, key: str, value: str) -> int:
        """How many ``action`` events of containers labelled ``key=value``."""
        return self.per(action, key).get(value, 0)

    def close(self, settle_seconds: float = 1.0) -> None:
        """Stop recording, after ``settle_seconds`` for the last events to arrive."""
        time.sleep(settle_seconds)
        self._stream.close()
        self._thread.join(5)


def deliveries(worker: WorkerProcess, task_id: str, what: str = "received") -> int:
    """How many times a worker's log says a delivery of ``task_id`` was ``what``
    (Celery logs ``received``, ``ignored``, ``succeeded in`` ... at level info)."""
    return worker.log_bytes().count(f"[{task_id}] {what}".encode())


def wait_log(worker: WorkerProcess, task_id: str, what: str, times: int, timeout: float) -> None:
    """Wait until a worker's log says ``task_id`` was ``what`` at least ``times`` times."""
    deadline = time.monotonic() + timeout
    while deadline > time.monotonic():
        if deliveries(worker, task_id, what) >= times:
            return
        time.sleep(0.2)
    raise AssertionError(f"{task_id} was not {what} {times} times; log:\n{worker.log()}")


def wait_running(client: Any, execution_id: str, timeout: float = 30) -> None:
    """Wait until a run reports RUNNING (its container started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.app.AsyncResult(execution_id).state == "RUNNING":
            return
        time.sleep(0.1)
    raise AssertionError("the run never reached RUNNING")


@dataclass
class CountedRun:
    """A :func:`counting_tool` run sent to one host's queue, and what proves it ran once:
    its count file and the engine's events for its execution, recorded live."""

    runs: Path
    sent: Any  # the task's AsyncResult
    events: ContainerEvents

    @classmethod
    def send(
        cls, client: Any, engine: Any, host: str, shared_dir: Path, seconds: int, **options: Any
    ) -> CountedRun:
        """Send the run to ``host.<host>`` (``options`` go to ``send_task``)."""
        runs = shared_dir / f"count-{uuid.uuid4().hex[:8]}"
        task_id = str(uuid.uuid4())
        events = ContainerEvents(engine, f"orchestrator.execution={task_id}")
        request = counting_tool(host, runs, seconds)
        sent = client.app.send_task(
            EXECUTE, args=[request], queue=f"host.{host}", task_id=task_id, **options
        )
        return cls(runs, sent, events)

    def assert_ran_once(self, result: dict[str, Any]) -> None:
        """The run succeeded, its tool started once and one container was ever made."""
        self.events.close()
        assert result["status"] == "succeeded", result
        assert result["result"] == {"ok": 1}, result
        assert (self.runs / "count").read_text() == "start\n"  # the tool started once
        made = self.events.count("create", "orchestrator.execution", self.sent.id)
        started = self.events.count("start", "orchestrator.execution", self.sent.id)
        assert (made, started) == (1, 1), self.events.seen  # one container, started once


# -- a victim service on this host, as its containers see it ----------------------------------


class Listener:
    """A TCP service on an address of this host that records what reaches it: what cloud
    metadata, a database on the host or another tenant's service stands for."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.address, self.port = address, self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received.append(conn.recv(1024))
                except OSError:
                    self.received.append(b"")

    def got(self, needle: bytes, wait: float = 3) -> bool:
        """True once a connection brought ``needle`` (waiting up to ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if any(needle in chunk for chunk in self.received):
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def bridge_gateway(client: Any) -> str:
    """The default bridge's gateway: this host's address as its containers see it."""
    config = client.networks.get("bridge").attrs["IPAM"]["Config"][0]
    return str(config.get("Gateway") or next(ipaddress.ip_network(config["Subnet"]).hosts()))


@contextmanager
def listener_on(address: str) -> Iterator[Listener]:
    """A :class:`Listener` on ``address``, closed after."""
    listener = Listener(address)
    try:
        yield listener
    finally:
        listener.close()


def gateway_listener(client: Any) -> AbstractContextManager[Listener]:
    """A :class:`Listener` on the default bridge's gateway address, closed after."""
    return listener_on(bridge_gateway(client))


def no_network_probe(victims: list[Listener], marker: str) -> str:
    """A tool's shell script run without a network: it lists its interfaces, serves and
    reaches its own loopback by the name ``localhost``, then sends ``marker`` to each
    victim (this host's services: a container whose network namespace were the host's
    would reach one on ``127.0.0.1``). Its stdout: ``lo``, ``own-loopback``, then one
    ``unreachable`` per victim; the victims must receive nothing."""
    attacks = "".join(
        f"echo {marker} | nc -w 2 {v.address} {v.port} && echo reached || echo unreachable\n"
        for v in victims
    )
    return (
        "ls /sys/class/net\n"
        "nc -ll -p 7777 -e echo own-loopback & server=$!\n"
        "sleep 0.3\n"
        "echo hi | nc -w 2 localhost 7777 || echo no-localhost\n"
        f"{attacks}"
        'kill "$server"\n'
    )


def assert_only_its_loopback(stdout: str, victims: list[Listener], marker: str) -> None:
    """What a :func:`no_network_probe` run must show: its own loopback, ``localhost``, and
    no victim reached (given a second for a late connection to land)."""
    assert stdout == "lo\nown-loopback\n" + "unreachable\n" * len(victims), stdout
    time.sleep(1)
    assert not any(v.got(marker.encode(), wait=0) for v in victims)
