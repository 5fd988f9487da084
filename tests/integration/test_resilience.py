"""Resilience with real processes: a Docker engine that goes away under a live worker, and the
Redis server (broker, result backend and registry) restarted while 40 runs are in flight.

Host B (scripts/hostb.sh) stands in for a Docker host whose engine stops: its dockerd is
stopped and started again under a running worker. The Redis restart uses a private
redis-server with the append-only file and the fsync policy docker-compose.yml ships
(``appendfsync``, read from its default so the two cannot drift).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import kombu
import pytest
import redis

from orchestrator import OrchestratorClient, Settings
from orchestrator.client.sync import _unwrap
from orchestrator.errors import DockerUnavailable, OrchestratorTimeout
from orchestrator.state import redis_broker
from orchestrator.worker.compat import (
    finish_redis_channel_close,
    keep_messages_taken_before_a_broker_loss,
)
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    NOTHING_LEFT,
    REDIS_URL,
    ContainerEvents,
    RedisServer,
    WorkerProcess,
    force_remove_managed,
    gone,
    have,
    listed,
    managed_leftovers,
    private_redis,
    require,
    settings_env,
    shipped_appendfsync,
    tool,
)
from tests.integration.test_multihost import BROKER_IP, HOSTB_SOCKET, hostb_script

EXECUTE = "orchestrator.tools.execute"


# -- host B: an engine outage -------------------------------------------------------------


def hostb_users() -> list[str]:
    """Workers of other test sessions living in host B's namespace (they use its engine)."""
    listed = subprocess.run(["ip", "netns", "pids", "hostb"], capture_output=True, text=True)
    users = []
    for pid in listed.stdout.split() if listed.returncode == 0 else []:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        if "celery" in command:
            users.append(f"{pid}: {command[:160]}")
    return users


def wait_until_hostb_is_free(timeout: float = 600) -> None:
    """Stopping host B's engine would break another session's multi-host tests: wait."""
    deadline = time.monotonic() + timeout
    while users := hostb_users():
        if time.monotonic() > deadline:
            pytest.fail(f"host B is still used by another test session: {users}", pytrace=False)
        time.sleep(5)


@pytest.fixture(scope="module")
def host_b_worker(
    services: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[WorkerProcess, docker.DockerClient, OrchestratorClient]]:
    """A worker on host B retrying DockerUnavailable twice; host B is down afterwards."""
    require(have("nsenter") and have("ip"), "nsenter and ip (for the second Docker host)")
    wait_until_hostb_is_free()
    up = hostb_script("up")
    require(up.returncode == 0, f"a second Docker host (scripts/hostb.sh up: {up.stderr[-800:]})")
    engine = docker.DockerClient(base_url=HOSTB_SOCKET)
    name = f"it-rb-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    url = REDIS_URL.replace("127.0.0.1", BROKER_IP).replace("localhost", BROKER_IP)
    env = {
        "ORCHESTRATOR_BROKER_URL": url,
        "ORCHESTRATOR_RESULT_BACKEND": url,
        "ORCHESTRATOR_DOCKER_RETRIES": "2",
    }
    process = WorkerProcess(
        name, tmp_path_factory.mktemp("logs-rb"), env=env, netns="hostb", docker_host=HOSTB_SOCKET
    )
    # The worker's broker is Redis (reached from the namespace), whatever broker a pass tests.
    client = OrchestratorClient(
        Settings.from_env(settings_env(name, ORCHESTRATOR_BROKER_URL=REDIS_URL))
    )
    try:
        process.start()
        yield process, engine, client
    finally:
        process.stop()
        client.close()
        try:
            hostb_script("start-engine")  # a failed test may have left the engine stopped
            force_remove_managed(engine, name)
        finally:
            engine.close()
            if not hostb_users():
                hostb_script("down")


