"""Real processes for integration tests: workers on Docker hosts, service checks, leak checks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("ORCHESTRATOR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# The broker of the workers and clients under test: Redis unless a pass sets another
# (scripts/test.sh runs part of the suite again on RabbitMQ); REDIS_URL stays the backend.
BROKER_URL = os.environ.get("ORCHESTRATOR_TEST_BROKER_URL") or REDIS_URL
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


def managed_leftovers(client: Any, host_label: str | None = None) -> dict[str, list[str]]:
    """Managed containers, networks and volumes still on an engine (optionally one host's)."""
    filters = [MANAGED] + ([f"orchestrator.host={host_label}"] if host_label else [])
    containers = client.containers.list(all=True, filters={"label": filters})
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
    label = {"label": [MANAGED, f"orchestrator.host={host_label}"]}
    for container in client.containers.list(all=True, filters=label):
        container.remove(force=True, v=True)
    for network in client.networks.list(filters=label):
        network.remove()
    for volume in client.volumes.list(filters=label):
        volume.remove(force=True)
    return left


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
