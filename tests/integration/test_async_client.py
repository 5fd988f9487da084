"""The async client against a real worker: 24 runs in flight at once on one event loop,
connections closed, a workspace relic driven with coroutines."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from orchestrator import AsyncOrchestratorClient, OrchestratorClient, Settings
from tests.integration.conftest import USED_HOSTS
from tests.integration.harness import (
    REDIS_URL,
    TEST_IMAGE,
    WorkerProcess,
    force_remove_managed,
    settings_env,
    tool,
)

RUNS = 24
#: A run gives up waiting for the others after this many seconds (and fails).
BARRIER_SECONDS = 120


@pytest.fixture(scope="module")
def wide_worker(
    services: None,
    worker_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: object,
) -> Iterator[WorkerProcess]:
    """A worker with a thread for each of the 24 runs (the shared one has 16)."""
    host_name = f"it-async-{uuid.uuid4().hex[:6]}"
    USED_HOSTS.add(host_name)
    env = {**worker_env, "ORCHESTRATOR_WORKER_CONCURRENCY": str(RUNS + 8)}
    process = WorkerProcess(host_name, tmp_path_factory.mktemp("logs"), env=env).start()
    yield process
    process.stop()
    force_remove_managed(docker_client, host_name)


def barrier_run(session_id: str, barrier: Path, index: int) -> dict[str, object]:
    """A run that sleeps a second, then waits until all 24 runs have arrived, then ends."""
    script = (
        f"sleep 1; touch /barrier/{index}; i=0; "
        f'while [ "$(ls /barrier | wc -l)" -lt {RUNS} ]; do '
        f"i=$((i+1)); [ $i -gt {BARRIER_SECONDS * 10} ] && exit 7; sleep 0.1; done; echo {index}"
    )
    return tool(
        session_id,
        script,
        volumes=[{"source": str(barrier), "target": "/barrier"}],
        resource_limits={"memory_mb": 16, "timeout_seconds": BARRIER_SECONDS + 60},
    )


def test_24_runs_are_in_flight_at_once_and_the_loop_keeps_ticking(
    wide_worker: WorkerProcess, shared_dir: Path, session_id: str
) -> None:
    # Each run ends only once all 24 are running: they all succeed only if the client sent
    # all 24 before any of them finished (a thread per wait sent 6 at a time on 2 CPUs).
    barrier = shared_dir / f"barrier-{session_id}"
    barrier.mkdir()
    barrier.chmod(0o777)

    async def scenario() -> tuple[list[str], bool, bool]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.05)

        settings = Settings.from_env(settings_env(wide_worker.host_name))
        async with AsyncOrchestratorClient(settings) as client:
            ticking = asyncio.create_task(ticker())
            runs = [client.run_tool(barrier_run(session_id, barrier, i)) for i in range(RUNS)]
            await asyncio.sleep(0.1)  # the ticker's first tick
            first = ticks
            results = await asyncio.gather(*runs)
            ticked_during_runs = ticks > first
            handle = await client.execute_tool(tool(session_id, "echo one"))
            waiting = handle.result()
            is_coroutine = asyncio.iscoroutine(waiting)
            before = ticks
            one = await waiting
            ticked_while_waiting = ticks > before
            ticking.cancel()
        assert one.stdout == "one\n"
        return (
            [r.status + ":" + r.stdout.strip() for r in results],
            ticked_during_runs,
            (is_coroutine and ticked_while_waiting),
        )

    outcomes, ticked_during_runs, responsive = asyncio.run(scenario())

    assert outcomes == [f"succeeded:{i}" for i in range(RUNS)]
    assert len(list(barrier.iterdir())) == RUNS
    assert ticked_during_runs and responsive  # the loop ran the ticker during the waits


def redis_connections() -> int:
    """This process's open TCP connections to the test Redis server."""
    port = redis.Redis.from_url(REDIS_URL).connection_pool.connection_kwargs.get("port", 6379)
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            established = fields[3] == "01"
            if established and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                count += 1
    return count


def test_with_and_async_with_close_every_connection(wide_worker: WorkerProcess) -> None:
    settings = Settings.from_env(settings_env(wide_worker.host_name))
    with OrchestratorClient(settings) as client:  # kombu keeps its broker connections pooled
        client.list_relics(session_id="nobody")
    before = redis_connections()
    with OrchestratorClient(settings) as client:
        client.list_relics(session_id="nobody")
        assert redis_connections() > before
    assert redis_connections() == before

    async def use() -> None:
        async with AsyncOrchestratorClient(settings) as aclient:
            await aclient.list_relics(session_id="nobody")
            assert redis_connections() > before

    asyncio.run(use())
    assert redis_connections() == before


def test_a_workspace_relic_through_the_async_client(
    wide_worker: WorkerProcess, session_id: str
) -> None:
    async def scenario() -> tuple[str, dict[str, bytes], str, int]:
        settings = Settings.from_env(settings_env(wide_worker.host_name))
        async with AsyncOrchestratorClient(settings) as client:
            try:
                relic = await client.start_relic(
                    {
                        "relic_name": "ws",
                        "session_id": session_id,
                        "image": TEST_IMAGE,
                        "command": ["sleep", "3600"],
                        "health_check_endpoint": None,
                        "resource_limits": {"memory_mb": 32},
                    }
                )
                data = bytes(range(256)) * 1024  # 256 KiB: travels beside the messages
                await client.put_files(relic.relic_id, {"/tmp/w/blob": data, "/tmp/w/t": "hé"})
                out = await client.exec_in_relic(relic.relic_id, "wc -c < /tmp/w/blob")
                files = await client.get_files(relic.relic_id, ["/tmp/w/blob", "/tmp/w/t"])
                info = await client.get_relic(relic.relic_id)
                printing = await client.start_exec(relic.relic_id, "echo one; sleep 1; echo two")
                followed = [text async for _, text in client.follow_logs(printing.id)]
                assert "".join(followed) == "one\ntwo\n"
                assert (await printing.result()).stdout == "one\ntwo\n"
                return out.stdout.strip(), files, info.status, len(data)
            finally:
                await client.cleanup_session(session_id)

    size, files, status, sent = asyncio.run(scenario())
    assert size == str(sent) and status == "running"
    assert files == {"/tmp/w/blob": bytes(range(256)) * 1024, "/tmp/w/t": "hé".encode()}