@pytest.mark.multihost
@pytest.mark.timeout(900)  # may first wait for another session to finish with host B
def test_engine_outage_fails_with_docker_unavailable_and_the_worker_recovers(
    host_b_worker: tuple[WorkerProcess, docker.DockerClient, OrchestratorClient],
) -> None:
    worker, engine, client = host_b_worker
    queue = f"host.{worker.host_name}"
    before = client.app.send_task(EXECUTE, args=[tool("eng", "echo up")], queue=queue)
    assert before.get(timeout=120)["stdout"] == "up\n"  # the worker has a live engine client

    stopped = hostb_script("stop-engine")
    assert stopped.returncode == 0, stopped.stderr
    try:
        assert not engine_answers(engine)
        started = time.monotonic()
        sent = client.app.send_task(EXECUTE, args=[tool("eng", "echo never")], queue=queue)
        with pytest.raises(DockerUnavailable) as failure:
            sent.get(timeout=150)
        elapsed = time.monotonic() - started
        assert "Docker engine unreachable" in str(failure.value), str(failure.value)
        assert elapsed < 120, elapsed  # 3 attempts, backoff of at most 2 and 4 s
        # The worker logs a retry after it sent it: give the last line a moment to appear.
        retries = f"[{sent.id}] retry:".encode()
        settle = time.monotonic() + 10
        while worker.log_bytes().count(retries) < 2 and time.monotonic() < settle:
            time.sleep(0.2)
        assert worker.log_bytes().count(retries) == 2, worker.log()
        assert worker.proc is not None and worker.proc.poll() is None, worker.log()
        assert redis.Redis.from_url(REDIS_URL).exists(f"orch:host:{worker.host_name}")
    finally:
        restarted = hostb_script("start-engine")
        assert restarted.returncode == 0, restarted.stderr
    # Nothing can be created while the engine is down: watch from its restart on (its event
    # log starts empty then; read back later it may also have lost events on a busy host).
    later = ContainerEvents(engine, f"orchestrator.execution={sent.id}")

    after = client.app.send_task(EXECUTE, args=[tool("eng", "echo back")], queue=queue)
    result = after.get(timeout=120)
    assert result["status"] == "succeeded", result
    assert result["stdout"] == "back\n"
    assert result["host"] == worker.host_name
    time.sleep(5)  # room for any late retry or re-enqueue of the failed run to show itself
    assert client.app.AsyncResult(sent.id).state == "FAILURE"
    later.close()
    assert later.count("create", "orchestrator.execution", sent.id) == 0  # it never ran later
    inflight = redis.Redis.from_url(REDIS_URL).smembers("orch:inflight")
    assert sent.id.encode() not in inflight  # the failure left nothing for the reaper
    assert worker.log_bytes().count(f"[{sent.id}] retry:".encode()) == 2, worker.log()
    assert managed_leftovers(engine, worker.host_name) == NOTHING_LEFT


def engine_answers(engine: docker.DockerClient) -> bool:
    try:
        return bool(engine.ping())
    except Exception:  # noqa: BLE001 - any failure means the engine is gone
        return False


# -- Redis restarted under load ------------------------------------------------------------


def test_the_shipped_fsync_policy_is_the_one_the_restart_tests_use() -> None:
    assert shipped_appendfsync() in {"always", "everysec", "no"}


class RedisWorker(WorkerProcess):
    """A worker whose broker, result backend and registry are all a given Redis."""

    def __init__(self, host_name: str, log_dir: Path, url: str, env: dict[str, str]) -> None:
        urls = {"ORCHESTRATOR_BROKER_URL": url, "ORCHESTRATOR_RESULT_BACKEND": url}
        super().__init__(host_name, log_dir, env={**env, **urls}, registry_url=url)


@pytest.fixture
def own_redis(services: None) -> Iterator[RedisServer]:
    with private_redis() as server:
        yield server


