"""Secrets never at rest in plain text, checked as an attacker would: read every key of every
type in the Redis database (and the append-only file on disk) while a run is in progress
and after it ended, and look for the secret and its encodings; watch the events a worker
sends (what Flower shows); make the tool print its secret in every way it can.

Real redis-server, Docker engine and worker processes.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import redis
from celery import Celery

from orchestrator import OrchestratorClient, Settings
from orchestrator.client.config import client_config
from orchestrator.models import ToolExecutionRequest
from orchestrator.protocol import Task
from orchestrator.state import keys
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    REDIS_URL,
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    have,
    listed,
    require,
    settings_env,
    tool,
)
from tests.integration.test_flower import Flower, flower, tool_request  # noqa: F401 - fixture

HTTPD = "mkdir -p /www && echo ok > /www/health && exec httpd -f -p 8000 -h /www"
B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def new_secret() -> str:
    """A secret no test data can contain by chance (34 characters: base64 fits one line)."""
    return f"S3{uuid.uuid4().hex}"


# -- the attacker's scanner ------------------------------------------------------------------


def encodings(secret: str) -> set[bytes]:
    """The secret as is, JSON-escaped, hex, URL-quoted, and base64 (standard and URL-safe) at
    each of the three alignments it can have inside a longer encoded text."""
    raw = secret.encode()
    forms = {raw, json.dumps(secret)[1:-1].encode(), binascii.hexlify(raw)}
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * offset + raw)
            # Leave out the characters that mix in the bytes around the secret.
            forms.add(text[(offset * 4 + 2) // 3 : len(text) - 4])
    return forms


def _decoded_runs(blob: bytes) -> Iterator[bytes]:
    """Every long base64-looking run of ``blob``, decoded (kombu base64-encodes bodies)."""
    for match in B64_RUN.finditer(blob):
        run = match.group(0).rstrip(b"=")
        padded = run + b"=" * (-len(run) % 4)
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                yield decode(padded)
            except (binascii.Error, ValueError):
                continue


def holds(blob: bytes, needles: Iterable[bytes], depth: int = 2) -> bool:
    """Whether ``blob``, or base64 text inside it (nested ``depth`` times), holds a needle."""
    needles = list(needles)
    if any(needle in blob for needle in needles):
        return True
    return depth > 0 and any(holds(inner, needles, depth - 1) for inner in _decoded_runs(blob))


def dump_every_key(r: redis.Redis) -> dict[bytes, bytes]:
    """Every key of the database with everything it holds, whatever its type."""
    values: dict[bytes, bytes] = {}
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        parts: list[Any] = [key]
        if kind == b"string":
            parts.append(r.get(key))
        elif kind == b"hash":
            parts.extend(item for pair in r.hgetall(key).items() for item in pair)
        elif kind == b"list":
            parts.extend(r.lrange(key, 0, -1))
        elif kind == b"set":
            parts.extend(r.smembers(key))
        elif kind == b"zset":
            parts.extend(member for member, _ in r.zrange(key, 0, -1, withscores=True))
        elif kind == b"stream":
            for entry_id, fields in r.xrange(key):
                parts.append(entry_id)
                parts.extend(item for pair in fields.items() for item in pair)
        parts.append(r.dump(key) or b"")  # the serialized value, as a dump or replica gets it
        values[key] = b"\n".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
    return values


def leaking_keys(r: redis.Redis, secret: str) -> list[str]:
    """Keys that hold the secret in any of its encodings."""
    forms = encodings(secret)
    return [key.decode() for key, blob in dump_every_key(r).items() if holds(blob, forms)]


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_the_scanner_finds_a_planted_secret_in_every_type_and_encoding(services: None) -> None:
    """The victim check is only as good as the scanner: plant the secret and find it."""
    r = redis.Redis.from_url(REDIS_URL)
    secret = new_secret()
    prefix = f"it-scan-{uuid.uuid4().hex[:6]}"
    message = json.dumps({"body": base64.b64encode(json.dumps([{"k": secret}]).encode()).decode()})
    planted = {
        f"{prefix}:string": lambda k: r.set(k, f"x{secret}y"),
        f"{prefix}:hash": lambda k: r.hset(k, "f", binascii.hexlify(secret.encode())),
        f"{prefix}:list": lambda k: r.rpush(k, message),
        f"{prefix}:set": lambda k: r.sadd(k, base64.b64encode(b"ab" + secret.encode())),
        f"{prefix}:zset": lambda k: r.zadd(k, {base64.urlsafe_b64encode(secret.encode()): 1}),
        f"{prefix}:stream": lambda k: r.xadd(k, {"data": f'{{"s": "{secret}"}}'}),
    }
    try:
        for key, plant in planted.items():
            plant(key)
        assert sorted(leaking_keys(r, secret)) == sorted(planted)
        assert leaking_keys(r, new_secret()) == []
    finally:
        r.delete(*planted)


# -- tool runs and relics on the suite's worker ----------------------------------------------


def test_a_running_tool_and_its_result_leave_the_secret_nowhere_in_redis(
    client: OrchestratorClient, session_id: str
) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    secret = new_secret()
    handle = client.execute_tool(
        tool(
            session_id,
            'echo "len=${#API_KEY}"; sleep 3; echo done',
            secret_parameters={"API_KEY": secret},
        )
    )
    wait_for(lambda: handle.state == "RUNNING", 30, "the run to start")

    in_progress = dump_every_key(r)
    assert [k for k, blob in in_progress.items() if holds(blob, encodings(secret))] == []
    # The message is there, under the scanner's eyes: encrypted (acks late: unacknowledged).
    assert any(holds(blob, [b"$encrypted"]) for blob in in_progress.values())
    meta = json.loads(r.get(f"celery-task-meta-{handle.id}") or b"{}")
    assert meta["status"] == "RUNNING"
    assert meta["args"][0]["secret_parameters"] == {"API_KEY": "***"}

    result = handle.result(timeout=60)
    assert f"len={len(secret)}" in result.stdout  # the container had it
    assert leaking_keys(r, secret) == []


def test_a_tool_printing_its_secret_every_way_returns_it_nowhere(
    client: OrchestratorClient, session_id: str
) -> None:
    secret, short = new_secret(), "Qz7"
    script = (
        'echo "raw=$API_KEY short=$PIN"; printf %s "$API_KEY" | base64; '
        'printf %s "$API_KEY" | xxd -p -c 256; '
        'echo "err=$API_KEY" >&2; printf %s "$API_KEY" | base64 >&2; '
        'echo "{\\"k\\": \\"$API_KEY\\", \\"b\\": \\"$(printf %s "$API_KEY" | base64)\\", '
        '\\"pin\\": \\"$PIN\\"}"'
    )
    handle = client.execute_tool(
        tool(session_id, script, secret_parameters={"API_KEY": secret, "PIN": short})
    )
    result = handle.result(timeout=60)

    assert result.status == "succeeded", result
    assert result.stdout.startswith("raw=*** short=***\n***\n***\n")
    assert result.result == {"k": "***", "b": "***", "pin": "***"}
    forms = encodings(secret) | {short.encode()}
    live = client.live_logs(handle.id)
    followed = "".join(text for _, text in client.follow_logs(handle.id, idle_rounds=3))
    shown = [
        result.model_dump_json(),
        json.dumps(live),
        followed,
        json.dumps(client.get_logs(handle.id)),
    ]
    assert [text for text in shown if holds(text.encode(), forms)] == []
    assert "err=***" in live["stderr"]
    r = redis.Redis.from_url(REDIS_URL)
    assert leaking_keys(r, secret) == []
    # The short secret, where the run's outputs are kept (encrypted tokens are random text).
    stored = [r.get(f"celery-task-meta-{handle.id}"), r.get(keys.execution_result(handle.id))]
    stored += [v for _, f in r.xrange(keys.logs(handle.id)) for v in f.values()]
    assert not any(short.encode() in (blob or b"") for blob in stored)


def test_a_relic_gets_its_secret_and_redis_never_holds_it(
    client: OrchestratorClient, session_id: str, docker_client: docker.DockerClient
) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    secret = new_secret()
    request = {
        "relic_name": "db",
        "session_id": session_id,
        "image": TEST_IMAGE,
        "command": ["sh", "-c", f"sleep 2; {HTTPD}"],
        "secret_parameters": {"DB_PASSWORD": secret},
        "health_timeout_seconds": 30,
    }
    started: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: started.update(info=client.start_relic(request, 60)))
    thread.start()
    try:
        name_filter = {"label": [f"orchestrator.session={session_id}", "orchestrator.kind=relic"]}
        wait_for(lambda: bool(listed(docker_client, name_filter, all=False)), 30, "relic")
        assert leaking_keys(r, secret) == []  # while it starts: message, registry, state
        thread.join(60)
        info = started["info"]
        env = docker_client.containers.get(info.container_id).attrs["Config"]["Env"]
        assert f"DB_PASSWORD={secret}" in env  # the victim got it
        shown = [info, client.get_relic(info.relic_id), *client.list_relics(session_id)]
        assert not any(holds(i.model_dump_json().encode(), encodings(secret)) for i in shown)
        assert leaking_keys(r, secret) == []  # while it runs
        entry = r.hgetall(keys.execution(info.relic_id))
        assert json.loads(entry[b"request"])["secret_parameters"] == {"DB_PASSWORD": "***"}
    finally:
        thread.join(60)
        client.cleanup_session(session_id)
    assert leaking_keys(r, secret) == []


def test_a_plain_celery_client_with_plain_secrets_and_no_argsrepr_shows_none_in_events(
    worker: WorkerProcess, session_id: str
) -> None:
    """What Flower shows of a task is what the worker's events say (``app.events.State``)."""
    secret = new_secret()
    app = Celery("plain-client", set_as_current=False)
    app.conf.update(client_config(Settings.from_env(settings_env(worker.host_name))))
    state = app.events.State()
    events: list[dict[str, Any]] = []
    listening = threading.Event()

    def on_event(event: dict[str, Any]) -> None:
        listening.set()
        events.append(event)
        state.event(event)

    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": on_event})
        thread = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=True), daemon=True
        )
        thread.start()
        try:
            assert listening.wait(30), "no worker event (heartbeat) received"
            request = tool(session_id, 'echo "len=${#TOKEN}"', secret_parameters={"TOKEN": secret})
            sent = app.send_task(
                Task.TOOLS_EXECUTE.value, args=[request], queue=f"host.{worker.host_name}"
            )
            assert sent.get(timeout=60)["stdout"] == f"len={len(secret)}\n"
            wait_for(
                lambda: any(
                    e.get("uuid") == sent.id and e["type"] == "task-succeeded" for e in events
                ),
                30,
                "the task-succeeded event",
            )
        finally:
            receiver.should_stop = True
            thread.join(10)
            app.close()

    mine = [e for e in events if e.get("uuid") == sent.id]
    assert {"task-received", "task-started", "task-succeeded"} <= {e["type"] for e in mine}
    assert [e["type"] for e in mine if holds(json.dumps(e).encode(), encodings(secret))] == []
    assert "'TOKEN': '***'" in state.tasks[sent.id].args
    r = redis.Redis.from_url(REDIS_URL)
    meta = json.loads(r.get(f"celery-task-meta-{sent.id}") or b"{}")
    assert meta["args"][0]["secret_parameters"] == {"TOKEN": "***"}
    # Once acknowledged, the sender's plain message is gone: nothing of it stays in Redis.
    assert leaking_keys(r, secret) == []


