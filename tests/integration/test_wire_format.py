"""The wire format is a contract: a message written byte for byte as clients send it today
(Celery protocol 2, JSON, kombu's Redis envelope) runs, and its stored result has today's
shape. A running deployment upgrades in place only while this holds.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
import redis

from orchestrator import OrchestratorClient
from tests.integration.harness import BROKER_URL, REDIS_URL, tool

#: The keys of a stored ToolExecutionResult and of its stats, as deployed clients read them.
RESULT_KEYS = {
    "container_id",
    "duration_seconds",
    "error",
    "execution_id",
    "exit_code",
    "finished_at",
    "host",
    "result",
    "session_id",
    "started_at",
    "stats",
    "status",
    "stderr",
    "stderr_truncated",
    "stdout",
    "stdout_truncated",
    "tool_name",
}
#: Keys added since, each with a default: a deployed client's model ignores keys it does not
#: know (pydantic's default), so adding is compatible; removing or renaming is not.
ADDED_RESULT_KEYS = {"files", "missing_files", "skipped_files"}
STATS_KEYS = {
    "cpu_seconds",
    "disk_read_mb",
    "disk_write_mb",
    "network_rx_mb",
    "network_tx_mb",
    "peak_memory_mb",
    "samples",
}


def raw_message(task: str, task_id: str, args: list[Any], queue: str) -> bytes:
    """A Celery protocol 2 message in kombu's Redis envelope, written out by hand."""
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None}])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": "(...)",
            "kwargsrepr": "{}",
            "origin": "wire-format-test",
            "ignore_result": False,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": str(uuid.uuid4()),
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope).encode()


def stored_result(backend: redis.Redis, task_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = backend.get(f"celery-task-meta-{task_id}")
        if raw is not None:
            meta = json.loads(raw)
            if meta.get("status") in ("SUCCESS", "FAILURE"):
                return dict(meta)
        time.sleep(0.1)
    raise AssertionError(f"no stored result for {task_id} within {timeout} s")


@pytest.mark.skipif(
    not BROKER_URL.startswith("redis"), reason="kombu's Redis envelope is Redis-only"
)
def test_a_hand_written_message_of_todays_format_gets_todays_result_shape(
    client: OrchestratorClient, session_id: str
) -> None:
    broker = redis.Redis.from_url(BROKER_URL)
    backend = redis.Redis.from_url(REDIS_URL)
    task_id = str(uuid.uuid4())
    request = tool(session_id, "echo '{\"n\": 7}'")
    broker.lpush("tools", raw_message("orchestrator.tools.execute", task_id, [request], "tools"))

    meta = stored_result(backend, task_id)

    assert meta["status"] == "SUCCESS", meta
    result = meta["result"]
    assert set(result) == RESULT_KEYS | ADDED_RESULT_KEYS
    assert result["files"] == result["missing_files"] == result["skipped_files"] == []
    assert set(result["stats"]) == STATS_KEYS
    assert result["execution_id"] == task_id
    assert result["status"] == "succeeded"
    assert result["result"] == {"n": 7}
    assert result["container_id"]
    # The client reads the same stored result back into today's model.
    assert client.get_execution(task_id).result == {"n": 7}


@pytest.mark.skipif(
    not BROKER_URL.startswith("redis"), reason="kombu's Redis envelope is Redis-only"
)
def test_a_hand_written_cancel_and_cleanup_keep_their_reply_shapes(
    client: OrchestratorClient, session_id: str
) -> None:
    broker = redis.Redis.from_url(BROKER_URL)
    backend = redis.Redis.from_url(REDIS_URL)
    cancel_id, cleanup_id = str(uuid.uuid4()), str(uuid.uuid4())
    unknown = str(uuid.uuid4())
    broker.lpush("tools", raw_message("orchestrator.tools.cancel", cancel_id, [unknown], "tools"))
    broker.lpush(
        "celery",
        raw_message("orchestrator.cleanup.session", cleanup_id, [session_id, True], "celery"),
    )

    cancel = stored_result(backend, cancel_id)["result"]
    cleanup = stored_result(backend, cleanup_id)["result"]

    assert set(cancel) == {"execution_id", "cancelled", "status"}
    assert cancel["execution_id"] == unknown
    assert set(cleanup) == {
        "containers_removed",
        "errors",
        "hosts",
        "networks_removed",
        "session_id",
        "volumes_removed",
    }
    assert cleanup["session_id"] == session_id
    assert cleanup["containers_removed"] == 0
