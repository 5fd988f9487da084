"""The wire schema shared by clients, workers, the CLI and the janitor.

Task names, queue names, the label schema on every managed Docker object, and the
status vocabulary. These strings are what a running deployment and its users script
against: change none of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from orchestrator.errors import InvalidRequest

__all__ = [
    "Task",
    "DEFAULT_QUEUE",
    "TOOLS_QUEUE",
    "RELICS_QUEUE",
    "ROUTED_QUEUES",
    "host_queue",
    "task_routes",
    "Kind",
    "Status",
    "FINAL_STATUSES",
    "LABEL_PREFIX",
    "label",
    "MANAGED_FILTER",
    "label_filter",
    "Labels",
    "parse_labels",
    "ID_PATTERN",
    "ID_MAX_LENGTH",
    "CONTAINER_REF_MAX_LENGTH",
    "is_valid_id",
    "validate_id",
    "TOOL_CONTAINER_PREFIX",
    "tool_container_name",
]


class Task(StrEnum):
    """Every Celery task name, public (in the interface) and internal (fan-out steps)."""

    TOOLS_EXECUTE = "orchestrator.tools.execute"
    TOOLS_CANCEL = "orchestrator.tools.cancel"
    RELICS_START = "orchestrator.relics.start"
    RELICS_INFO = "orchestrator.relics.info"
    RELICS_LIST = "orchestrator.relics.list"
    RELICS_STOP = "orchestrator.relics.stop"
    RELICS_REMOVE = "orchestrator.relics.remove"
    RELICS_LIST_HOST = "orchestrator.relics.list_host"
    RELICS_MERGE_LISTS = "orchestrator.relics.merge_lists"
    RELICS_EXEC = "orchestrator.relics.exec"
    RELICS_PUT_FILES = "orchestrator.relics.put_files"
    RELICS_GET_FILES = "orchestrator.relics.get_files"
    TOOLS_COLLECTED_FILE = "orchestrator.tools.collected_file"
    STATS_CONTAINER = "orchestrator.stats.container"
    STATS_ALL = "orchestrator.stats.all"
    STATS_HOST = "orchestrator.stats.host"
    STATS_MERGE = "orchestrator.stats.merge"
    CLEANUP_SESSION = "orchestrator.cleanup.session"
    CLEANUP_NETWORKS = "orchestrator.cleanup.networks"
    CLEANUP_STOP_CONTAINERS = "orchestrator.cleanup.stop_containers"
    CLEANUP_REMOVE_CONTAINERS = "orchestrator.cleanup.remove_containers"
    CLEANUP_REMOVE_VOLUMES = "orchestrator.cleanup.remove_volumes"
    CLEANUP_REMOVE_NETWORK = "orchestrator.cleanup.remove_network"
    CLEANUP_MERGE = "orchestrator.cleanup.merge"
    CLEANUP_NETWORKS_HOST = "orchestrator.cleanup.networks_host"
    CLEANUP_MERGE_NETWORKS = "orchestrator.cleanup.merge_networks"
    SESSIONS_TOUCH = "orchestrator.sessions.touch"
    JANITOR_RUN = "orchestrator.janitor.run"
    JANITOR_HOST = "orchestrator.janitor.host"
    JANITOR_MERGE = "orchestrator.janitor.merge"


# -- queues -----------------------------------------------------------------------------

#: Celery's default queue: a plain client with no routing can ``send_task`` by name.
DEFAULT_QUEUE = "celery"
TOOLS_QUEUE = "tools"
RELICS_QUEUE = "relics"
#: Where a task sent without an explicit queue can wait (the routes lead to one of these).
ROUTED_QUEUES = (TOOLS_QUEUE, RELICS_QUEUE, DEFAULT_QUEUE)


def host_queue(host_name: str) -> str:
    """The queue consumed only by the workers of Docker host ``host_name``."""
    return f"host.{host_name}"


def task_routes() -> dict[str, dict[str, str]]:
    """Default routes by task name (an explicit ``queue=`` wins)."""
    return {
        "orchestrator.tools.*": {"queue": TOOLS_QUEUE},
        "orchestrator.relics.*": {"queue": RELICS_QUEUE},
    }


# -- statuses ---------------------------------------------------------------------------


class Status(StrEnum):
    """How a tool execution (or an exec in a relic) ended, or that it is still running."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    OOM_KILLED = "oom_killed"
    ERROR = "error"