def test_flower_shows_no_secret_of_a_tool_sent_through_its_api_without_argsrepr(
    flower: Flower,  # noqa: F811 - the fixture
) -> None:
    secret = new_secret()
    request = tool_request('echo "${#TOKEN}"; echo "$TOKEN"', secret_parameters={"TOKEN": secret})
    task_id = flower.apply("orchestrator.tools.execute", request)  # no argsrepr given

    done = flower.result(task_id, lambda r: r["state"] == "SUCCESS")
    assert done["result"]["stdout"] == f"{len(secret)}\n***\n"
    wait_for(
        lambda: flower.call("GET", f"/api/task/info/{task_id}").json().get("state") == "SUCCESS",
        20,
        "Flower to see the task succeed",
    )
    info = flower.call("GET", f"/api/task/info/{task_id}")
    page = flower.call("GET", f"/task/{task_id}")  # the task page, as a browser gets it
    assert page.status == 200 and task_id.encode() in page.body
    pages = [info.body, flower.call("GET", "/api/tasks").body, page.body]
    assert [i for i, page in enumerate(pages) if holds(page, encodings(secret))] == []
    assert "'TOKEN': '***'" in info.json()["args"]
    assert leaking_keys(redis.Redis.from_url(REDIS_URL), secret) == []


# -- a Redis with an append-only file: nothing secret reaches the disk -----------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def aof_redis(services: None, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A redis-server of this test's own, writing every command to its append-only file."""
    require(have("redis-server"), "redis-server (append-only file test)")
    directory = tmp_path / "redis"
    directory.mkdir()
    port = _free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--dir", str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    break
            except redis.RedisError:
                time.sleep(0.1)
        require(bool(client.ping()), "a redis-server of the test's own")
        yield url, directory
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(5)


