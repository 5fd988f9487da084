"""Relic tasks: start, info, list, stop, remove. Session-scoped calls run on the host that
owns the session; a call that lands elsewhere forwards itself."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.exceptions import Ignore

from orchestrator.errors import InvalidRequest, WrongHost
from orchestrator.models import RelicStartRequest, check_identifier, parse_request
from orchestrator.protocol import Task
from orchestrator.state import routing
from orchestrator.worker import relics
from tasks.forwarding import fan_out, forward
from tasks.runtime import get_runtime
from tasks.tools import RETRY


def _relic_id(value: Any) -> str:
    return check_identifier(value, "relic_id")


@shared_task(bind=True, name=Task.RELICS_START.value, **RETRY)
def start(self: Any, request: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Start a relic and wait until healthy; the relic id is this task's id. Returns RelicInfo."""
    req = parse_request(RelicStartRequest, request if request is not None else fields)
    try:
        info = relics.start_relic_once(get_runtime(), req, self.request.id)
    except relics.StartInProgress:
        raise Ignore() from None
    except WrongHost as exc:
        forward(self, exc, [req.model_dump(mode="json")])
    return info.model_dump(mode="json")


@shared_task(bind=True, name=Task.RELICS_INFO.value, **RETRY)
def info(self: Any, relic_id: str) -> dict[str, Any]:
    """The relic's RelicInfo, status read from the engine."""
    try:
        return relics.relic_info(get_runtime(), _relic_id(relic_id)).model_dump(mode="json")
    except WrongHost as exc:
        forward(self, exc, [relic_id])


@shared_task(bind=True, name=Task.RELICS_STOP.value, **RETRY)
def stop(self: Any, relic_id: str, timeout_seconds: int = 10) -> dict[str, Any]:
    """Stop gracefully, then kill after ``timeout_seconds``. Returns RelicInfo."""
    if not isinstance(timeout_seconds, int) or not 0 <= timeout_seconds <= 600:
        raise InvalidRequest("timeout_seconds: must be an integer from 0 to 600")
    try:
        rt = get_runtime()
        return relics.stop_relic(rt, _relic_id(relic_id), timeout_seconds).model_dump(mode="json")
    except WrongHost as exc:
        forward(self, exc, [relic_id, timeout_seconds])


@shared_task(bind=True, name=Task.RELICS_REMOVE.value, **RETRY)
def remove(self: Any, relic_id: str) -> dict[str, Any]:
    """Remove the relic's container. Returns ``{"relic_id", "removed"}``."""
    try:
        return relics.remove_relic(get_runtime(), _relic_id(relic_id))
    except WrongHost as exc:
        forward(self, exc, [relic_id])


@shared_task(name=Task.RELICS_LIST_HOST.value, **RETRY)
def list_host(session_id: str | None = None) -> list[dict[str, Any]]:
    """Relics on the host that runs this task."""
    return [r.model_dump(mode="json") for r in relics.local_relics(get_runtime(), session_id)]


@shared_task(name=Task.RELICS_MERGE_LISTS.value)
def merge_lists(replies: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Concatenate per-host relic lists, sorted by session and name."""
    merged = [item for reply in replies for item in reply]
    return sorted(merged, key=lambda r: (r["session_id"], r["relic_name"]))


@shared_task(bind=True, name=Task.RELICS_LIST.value)
def list_relics(self: Any, session_id: str | None = None) -> list[dict[str, Any]]:
    """Every relic (of one session when given), from every host that may hold them."""
    if session_id is not None:
        check_identifier(session_id, "session_id")
    rt = get_runtime()
    owner = routing.session_owner(rt.redis, session_id) if session_id else None
    hosts = [owner] if owner else rt.hosts.live_hosts()
    if hosts == [rt.host_name] or not hosts:
        return list_host(session_id)
    fan_out(self, list_host.si(session_id), hosts, merge_lists.s())
