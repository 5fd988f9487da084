"""The client's wait for a result: cut into slices, each starting with a read of the store,
and finite by default."""

from __future__ import annotations

import time
from typing import Any

import fakeredis
import pytest
from celery.exceptions import TimeoutError as CeleryTimeout

from orchestrator import OrchestratorClient, ResourceLimits, Settings
from orchestrator.client import sync as client_module
from orchestrator.client.sync import _unwrap
from orchestrator.errors import OrchestratorTimeout


class SlicedResult:
    """An AsyncResult whose announcement never comes; its stored result appears late."""

    id = "task-1"

    def __init__(self, ready_after: int) -> None:
        self.ready_after = ready_after
        self.waits: list[float] = []

    def get(self, timeout: float, **_: Any) -> Any:
        self.waits.append(timeout)
        if len(self.waits) > self.ready_after:  # Celery reads the store first on each call
            return {"ok": 1}
        time.sleep(timeout)
        raise CeleryTimeout("no announcement")


@pytest.fixture(autouse=True)
def short_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "RESULT_RECHECK_SECONDS", 0.01)


def test_a_result_stored_between_slices_is_returned() -> None:
    result = SlicedResult(ready_after=3)
    assert _unwrap(result, timeout=30) == {"ok": 1}  # type: ignore[arg-type]
    assert result.waits == [0.01] * 4


def test_no_timeout_waits_slice_after_slice() -> None:
    result = SlicedResult(ready_after=5)
    assert _unwrap(result, timeout=None) == {"ok": 1}  # type: ignore[arg-type]
    assert len(result.waits) == 6


def test_the_timeout_still_ends_the_wait() -> None:
    result = SlicedResult(ready_after=10**9)
    with pytest.raises(OrchestratorTimeout, match="no result for task task-1 after 0.05 s") as e:
        _unwrap(result, timeout=0.05)  # type: ignore[arg-type]
    assert "the task was not cancelled and may still run" in str(e.value)
    assert all(0 <= wait <= 0.01 for wait in result.waits)


def test_a_short_timeout_is_one_short_slice() -> None:
    result = SlicedResult(ready_after=10**9)
    with pytest.raises(OrchestratorTimeout):
        _unwrap(result, timeout=0.001)  # type: ignore[arg-type]
    assert len(result.waits) <= 2 and result.waits[0] <= 0.001


def test_run_tool_and_start_relic_wait_their_own_limit_plus_the_slack_by_default() -> None:
    settings = Settings(
        broker_url="memory://", result_backend="cache+memory://", client_wait_slack_seconds=0
    )
    with OrchestratorClient(settings) as client:
        client._redis = fakeredis.FakeRedis()  # the registry (routing of the relic)
        base = {"session_id": "s1", "image": "busybox"}
        started = time.monotonic()
        with pytest.raises(OrchestratorTimeout, match=r"after 1 s; the task was not cancelled"):
            client.run_tool({**base, "tool_name": "t", "resource_limits": {"timeout_seconds": 1}})
        with pytest.raises(OrchestratorTimeout, match=r"after 0.5 s; the task was not cancelled"):
            client.start_relic({**base, "relic_name": "db", "health_timeout_seconds": 0.5})
        assert time.monotonic() - started < 30
        handle = client.execute_tool({**base, "tool_name": "t"})
        assert handle.wait_seconds == ResourceLimits().timeout_seconds
