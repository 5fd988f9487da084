"""What callers import: the synchronous and asynchronous clients and their Celery settings.

Nothing here imports worker code or docker.
"""

from orchestrator.client.aio import AsyncExecutionHandle, AsyncOrchestratorClient
from orchestrator.client.calls import ExecutionProgress
from orchestrator.client.sync import ExecutionHandle, OrchestratorClient

__all__ = [
    "OrchestratorClient",
    "AsyncOrchestratorClient",
    "ExecutionHandle",
    "AsyncExecutionHandle",
    "ExecutionProgress",
]
