"""Collected files of tool runs kept beside their result (too large to sit in it).

Each is one Redis string, ``orch:file:<execution id>:<n>``, with the result's TTL; the
:class:`~orchestrator.models.FileContent` in the result carries ``ref = "<execution id>:<n>"``
instead of its bytes.
"""

from __future__ import annotations

from typing import Any

from orchestrator.errors import ExecutionNotFound, InvalidRequest
from orchestrator.protocol import validate_id
from orchestrator.state import keys

__all__ = ["store", "load", "parse_ref"]


def store(redis: Any, execution_id: str, index: int, data: bytes, ttl_seconds: int) -> str:
    """Keep ``data`` for ``ttl_seconds``; returns its ``ref``."""
    redis.set(keys.collected_file(execution_id, index), data, ex=ttl_seconds)
    return f"{execution_id}:{index}"


def parse_ref(ref: str) -> tuple[str, int]:
    """``(execution id, index)`` of a ``ref``.

    Raises:
        InvalidRequest: not a ref this module made.
    """
    execution_id, _, index = ref.rpartition(":")
    if not index.isdigit():
        raise InvalidRequest(f"ref: {ref!r} is not a collected file's reference")
    return validate_id("ref", execution_id), int(index)


def load(redis: Any, ref: str) -> bytes:
    """The bytes kept under ``ref``.

    Raises:
        ExecutionNotFound: they expired with the run's result (or never existed).
    """
    execution_id, index = parse_ref(ref)
    data = redis.get(keys.collected_file(execution_id, index))
    if data is None:
        raise ExecutionNotFound(
            f"collected file {ref}: gone (it expires with its run's result, "
            "ORCHESTRATOR_RESULT_TTL_SECONDS)"
        )
    return bytes(data)