RUNS = 40


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("how", ["shutdown", "kill"])
def test_redis_restarted_under_load_loses_and_duplicates_nothing(
    how: str,
    own_redis: RedisServer,
    worker_env: dict[str, str],
    shared_dir: Path,
    docker_client: docker.DockerClient,
    tmp_path: Path,
) -> None:
    name = f"it-rr-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    session_id = f"rr-{uuid.uuid4().hex[:8]}"
    out = shared_dir / session_id
    out.mkdir()
    out.chmod(0o777)
    process = RedisWorker(name, tmp_path, own_redis.url, worker_env).start()
    urls = {"ORCHESTRATOR_BROKER_URL": own_redis.url, "ORCHESTRATOR_RESULT_BACKEND": own_redis.url}
    client = OrchestratorClient(Settings.from_env(settings_env(name, **urls)))
    try:
        handles = [
            client.execute_tool(
                tool(
                    session_id,
                    'echo "$N" >> /out/runs; sleep 1; echo "$N"',
                    parameters={"N": n},
                    volumes=[{"source": str(out), "target": "/out"}],
                )
            )
            for n in range(RUNS)
        ]
        # Half started: with 16 threads some are done, up to 16 run and the rest are queued.
        wait_for(lambda: len(lines(out)) >= RUNS // 2, 120, "half of the runs to start")
        started_before = len(lines(out))
        getattr(own_redis, how)()
        time.sleep(1)
        own_redis.start()

        deadline = time.monotonic() + 240
        try:
            results = [h.result(timeout=max(1.0, deadline - time.monotonic())) for h in handles]
        except OrchestratorTimeout as exc:
            raise AssertionError(whereabouts(own_redis.url, handles, out)) from exc
        assert [r.status for r in results] == ["succeeded"] * RUNS, [r.error for r in results]
        assert [r.stdout for r in results] == [f"{n}\n" for n in range(RUNS)]
        assert len({r.execution_id for r in results}) == RUNS
        assert started_before < RUNS  # the restart really happened mid-way
        assert sorted(lines(out), key=int) == [str(n) for n in range(RUNS)]  # each ran once
        session_filter = {"label": f"orchestrator.session={session_id}"}

        # Everything reconnected: the same worker and client serve a new run.
        assert process.proc is not None and process.proc.poll() is None, process.log()
        again = client.run_tool(tool(session_id, "echo again"), timeout=60)
        assert again.stdout == "again\n" and again.host == name
        assert redis.Redis.from_url(own_redis.url).exists(f"orch:host:{name}")
        assert gone(lambda: listed(docker_client, session_filter)) == []
        # A delivery whose ack was lost with the connection stays unacknowledged until the
        # visibility timeout; redelivered then, it finds its stored result and runs nothing.
        for task_id in unacked_task_ids(own_redis.url):
            assert client.app.AsyncResult(task_id).state == "SUCCESS", task_id
    finally:
        client.close()
        process.stop()
        # recorded (harness.LEDGER) before the removal; the assertion reads that record
        left = force_remove_managed(docker_client, name)
    assert left == NOTHING_LEFT


def whereabouts(url: str, handles: list[Any], out: Path) -> str:
    """Where each unfinished run is: stored result, queue, unacked hash, run file."""
    r = redis.Redis.from_url(url)
    queued = {redis_broker.task_id(raw) for raw in r.lrange("tools", 0, -1)}
    unacked = set(unacked_task_ids(url))
    ran = lines(out)
    report = []
    for n, handle in enumerate(handles):
        meta = r.get(f"celery-task-meta-{handle.id}")
        stored = json.loads(meta)["status"] if meta else None
        if stored != "SUCCESS":
            report.append(
                f"run {n} ({handle.id}): stored={stored} queued={handle.id in queued} "
                f"unacked={handle.id in unacked} ran={ran.count(str(n))}"
            )
    return "runs without a stored success:\n" + "\n".join(report or ["none"])


def unacked_task_ids(url: str) -> list[str]:
    """Task ids of messages the Redis transport holds as delivered but not acknowledged."""
    held = redis.Redis.from_url(url).hvals(redis_broker.UNACKED_KEY)
    return [str(redis_broker.unacked_task_id(raw)) for raw in held]


def lines(directory: Path) -> list[str]:
    path = directory / "runs"
    return path.read_text().split() if path.exists() else []


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- a result announcement the client never hears ---------------------------------------


def test_a_result_stored_without_announcement_is_still_returned(services: None) -> None:
    """A result published while the client's pub/sub link was down reaches it anyway.

    The worker stores a result and announces it on a pub/sub channel in one step; a client
    that is reconnecting at that moment never hears it. Here the result is stored with no
    announcement at all, after the client has started waiting, as the worst case of that race.
    """
    client = OrchestratorClient(Settings.from_env(settings_env("it-unheard")))
    task_id = f"it-unheard-{uuid.uuid4().hex}"
    backend = client.app.backend
    meta = {"status": "SUCCESS", "result": {"ok": 1}, "traceback": None, "children": []}
    store = redis.Redis.from_url(REDIS_URL)

    def store_silently() -> None:
        time.sleep(0.5)
        store.set(backend.get_key_for_task(task_id), backend.encode({**meta, "task_id": task_id}))

    writer = threading.Thread(target=store_silently)
    try:
        writer.start()
        started = time.monotonic()
        assert _unwrap(client.app.AsyncResult(task_id), timeout=30) == {"ok": 1}
        assert time.monotonic() - started < 15  # one re-read away, not the whole timeout
    finally:
        writer.join()
        store.delete(backend.get_key_for_task(task_id))
        client.close()


# -- the broker connection lost while the worker's channel waits on BRPOP ----------------


def test_a_channel_waiting_on_the_broker_closes_after_the_broker_died(
    own_redis: RedisServer,
) -> None:
    """What Celery does on a lost broker connection must not crash the worker.

    Celery collects the broken connection, then closes it again after detaching its
    transport. With a ``BRPOP`` pending and messages unacknowledged, kombu's second close
    used to need the detached transport and raised AttributeError, which Celery treats as
    unrecoverable: the worker stopped consuming (orchestrator.compat explains the patch).
    """
    finish_redis_channel_close()
    connection = kombu.Connection(own_redis.url)
    channel = connection.default_channel
    queue = kombu.Queue("compat", kombu.Exchange("compat", type="direct"), routing_key="compat")
    kombu.Producer(channel).publish(
        {"n": 1}, exchange=queue.exchange, routing_key="compat", declare=[queue]
    )
    assert channel.basic_get("compat", no_ack=False) is not None  # held unacknowledged
    channel.basic_consume("compat", False, lambda message: None, "compat-consumer")
    connection.transport.cycle._register_BRPOP(channel)  # an idle worker waits on BRPOP
    other = connection.channel()  # closed first by the transport; its error ends that loop
    other.basic_consume("compat", False, lambda message: None, "compat-other")
    connection.transport.cycle._register_BRPOP(other)
    own_redis.kill()

    try:  # Celery's Consumer.on_connection_error_after_connected, step by step
        connection.collect(socket_timeout=2)
    except Exception:
        pass
    connection.close()  # raised AttributeError ('NoneType' ... 'hostname') before the patch
    assert channel.closed


def test_a_message_taken_as_the_broker_dies_still_reaches_the_worker(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker dies between the two commands that take a message and record it unacked.

    kombu dropped such a message: in no queue, not unacknowledged, never run. With the patch
    in orchestrator.compat the consumer receives it (its lease covers any redelivery).
    """
    from kombu.transport import redis as kombu_redis

    keep_messages_taken_before_a_broker_loss()
    connection = kombu.Connection(own_redis.url)
    channel = connection.default_channel
    queue = kombu.Queue("taken", kombu.Exchange("taken", type="direct"), routing_key="taken")
    kombu.Producer(channel).publish(
        {"n": 1}, exchange=queue.exchange, routing_key="taken", declare=[queue]
    )
    received: list[Any] = []
    consumer = kombu.Consumer(
        channel, queues=[queue], callbacks=[lambda body, m: received.append(body)]
    )
    consumer.consume()

    real_pipe = kombu_redis.QoS.pipe_or_acquire

    def broker_dies_first(self: Any, pipe: Any = None) -> Any:
        own_redis.kill()  # after BRPOP took the message, before it is recorded
        return real_pipe(self, pipe)

    monkeypatch.setattr(kombu_redis.QoS, "pipe_or_acquire", broker_dies_first)
    try:
        connection.drain_events(timeout=5)
    except connection.connection_errors:
        pass
    finally:
        monkeypatch.undo()
        try:
            connection.collect(socket_timeout=1)
        except Exception:
            pass
    assert received == [{"n": 1}]
    assert "just after message" in caplog.text and "running it anyway" in caplog.text


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_a_task_the_crashed_broker_lost_is_sent_again_by_its_client(
    own_redis: RedisServer,
    worker_env: dict[str, str],
    docker_client: docker.DockerClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis recorded the pop of a message and died before the worker got it.

    Reproduced exactly: the queued message is removed, then Redis is killed and started
    again (a new server process). The client waiting on the task sees the restart, finds the
    task nowhere, and sends it again under the same id; a worker runs it once.
    """
    name = f"it-lost-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(name)
    session_id = f"lost-{uuid.uuid4().hex[:8]}"
    urls = {"ORCHESTRATOR_BROKER_URL": own_redis.url, "ORCHESTRATOR_RESULT_BACKEND": own_redis.url}
    client = OrchestratorClient(Settings.from_env(settings_env(name, **urls)))
    store = redis.Redis.from_url(own_redis.url)
    process = None
    try:
        handle = client.execute_tool(tool(session_id, "echo ran once"))
        assert [redis_broker.task_id(raw) for raw in store.lrange("tools", 0, -1)] == [handle.id]
        store.delete("tools")  # taken by BRPOP, and the reply never left the server
        store.close()
        own_redis.kill()
        own_redis.start()
        process = RedisWorker(name, tmp_path, own_redis.url, worker_env).start()

        result = handle.result(timeout=120)
        assert (result.status, result.stdout, result.execution_id) == (
            "succeeded",
            "ran once\n",
            handle.id,
        )
        assert f"task {handle.id} (orchestrator.tools.execute) was lost" in caplog.text
    finally:
        client.close()
        if process is not None:
            process.stop()
        # recorded (harness.LEDGER) before the removal; the assertion reads that record
        left = force_remove_managed(docker_client, name)
    assert left == NOTHING_LEFT
