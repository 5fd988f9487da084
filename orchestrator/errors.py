"""The exception tree of orchestrator.

Every error the library raises derives from :class:`OrchestratorError`, so callers
can catch one type. Each class carries a single human-readable message (its only
argument) so that it survives Celery's JSON result backend intact and is rebuilt
on the client with the same type and text.

::

    OrchestratorError
    ├── InvalidRequest            bad input, rejected before anything starts
    │   ├── LimitExceeded         a resource request above the server's maxima
    │   │   └── QuotaExceeded     a session, host or Redis budget is used up
    │   └── Forbidden             the server's containment policy refuses what was asked
    ├── NotFound
    │   ├── ExecutionNotFound
    │   ├── RelicNotFound
    │   ├── ContainerNotFound
    │   ├── NetworkNotFound
    │   ├── PathNotFound          no such file or directory inside a container
    │   └── VolumeNotFound
    ├── DockerError               the engine refused or failed an operation
    │   ├── DockerUnavailable     the engine cannot be reached (transient, retried)
    │   ├── ImageNotFound
    │   ├── ImageBuildFailed
    │   ├── ContainerConflict
    │   ├── NetworkInUse          containers are still attached to the network
    │   └── VolumeInUse           a container still uses the volume
    ├── RelicError
    │   ├── RelicExited           the relic's process ended before it was healthy
    │   ├── RelicUnhealthy        the health endpoint never answered in time
    │   └── RelicConflict         a different relic already holds that name
    ├── SessionError
    │   ├── HostUnavailable       the host that owns a session is gone
    │   └── NetworkPoolExhausted  no free subnet left for a session network
    ├── WrongHost                 session work reached a host that does not own the session
    └── OrchestratorTimeout       a client gave up waiting for a result
"""

from __future__ import annotations

__all__ = [
    "OrchestratorError",
    "InvalidRequest",
    "LimitExceeded",
    "QuotaExceeded",
    "Forbidden",
    "NotFound",
    "ExecutionNotFound",
    "RelicNotFound",
    "ContainerNotFound",
    "NetworkNotFound",
    "PathNotFound",
    "VolumeNotFound",
    "DockerError",
    "DockerUnavailable",
    "ImageNotFound",
    "ImageBuildFailed",
    "ContainerConflict",
    "NetworkInUse",
    "VolumeInUse",
    "RelicError",
    "RelicExited",
    "RelicUnhealthy",
    "RelicConflict",
    "SessionError",
    "HostUnavailable",
    "NetworkPoolExhausted",
    "WrongHost",
    "OrchestratorTimeout",
]


class OrchestratorError(Exception):
    """Base class of every error raised by orchestrator."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidRequest(OrchestratorError):
    """Raised when a request fails validation; the message names the field."""


class LimitExceeded(InvalidRequest):
    """Raised when a requested resource limit is above the server's maximum."""


class QuotaExceeded(LimitExceeded):
    """Raised when a session, host or Redis budget set by the operator is used up; the
    message names the quota and the setting that sets it."""


class Forbidden(InvalidRequest):
    """Raised when the containment policy refuses a request field; the message names the
    field, the rule and the setting (if any) that would allow it."""


class NotFound(OrchestratorError):
    """Raised when an object looked up by id does not exist."""


class ExecutionNotFound(NotFound):
    """Raised when no tool execution is known under an execution id."""


class RelicNotFound(NotFound):
    """Raised when no relic is known under a relic id."""


class ContainerNotFound(NotFound):
    """Raised when the Docker engine has no container with a given id or name."""


class NetworkNotFound(NotFound):
    """Raised when the Docker engine has no network with a given id or name."""


class PathNotFound(NotFound):
    """Raised when a path does not exist inside a container (file copies, archives)."""


class VolumeNotFound(NotFound):
    """Raised when the Docker engine has no volume with a given name."""


class DockerError(OrchestratorError):
    """Raised when the Docker engine refuses or fails an operation."""


class DockerUnavailable(DockerError):
    """Raised when the Docker engine cannot be reached; tasks retry on it."""


class ImageNotFound(DockerError):
    """Raised when an image is neither present locally nor pullable."""


class ImageBuildFailed(DockerError):
    """Raised when building an image from a Dockerfile fails."""


class ContainerConflict(DockerError):
    """Raised when a container name is already taken (HTTP 409 on create)."""


class NetworkInUse(DockerError):
    """Raised when a network cannot be removed because containers are attached to it."""


class VolumeInUse(DockerError):
    """Raised when a volume cannot be removed because a container uses it."""


class RelicError(OrchestratorError):
    """Raised when a relic cannot be brought up."""


class RelicExited(RelicError):
    """Raised when a relic's container exits before its health check passes."""


class RelicUnhealthy(RelicError):
    """Raised when a relic's health endpoint does not answer within its timeout."""


class RelicConflict(RelicError):
    """Raised when a session already runs a different relic under the same name."""


class SessionError(OrchestratorError):
    """Raised when session-scoped work cannot be placed."""


class HostUnavailable(SessionError):
    """Raised when the Docker host that owns a session has no live worker."""


class NetworkPoolExhausted(SessionError):
    """Raised when the subnet pool for session networks has no free subnet."""


class WrongHost(OrchestratorError):
    """Raised when session work reaches a host that does not own the session.

    Tasks catch it and forward themselves to the owner's queue.
    """

    def __init__(self, message: str = "", owner: str = "") -> None:
        super().__init__(message)
        self.owner = owner


class OrchestratorTimeout(OrchestratorError):
    """Raised when a client stops waiting for a task's result."""
