"""Chaos: tools and relic sessions in flight while workers, Redis and an engine link fail.

Two workers serve one host name on this machine's engine. For about 50 s one of them is
killed with ``kill -9`` and started again every few seconds; one is frozen (``SIGSTOP``) for
longer than a lease, as a worker starved on a loaded machine; Redis (a private redis-server
on a free port, with the append-only file and the fsync policy docker-compose.yml ships) is
restarted once with ``SHUTDOWN``; and the engine is lost for a few seconds by one worker.
The workers' visibility timeout is short (20 s): it bounds the wait of a run whose message
a killed worker held before the run was registered (a retry waiting out its countdown).

The engine loss is simulated: the system dockerd serves every other test session and CI on
this machine, so it is never stopped. One worker reaches the engine through a TCP proxy
(tests/integration/proxy.py) that is cut for 5 s: to that worker the engine is gone
(refused connections, broken streams) while its containers keep running, as in a dockerd
restart with live-restore.

Invariants: every accepted run ends with its right output or a clear error within a bounded
wait; no tool container starts twice (each tool appends its number to a bind-mounted file,
and the engine's ``start`` events are counted per execution); every session tool reaches
its session's relic by its internal name or fails clearly; nothing of the test's host label
is left afterwards. The counts are printed.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import pytest

from orchestrator import OrchestratorClient, Settings
from orchestrator.errors import OrchestratorError, OrchestratorTimeout
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    ContainerEvents,
    RedisServer,
    WorkerProcess,
    force_remove_managed,
    managed_leftovers,
    private_redis,
    remove_labelled,
    settings_env,
    tool,
)
from tests.integration.proxy import EngineProxy
from tests.integration.test_relics import relic

pytestmark = pytest.mark.slow

NOTHING_LEFT: dict[str, list[str]] = {"containers": [], "networks": [], "volumes": []}
TOOLS = 60  # durations 0, 1 and 5 s in turn, sent in five waves 10 s apart
SESSIONS = 3  # each: one relic and three session tools that fetch from it
CHAOS_SECONDS = 50
WAIT_SECONDS = 150  # the bound on every client wait, from the first send
# A message a killed worker held before its run was registered (just received, or a retry
# waiting out its countdown) comes back only after the visibility timeout: it bounds the
# wait of such a run, so the deployment under test sets it well below WAIT_SECONDS.
VISIBILITY_TIMEOUT = 20


@pytest.fixture
def chaos_redis(services: None) -> Iterator[RedisServer]:
    with private_redis(6490) as server:
        yield server


class Workers:
    """The two worker slots of the chaos host; slot 1 reaches the engine through the proxy."""

    def __init__(self, host: str, logs: Path, url: str, env: dict[str, str], proxy_url: str):
        self.host, self.logs, self.url, self.env = host, logs, url, env
        self.docker_hosts = [None, proxy_url]
        self.slots: list[WorkerProcess | None] = [None, None]
        self.every: list[WorkerProcess] = []
        self.kills = 0

    def start(self, slot: int) -> None:
        urls = {
            "ORCHESTRATOR_BROKER_URL": self.url,
            "ORCHESTRATOR_RESULT_BACKEND": self.url,
            "ORCHESTRATOR_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT),
        }
        process = WorkerProcess(
            self.host,
            self.logs,
            env={**self.env, **urls},
            docker_host=self.docker_hosts[slot],
            registry_url=self.url,
        )
        self.every.append(process)
        self.slots[slot] = process.start(wait_seconds=60)

    def freeze(self, slot: int, seconds: float) -> None:
        """SIGSTOP a worker for ``seconds``, then SIGCONT it: alive, but silent meanwhile."""
        process = self.slots[slot]
        if process is None or process.proc is None or process.proc.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.killpg(process.pid, signal.SIGCONT)

    def kill(self, slot: int) -> None:
        process = self.slots[slot]
        if process is not None:
            process.kill()
            self.kills += 1

    def stop(self) -> None:
        for process in self.every:
            process.stop()

    def log_count(self, text: bytes) -> int:
        return sum(p.log_bytes().count(text) for p in self.every)


@pytest.mark.timeout(300)
def test_chaos_loses_nothing_and_runs_nothing_twice(  # noqa: C901 - one scenario, told in order
    chaos_redis: RedisServer,
    worker_env: dict[str, str],
    shared_dir: Path,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    host = f"it-chaos-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host)
    tag = uuid.uuid4().hex[:6]
    out = shared_dir / f"chaos-{tag}"
    out.mkdir()
    out.chmod(0o777)
    proxy = EngineProxy().start()
    workers = Workers(host, tmp_path, chaos_redis.url, worker_env, proxy.url)
    urls = {
        "ORCHESTRATOR_BROKER_URL": chaos_redis.url,
        "ORCHESTRATOR_RESULT_BACKEND": chaos_redis.url,
    }
    client = OrchestratorClient(Settings.from_env(settings_env(host, **urls)))
    tools_session = f"chaos-{tag}"
    relic_sessions = [f"chaos-{tag}-s{n}" for n in range(SESSIONS)]
    engine_events = ContainerEvents(docker_client, f"orchestrator.host={host}")
    started = time.monotonic()
    deadline = started + WAIT_SECONDS
    outcomes: dict[str, list[str]] = {"ok": [], "failed clearly": [], "hung": [], "wrong": []}
    events: list[str] = []
    stop = threading.Event()

    def bounded() -> float:
        return max(1.0, deadline - time.monotonic())

    def judge(what: str, run: Any, expected: str) -> None:
        try:
            result = run()
        except OrchestratorTimeout as exc:
            outcomes["hung"].append(f"{what}: {exc}")
            return
        except OrchestratorError as exc:
            outcomes["failed clearly"].append(f"{what}: {type(exc).__name__}: {exc}")
            return
        if result.status == "succeeded" and result.stdout == expected:
            outcomes["ok"].append(what)
        elif result.status != "succeeded" and result.error:
            outcomes["failed clearly"].append(f"{what}: {result.status}: {result.error}")
        else:
            outcomes["wrong"].append(f"{what}: {result.status} {result.stdout!r} {result.error}")

    def tool_wave(first: int) -> list[tuple[int, Any]]:
        handles = []
        for n in range(first, first + TOOLS // 5):
            script = f'echo "$N" >> /out/runs; sleep {(0, 1, 5)[n % 3]}; echo "$N"'
            request = tool(
                tools_session,
                script,
                parameters={"N": n},
                volumes=[{"source": str(out), "target": "/out"}],
            )
            handles.append((n, client.execute_tool(request)))
        return handles

    def session_life(session_id: str) -> None:
        try:
            info = client.start_relic(relic(session_id, "api"), timeout=bounded())
        except OrchestratorError as exc:
            kind = "hung" if isinstance(exc, OrchestratorTimeout) else "failed clearly"
            outcomes[kind].append(f"relic {session_id}: {type(exc).__name__}: {exc}")
            return
        outcomes["ok"].append(f"relic {session_id} ({info.status})")
        probe = {
            "tool_name": "probe",
            "session_id": session_id,
            "image": tool("", "")["image"],
            "network_mode": "session",
            "command": ["sh", "-c", "sleep 1; wget -qO- http://api:8000/index.html"],
        }
        for n in range(3):
            try:
                handle = client.execute_tool(probe)
            except OrchestratorError as exc:
                outcomes["failed clearly"].append(f"probe {session_id}/{n}: {exc}")
                continue
            judge(
                f"probe {session_id}/{n}",
                lambda h=handle: h.result(timeout=bounded()),
                "hello from api\n",
            )

    def chaos() -> None:
        step = 0
        t0 = time.monotonic()
        while not stop.is_set() and time.monotonic() - t0 < CHAOS_SECONDS:
            stop.wait(2)
            slot = step % 2
            workers.kill(slot)
            events.append(f"{time.monotonic() - t0:5.1f}s kill -9 worker {slot}")
            time.sleep(0.5)
            workers.start(slot)
            step += 1
            if step == 2:
                chaos_redis.shutdown()
                events.append(f"{time.monotonic() - t0:5.1f}s redis SHUTDOWN")
                time.sleep(1)
                chaos_redis.start()
                events.append(f"{time.monotonic() - t0:5.1f}s redis back")
            if step == 3:
                # Past its 6 s lease, within its worker's liveness mark (3 leases): its
                # runs must not be re-enqueued beside it; it takes its leases back.
                frozen = 1 - slot  # not the one just restarted: the one with runs
                events.append(f"{time.monotonic() - t0:5.1f}s SIGSTOP worker {frozen}")
                workers.freeze(frozen, 9)
                events.append(f"{time.monotonic() - t0:5.1f}s SIGCONT worker {frozen}")
            if step == 4:
                proxy.cut()
                events.append(f"{time.monotonic() - t0:5.1f}s engine lost by worker 1")
                time.sleep(5)
                proxy.restore()
                events.append(f"{time.monotonic() - t0:5.1f}s engine back")

    reports = []
    try:
        workers.start(0)
        workers.start(1)
        chaos_thread = threading.Thread(target=chaos, daemon=True)
        chaos_thread.start()
        handles = tool_wave(0)
        with ThreadPoolExecutor(SESSIONS) as pool:
            lives = [pool.submit(session_life, s) for s in relic_sessions]
            for wave in range(1, 5):
                time.sleep(10)
                handles += tool_wave(wave * TOOLS // 5)
            for n, handle in handles:
                judge(f"tool {n}", lambda h=handle: h.result(timeout=bounded()), f"{n}\n")
            for life in lives:
                life.result(timeout=bounded() + 5)
        chaos_thread.join(CHAOS_SECONDS + 60)  # its whole schedule, whatever the runs did
        elapsed = time.monotonic() - started
        reports = [client.cleanup_session(s, timeout=120) for s in relic_sessions]
        client.cleanup_session(tools_session, timeout=120)
    except BaseException:
        # The scenario broke off (the test fails for that): what it made is swept here, so
        # the leak check reports this test's failure once, not a second time.
        stop.set()
        workers.stop()
        remove_labelled(docker_client, host)
        raise
    finally:
        stop.set()
        client.close()
        workers.stop()
        proxy.close()
        engine_events.close()
    left = managed_leftovers(docker_client, host)
    force_remove_managed(docker_client, host)

    runs = (out / "runs").read_text().split() if (out / "runs").exists() else []
    per_tool = collections.Counter(runs)
    starts = engine_events.per("start", "orchestrator.execution")
    duplicates = {k: v for k, v in starts.items() if v > 1}
    file_duplicates = {k: v for k, v in per_tool.items() if v > 1}
    redelivered = workers.log_count(b"attaching to existing container")
    requeued = workers.log_count(b"lost its worker; re-enqueued")
    print(
        f"\nchaos on {host}: {elapsed:.0f} s, {workers.kills} worker kills, "
        f"runs ok={len(outcomes['ok'])} failed clearly={len(outcomes['failed clearly'])} "
        f"hung={len(outcomes['hung'])} wrong={len(outcomes['wrong'])} "
        f"redelivered={redelivered} (re-enqueued by a reaper: {requeued}) "
        f"duplicates={len(duplicates) + len(file_duplicates)}"
    )
    print("\n".join(events))
    for line in outcomes["failed clearly"]:
        print(f"  failed clearly: {line[:300]}")
    assert outcomes["hung"] == [], outcomes["hung"]
    assert outcomes["wrong"] == [], outcomes["wrong"]
    assert len(outcomes["ok"]) + len(outcomes["failed clearly"]) == TOOLS + SESSIONS * 4
    assert duplicates == {}, duplicates  # no tool container started twice
    ran = [o for o in outcomes["ok"] if o.startswith(("tool ", "probe "))]
    assert len(starts) >= len(ran), (len(starts), len(ran))  # the starts were all seen
    assert file_duplicates == {}, file_duplicates  # no tool ran twice
    for n in range(TOOLS):
        if f"tool {n}" in outcomes["ok"]:
            assert per_tool[str(n)] == 1, n
    assert workers.kills >= 4, events  # a restarted worker takes several seconds to be ready
    assert any("redis back" in e for e in events) and any("engine back" in e for e in events)
    assert all(r.errors == [] for r in reports), [r.errors for r in reports]
    assert left == NOTHING_LEFT, left
    assert os.path.isdir(out)
