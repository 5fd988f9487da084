"""orchestrator: tool executions and session relics in Docker, as Celery tasks.

The public surface for callers is the client and the models::

    from orchestrator import OrchestratorClient, ToolExecutionRequest
"""

from orchestrator.client import (
    AsyncOrchestratorClient,
    ExecutionHandle,
    ExecutionProgress,
    OrchestratorClient,
)
from orchestrator.errors import OrchestratorError
from orchestrator.models import (
    AggregateStats,
    BuildSpec,
    CleanupReport,
    ContainerStats,
    RelicInfo,
    RelicStartRequest,
    ResourceLimits,
    ToolExecutionRequest,
    ToolExecutionResult,
    VolumeMount,
)
from orchestrator.settings import Settings

__all__ = [
    "AggregateStats",
    "AsyncOrchestratorClient",
    "BuildSpec",
    "CleanupReport",
    "ContainerStats",
    "ExecutionHandle",
    "ExecutionProgress",
    "OrchestratorClient",
    "OrchestratorError",
    "RelicInfo",
    "RelicStartRequest",
    "ResourceLimits",
    "Settings",
    "ToolExecutionRequest",
    "ToolExecutionResult",
    "VolumeMount",
]

__version__ = "0.1.0"