#: Statuses after which nothing about an execution changes any more.
FINAL_STATUSES: frozenset[str] = frozenset(
    s.value for s in Status if s not in (Status.QUEUED, Status.RUNNING)
)


class Kind(StrEnum):
    """What a managed Docker object is (its ``orchestrator.kind`` label)."""

    TOOL = "tool"
    RELIC = "relic"
    POOL = "pool"
    SESSION_NETWORK = "session-network"
    VOLUME = "volume"
    #: an image the orchestrator built (pulled images are tracked in Redis, not labelled)
    IMAGE = "image"


# -- labels -----------------------------------------------------------------------------

LABEL_PREFIX = "orchestrator."


def label(key: str) -> str:
    """The full label name of ``key`` (``managed`` -> ``orchestrator.managed``)."""
    return LABEL_PREFIX + key


#: The engine-side filter that selects every object the orchestrator manages.
MANAGED_FILTER = f"{LABEL_PREFIX}managed=true"


def label_filter(**values: str) -> list[str]:
    """Engine label filters: always ``managed=true``, plus each ``key=value`` given."""
    return [MANAGED_FILTER, *(f"{LABEL_PREFIX}{k}={v}" for k, v in values.items())]


@dataclass(frozen=True)
class Labels:
    """The orchestrator's labels on one Docker object, parsed."""

    managed: bool
    kind: str | None = None
    session: str | None = None
    host: str | None = None
    deadline: float = 0.0
    execution: str | None = None
    relic: str | None = None
    keep: bool = False

    @property
    def owner_id(self) -> str | None:
        """The execution or relic id the object belongs to."""
        return self.execution or self.relic


def parse_labels(raw: Mapping[str, str] | None) -> Labels:
    """Read the orchestrator's labels from an object's label map (missing ones: defaults)."""
    raw = raw or {}

    def get(key: str) -> str | None:
        return raw.get(LABEL_PREFIX + key) or None

    try:
        deadline = float(get("deadline") or 0)
    except ValueError:
        deadline = 0.0
    return Labels(
        managed=get("managed") == "true",
        kind=get("kind"),
        session=get("session"),
        host=get("host"),
        deadline=deadline,
        execution=get("execution"),
        relic=get("relic"),
        keep=get("keep") == "true",
    )


# -- ids ----------------------------------------------------------------------------------

#: The one rule for every id that can reach a Docker name or an engine API path (session,
#: execution, relic ids, tool and relic names): Docker's own name alphabet, so no ``/``,
#: ``%`` or space can walk out of ``/containers/<name>/...`` and no id needs escaping.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
ID_MAX_LENGTH = 64
#: A container id (64 hex digits) or a managed container's name, as ``stats.container``
#: accepts: the same alphabet, longer (relic container names hold two ids).
CONTAINER_REF_MAX_LENGTH = 255
_ID = re.compile(ID_PATTERN.strip("^$"))


def is_valid_id(value: Any, max_length: int = ID_MAX_LENGTH) -> bool:
    """True when ``value`` is a string that follows :data:`ID_PATTERN` within ``max_length``."""
    return isinstance(value, str) and len(value) <= max_length and bool(_ID.fullmatch(value))


def validate_id(field: str, value: Any, *, max_length: int = ID_MAX_LENGTH) -> str:
    """Refuse anything but a well-formed id, before it can name or look up anything.

    Args:
        field: the argument's name, first in the error message (``relic_id``...).
        value: what the caller sent.
        max_length: the longest accepted id.

    Returns:
        ``value``, unchanged.

    Raises:
        InvalidRequest: naming ``field`` and the rule.
    """
    if is_valid_id(value, max_length):
        return str(value)
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    raise InvalidRequest(
        f"{field}: must be 1 to {max_length} letters, digits, '_', '.' or '-', starting "
        f"with a letter or digit (got {shown})"
    )


TOOL_CONTAINER_PREFIX = "orch-tool-"


def tool_container_name(execution_id: str) -> str:
    """The container name of an execution: deterministic, so a redelivery finds it."""
    return f"{TOOL_CONTAINER_PREFIX}{execution_id}"