def aof_bytes(directory: Path) -> bytes:
    """Everything the server wrote to its append-only file(s) (Redis 7 keeps several)."""
    files = [p for p in directory.rglob("*") if p.is_file() and ".aof" in p.name]
    assert files, f"no append-only file in {directory}"
    return b"".join(p.read_bytes() for p in sorted(files))


# -- a worker whose Docker engine is unreachable: DockerUnavailable retries -------------------


def kombu_messages(blob: bytes) -> list[tuple[int, int, dict[str, Any]]]:
    """Every task message written in ``blob`` (an append-only file): ``(start, end, message)``.

    A message is pushed on its queue and copied into the unacknowledged hash, each time as
    kombu's JSON envelope, whose ``body`` is the base64 of the task's arguments.
    """
    text = blob.decode("latin-1")
    decoder = json.JSONDecoder()
    found = []
    for match in re.finditer(r'\{"body": "', text):
        try:
            message, end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(message, dict) and isinstance(message.get("headers"), dict):
            found.append((match.start(), end, message))
    return found


@pytest.fixture
def aof_worker(
    aof_redis: tuple[str, Path], tmp_path: Path, docker_client: docker.DockerClient
) -> Iterator[tuple[WorkerProcess, str, Path]]:
    """A worker whose Docker engine does not answer, on a Redis with an append-only file."""
    url, directory = aof_redis
    host = f"it-dead-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host)
    env = {
        "ORCHESTRATOR_BROKER_URL": url,
        "ORCHESTRATOR_RESULT_BACKEND": url,
        "ORCHESTRATOR_DOCKER_RETRIES": "2",
        "ORCHESTRATOR_DOCKER_TIMEOUT_SECONDS": "5",
    }
    dead = f"unix://{tmp_path}/no-docker.sock"
    process = WorkerProcess(host, tmp_path, env=env, docker_host=dead, registry_url=url)
    process.start()
    yield process, url, directory
    process.stop()
    force_remove_managed(docker_client, host)


