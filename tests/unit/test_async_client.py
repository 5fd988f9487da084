"""The async client: real Celery sends (kombu's in-memory broker), results read from
fakeredis the way a worker stores them, many calls waiting at once on one event loop."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
from celery import states

from orchestrator import ResourceLimits, Settings
from orchestrator.client import AsyncOrchestratorClient, ExecutionProgress, OrchestratorClient
from orchestrator.client import aio_core as aio_module
from orchestrator.errors import InvalidRequest, OrchestratorTimeout
from orchestrator.models import RelicStartRequest, ToolExecutionResult
from orchestrator.protocol import RELICS_QUEUE, TOOLS_QUEUE
from orchestrator.state.logs import LiveLog

TOOL = {"tool_name": "t", "session_id": "s1", "image": "busybox", "command": ["true"]}


def settings(**changes: Any) -> Settings:
    # The sync backend is never reached: results come from the injected fakeredis.
    return Settings(broker_url="memory://", result_backend="redis://127.0.0.1:1/0", **changes)


def make_client(**changes: Any) -> AsyncOrchestratorClient:
    registry = fakeredis.FakeServer()  # one server seen by both clients of the registry
    client = AsyncOrchestratorClient(
        settings(**changes),
        results=fakeredis.FakeAsyncRedis(),
        registry=fakeredis.FakeAsyncRedis(server=registry),
    )
    client.sync._redis = fakeredis.FakeRedis(server=registry)  # routing; what workers write
    return client


def drain(client: AsyncOrchestratorClient, queue: str) -> list[tuple[str, Any]]:
    """Take every message off ``queue``: (task id, first argument)."""
    found = []
    with client.sync.app.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        while True:
            try:
                message = simple.get_nowait()
            except simple.Empty:
                return found
            message.ack()
            found.append((message.headers["id"], message.payload[0][0]))


async def store(client: AsyncOrchestratorClient, task_id: str, status: str, result: Any) -> None:
    """Store a task's meta as a worker's Redis result backend does."""
    backend = client.sync.app.backend
    meta = {"status": status, "result": result, "task_id": task_id, "traceback": None}
    await client.results.set(backend.get_key_for_task(task_id), backend.encode(meta))


def result_of(task_id: str, **changes: Any) -> dict[str, Any]:
    data = {"execution_id": task_id, "tool_name": "t", "session_id": "s1", "status": "succeeded"}
    return {**data, **changes}


def run(scenario: Callable[[AsyncOrchestratorClient], Awaitable[Any]], **changes: Any) -> Any:
    async def main() -> Any:
        async with make_client(**changes) as client:
            drain(client, TOOLS_QUEUE)
            return await scenario(client)

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio_module, "MAX_POLL_SECONDS", 0.02)


def test_24_calls_are_all_sent_before_any_answer_and_the_loop_keeps_ticking():
    async def scenario(client: AsyncOrchestratorClient) -> None:
        ticks = 0
        sent: list[tuple[str, Any]] = []

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        async def worker() -> None:  # answers only once every run is on the queue
            while len(sent) < 24:
                sent.extend(drain(client, TOOLS_QUEUE))
                await asyncio.sleep(0.01)
            seen = ticks
            while ticks < seen + 5:  # the ticker runs while all 24 calls wait
                await asyncio.sleep(0.005)
            for task_id, payload in reversed(sent):
                await store(
                    client,
                    task_id,
                    states.SUCCESS,
                    result_of(task_id, stdout=payload["command"][1]),
                )

        ticking = asyncio.create_task(ticker())
        runs = [client.run_tool({**TOOL, "command": ["echo", str(i)]}) for i in range(24)]
        results = await asyncio.wait_for(asyncio.gather(worker(), *runs), timeout=30)
        ticking.cancel()

        assert [r.stdout for r in results[1:]] == [str(i) for i in range(24)]
        assert {r.execution_id for r in results[1:]} == {task_id for task_id, _ in sent}

    run(scenario)


def test_result_is_a_coroutine_that_leaves_the_loop_free_while_it_waits():
    async def scenario(client: AsyncOrchestratorClient) -> None:
        handle = await client.execute_tool(TOOL)
        assert await handle.state() == states.PENDING
        waiting = asyncio.create_task(handle.result())
        for _ in range(5):  # the loop runs other work while the result is awaited
            await asyncio.sleep(0.01)
        assert not waiting.done()
        await store(client, handle.id, "RUNNING", {"host": "h1"})
        assert await handle.state() == "RUNNING"
        progress = await client.get_execution(handle.id)
        assert isinstance(progress, ExecutionProgress) and progress["host"] == "h1"
        await store(client, handle.id, states.SUCCESS, result_of(handle.id, stdout="hi"))
        result = await asyncio.wait_for(waiting, timeout=5)
        assert result.stdout == "hi"
        assert await client.get_execution(handle.id) == result

    run(scenario)


def test_the_default_wait_is_the_runs_own_limit_plus_the_slack_setting():
    async def scenario(client: AsyncOrchestratorClient) -> tuple[float, float, str]:
        handle = await client.execute_tool({**TOOL, "resource_limits": {"timeout_seconds": 1}})
        started = time.monotonic()
        with pytest.raises(OrchestratorTimeout) as caught:
            await client.run_tool({**TOOL, "resource_limits": {"timeout_seconds": 1}})
        return handle.wait_seconds, time.monotonic() - started, str(caught.value)

    wait, waited, message = run(scenario, client_wait_slack_seconds=0)
    assert wait == 1
    assert 1 <= waited < 10
    assert "no result for task " in message and "was not cancelled and may still run" in message


def test_a_timeout_names_the_task_and_a_later_wait_still_gets_the_result():
    async def scenario(client: AsyncOrchestratorClient) -> None:
        handle = await client.execute_tool(TOOL)
        with pytest.raises(
            OrchestratorTimeout, match=f"no result for task {handle.id} after 0.05 s"
        ):
            await handle.result(timeout=0.05)
        await store(client, handle.id, states.SUCCESS, result_of(handle.id))
        assert (await handle.result(timeout=5)).status == "succeeded"

    run(scenario)


def test_a_worker_error_is_raised_as_celery_rebuilds_it():
    async def scenario(client: AsyncOrchestratorClient) -> None:
        handle = await client.execute_tool(TOOL)
        error = {
            "exc_type": "InvalidRequest",
            "exc_message": ["image: not allowed"],
            "exc_module": "orchestrator.errors",
        }
        await store(client, handle.id, states.FAILURE, error)
        with pytest.raises(InvalidRequest, match="image: not allowed"):
            await handle.result(timeout=5)
        progress = await client.get_execution(handle.id)
        assert progress["state"] == "FAILURE" and "image: not allowed" in progress["error"]

    run(scenario)


def test_a_revoked_run_is_a_cancelled_result():
    async def scenario(client: AsyncOrchestratorClient) -> ToolExecutionResult:
        handle = await client.execute_tool(TOOL)
        revoked = {
            "exc_type": "TaskRevokedError",
            "exc_message": ["revoked"],
            "exc_module": "celery.exceptions",
        }
        await store(client, handle.id, states.REVOKED, revoked)
        return await handle.result(timeout=5)

    result = run(scenario)
    assert result.status == "cancelled" and result.tool_name == "t"


def test_a_bad_request_is_refused_before_anything_is_sent():
    async def scenario(client: AsyncOrchestratorClient) -> list[Any]:
        with pytest.raises(InvalidRequest, match="image"):
            await client.execute_tool({**TOOL, "image": ""})
        return drain(client, TOOLS_QUEUE)

    assert run(scenario) == []


def test_a_relic_with_plain_resource_limits_keeps_the_relic_defaults_it_does_not_set():
    request = RelicStartRequest(
        relic_name="db",
        session_id="s1",
        image="busybox",
        resource_limits=ResourceLimits(memory_mb=64),
    )

    async def scenario(client: AsyncOrchestratorClient) -> list[tuple[str, Any]]:
        drain(client, RELICS_QUEUE)
        with pytest.raises(OrchestratorTimeout):
            await client.start_relic(request, timeout=0.01)
        return drain(client, RELICS_QUEUE)

    [(_, payload)] = run(scenario)
    assert payload["resource_limits"]["memory_mb"] == 64
    assert payload["resource_limits"]["cpu_limit"] == 2.0


def test_async_with_closes_the_client():
    async def scenario() -> AsyncOrchestratorClient:
        async with make_client() as client:
            await client.execute_tool(TOOL)
        return client

    client = asyncio.run(scenario())
    with pytest.raises(RuntimeError, match="this AsyncOrchestratorClient is closed"):
        asyncio.run(client.execute_tool(TOOL))
    asyncio.run(client.close())  # a second close passes


def test_a_result_backend_that_is_not_redis_is_named():
    client = AsyncOrchestratorClient(Settings(broker_url="memory://", result_backend="rpc://"))
    with pytest.raises(InvalidRequest, match="ORCHESTRATOR_RESULT_BACKEND rpc://"):
        asyncio.run(client.get_execution("x"))


def test_every_public_method_of_the_sync_client_is_a_typed_coroutine_with_its_signature():
    sync_methods = {
        name: method
        for name, method in inspect.getmembers(OrchestratorClient, inspect.isfunction)
        if not name.startswith("_")
    }
    for name, method in sync_methods.items():
        mirror = getattr(AsyncOrchestratorClient, name)
        assert inspect.iscoroutinefunction(mirror) or inspect.isasyncgenfunction(mirror), name
        ours, theirs = inspect.signature(mirror), inspect.signature(method)
        assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == [
            (p.name, p.default, p.kind) for p in theirs.parameters.values()
        ], name
        assert "Callable" not in str(ours) and ours.return_annotation != inspect.Signature.empty


def test_a_command_in_a_relic_goes_out_and_its_result_comes_back():
    async def scenario(client: AsyncOrchestratorClient) -> None:
        drain(client, RELICS_QUEUE)
        handle = await client.start_exec("r1", ["echo", "hi"], timeout=5)
        [(exec_id, payload)] = drain(client, RELICS_QUEUE)
        assert (exec_id, payload["command"], handle.wait_seconds) == (handle.id, ["echo", "hi"], 65)
        assert await handle.state() == states.PENDING
        done = {"exec_id": handle.id, "relic_id": "r1", "status": "succeeded", "stdout": "hi\n"}
        await store(client, handle.id, states.SUCCESS, done)
        assert (await handle.result()).stdout == "hi\n"

    run(scenario)


def test_files_go_to_a_relic_and_come_back_as_bytes():
    async def scenario(client: AsyncOrchestratorClient) -> None:
        drain(client, RELICS_QUEUE)

        async def worker() -> None:
            while not (sent := drain(client, RELICS_QUEUE)):
                await asyncio.sleep(0.01)
            [(task_id, relic_id)] = sent
            await store(client, task_id, states.SUCCESS, {"relic_id": relic_id, "bytes": 3})

        written, _ = await asyncio.gather(client.put_files("r1", {"/w/a": b"abc"}), worker())
        assert written.bytes == 3
        with pytest.raises(InvalidRequest, match="paths"):
            await client.get_files("r1", ["relative/path"])

    run(scenario)


def test_live_output_is_read_and_followed_with_asyncio():
    async def scenario(client: AsyncOrchestratorClient) -> None:
        handle = await client.execute_tool(TOOL)
        assert not await client.has_live_logs(handle.id)
        live = LiveLog(client.sync.redis, handle.id, 1 << 20, 60)
        live.append("stdout", "h\u00e9".encode()[:2])  # "é" split between two entries
        live.append("stdout", "h\u00e9".encode()[2:] + b"\n")
        live.append("stderr", b"warn\n")
        assert await client.has_live_logs(handle.id)
        assert await client.live_logs(handle.id) == {"stdout": "h\u00e9\n", "stderr": "warn\n"}
        assert await client.get_logs(handle.id) == await client.live_logs(handle.id)
        first = [c async for c in client.follow_logs(handle.id, idle_rounds=1, block_ms=10)]
        live.close()
        chunks = [c async for c in client.follow_logs(handle.id, block_ms=10)]
        assert chunks == first == [("stdout", "h"), ("stdout", "\u00e9\n"), ("stderr", "warn\n")]

    run(scenario)
