"""Forwarding a task to the host that owns its session (session affinity: a session's
network and relics live on one Docker host, so its work runs there)."""

from __future__ import annotations

from typing import Any, NoReturn

from celery import group

from orchestrator.errors import WrongHost
from orchestrator.state.routing import host_queue


def forward(
    task: Any, exc: WrongHost, args: list[Any], kwargs: dict[str, Any] | None = None
) -> NoReturn:
    """Replace ``task`` by the same call on the owner's queue; the caller's result follows."""
    signature = task.signature(args=args, kwargs=kwargs or {})
    raise task.replace(signature.set(queue=host_queue(exc.owner)))


def fan_out(task: Any, per_host: Any, hosts: list[str], merge: Any) -> NoReturn:
    """Replace ``task`` by ``per_host`` run on each host's queue, then ``merge`` of the replies."""
    steps = [per_host.clone().set(queue=host_queue(host)) for host in hosts]
    raise task.replace(group(steps) | merge)