def test_docker_unavailable_retries_leave_no_secret_in_redis_or_on_disk(
    aof_worker: tuple[WorkerProcess, str, Path], session_id: str
) -> None:
    worker, url, directory = aof_worker
    r = redis.Redis.from_url(url)
    host = worker.host_name
    sealed_secret, plain_secret = new_secret(), new_secret()
    urls = {"ORCHESTRATOR_BROKER_URL": url, "ORCHESTRATOR_RESULT_BACKEND": url}
    settings = Settings.from_env(settings_env(host, **urls))
    client = OrchestratorClient(settings)
    plain = Celery("plain-client", set_as_current=False)
    plain.conf.update(client_config(settings))
    try:
        # The orchestrator's client (encrypted) and a plain Celery client (plain text).
        request = tool(session_id, "true", secret_parameters={"API_KEY": sealed_secret})
        payload = client._sealed(ToolExecutionRequest.model_validate(request))
        sealed = client._send_request(Task.TOOLS_EXECUTE, payload, queue=f"host.{host}")
        raw = plain.send_task(
            Task.TOOLS_EXECUTE.value,
            args=[tool(session_id, "true", secret_parameters={"API_KEY": plain_secret})],
            queue=f"host.{host}",
        )
        ids = [sealed.async_result.id, raw.id]

        def status(task_id: str) -> str:
            return str(json.loads(r.get(f"celery-task-meta-{task_id}") or b"{}").get("status"))

        deadline = time.monotonic() + 90
        while any(status(task_id) != "FAILURE" for task_id in ids):
            assert leaking_keys(r, sealed_secret) == []  # at every moment of every attempt
            assert time.monotonic() < deadline, [status(task_id) for task_id in ids]
            time.sleep(0.2)
    finally:
        client.close()
        plain.close()
    for task_id in ids:
        meta = json.loads(r.get(f"celery-task-meta-{task_id}") or b"{}")
        assert meta["result"]["exc_type"] == "DockerUnavailable", meta
        assert meta["retries"] == 2, meta
        assert meta["args"][0]["secret_parameters"] == {"API_KEY": "***"}
    assert leaking_keys(r, sealed_secret) == [] and leaking_keys(r, plain_secret) == []

    # Every write ever made is in the append-only file, retried messages included.
    written = aof_bytes(directory)
    assert not holds(written, encodings(sealed_secret))
    mine = [
        (start, end, m) for start, end, m in kombu_messages(written) if m["headers"]["id"] == raw.id
    ]
    resent = [m for _, _, m in mine if m["headers"].get("retries")]
    assert {m["headers"]["retries"] for m in resent} == {1, 2}
    for message in resent:  # the worker sent the plain sender's secret on encrypted
        body = base64.b64decode(message["body"])
        assert b"$encrypted" in body and not holds(body, encodings(plain_secret))
        assert not holds(json.dumps(message["headers"]).encode(), encodings(plain_secret))
    # The plain text the sender wrote is in its own message only (its choice); nowhere else.
    rest = bytearray(written)
    for start, end, message in mine:
        if not message["headers"].get("retries"):
            rest[start:end] = b" " * (end - start)
    assert not holds(bytes(rest), encodings(plain_secret))


