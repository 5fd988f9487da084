"""Stats tasks: one container (forwarded to the host that runs it), or every managed
container of every live host, sampled per host in parallel and merged into AggregateStats."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from orchestrator.errors import WrongHost
from orchestrator.protocol import CONTAINER_REF_MAX_LENGTH, Task, validate_id
from orchestrator.worker import collect
from tasks.forwarding import fan_out, forward
from tasks.runtime import get_runtime
from tasks.tools import RETRY


@shared_task(bind=True, name=Task.STATS_CONTAINER.value, **RETRY)
def container(self: Any, ident: str) -> dict[str, Any]:
    """ContainerStats of a container id or name, an execution id or a relic id.

    Only managed containers are ever reported (see ``collect.find_container``).
    """
    validate_id("container", ident, max_length=CONTAINER_REF_MAX_LENGTH)
    try:
        return collect.stats_for(get_runtime(), ident).model_dump(mode="json")
    except WrongHost as exc:
        forward(self, exc, [ident])


@shared_task(name=Task.STATS_HOST.value)
def host() -> dict[str, Any]:
    """This host's managed containers; an engine failure is reported, not raised."""
    return collect.host_report(get_runtime()).model_dump(mode="json")


@shared_task(name=Task.STATS_MERGE.value)
def merge(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the hosts' replies and the execution metrics into AggregateStats."""
    return collect.aggregate(replies, get_runtime().redis).model_dump(mode="json")


@shared_task(bind=True, name=Task.STATS_ALL.value)
def all_hosts(self: Any) -> dict[str, Any]:
    """AggregateStats over every live host (this one included)."""
    rt = get_runtime()
    hosts = sorted({*rt.hosts.live_hosts(), rt.host_name})
    if hosts == [rt.host_name]:
        return merge([host()])
    fan_out(self, host.si(), hosts, merge.s())
