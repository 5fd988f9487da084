"""What callers import: the synchronous and asynchronous clients and their Celery settings.

Nothing here imports worker code or docker.
"""

from orchestrator.client.sync import (
    AsyncOrchestratorClient,
    ExecutionHandle,
    ExecutionProgress,
    OrchestratorClient,
)

__all__ = ["OrchestratorClient", "AsyncOrchestratorClient", "ExecutionHandle", "ExecutionProgress"]