def test_the_append_only_file_never_holds_a_secret(
    aof_redis: tuple[str, Path], docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    url, directory = aof_redis
    host = f"it-aof-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host)
    urls = {"ORCHESTRATOR_BROKER_URL": url, "ORCHESTRATOR_RESULT_BACKEND": url}
    worker = WorkerProcess(host, tmp_path, env=urls, registry_url=url).start()
    client = OrchestratorClient(Settings.from_env(settings_env(host, **urls)))
    r = redis.Redis.from_url(url)
    session = f"it-{uuid.uuid4().hex[:10]}"
    tool_secret, relic_secret = new_secret(), new_secret()
    try:
        handle = client.execute_tool(
            tool(session, 'echo "$API_KEY"; sleep 2', secret_parameters={"API_KEY": tool_secret})
        )
        wait_for(lambda: handle.state == "RUNNING", 30, "the run to start")
        assert leaking_keys(r, tool_secret) == []
        assert handle.result(timeout=60).stdout == "***\n"
        relic = {
            "relic_name": "db",
            "session_id": session,
            "image": TEST_IMAGE,
            "command": ["sh", "-c", HTTPD],
            "secret_parameters": {"DB_PASSWORD": relic_secret},
            "health_timeout_seconds": 30,
        }
        info = client.start_relic(relic, timeout=60)
        env = docker_client.containers.get(info.container_id).attrs["Config"]["Env"]
        assert f"DB_PASSWORD={relic_secret}" in env
        assert leaking_keys(r, relic_secret) == []
        client.cleanup_session(session)
        assert leaking_keys(r, tool_secret) == [] and leaking_keys(r, relic_secret) == []
        written = aof_bytes(directory)
        # Every write is in the file: the messages (encrypted) and the run's id are there.
        assert handle.id.encode() in written and holds(written, [b"$encrypted"])
        assert not holds(written, encodings(tool_secret))
        assert not holds(written, encodings(relic_secret))
    finally:
        client.close()
        worker.stop()
        force_remove_managed(docker_client, host)
