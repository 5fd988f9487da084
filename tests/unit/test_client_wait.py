"""The client's wait for a result: cut into slices, each starting with a read of the store."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery.exceptions import TimeoutError as CeleryTimeout

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
    with pytest.raises(OrchestratorTimeout, match="no result for task task-1 after 0.05 s"):
        _unwrap(result, timeout=0.05)  # type: ignore[arg-type]
    assert all(0 <= wait <= 0.01 for wait in result.waits)


def test_a_short_timeout_is_one_short_slice() -> None:
    result = SlicedResult(ready_after=10**9)
    with pytest.raises(OrchestratorTimeout):
        _unwrap(result, timeout=0.001)  # type: ignore[arg-type]
    assert len(result.waits) <= 2 and result.waits[0] <= 0.001
