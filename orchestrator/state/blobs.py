"""File bytes passed beside a task's message, through Redis (the claim-check pattern).

A 10 MB file costs a Celery message several JSON and base64 passes on each side; the client
(which talks to Redis anyway) instead stores the raw bytes under ``orch:blob:<random>`` with
a short TTL and sends the key as the file's ``ref``. The worker takes them (read and
delete) on the other side, and does the same for large files it sends back. Only keys of
this exact shape can be named, so a ref can reach no other Redis key.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from orchestrator.errors import InvalidRequest, NotFound
from orchestrator.state import keys

__all__ = ["BLOB_TTL_SECONDS", "is_blob_ref", "put", "take"]

#: How long a blob waits to be taken (a message waiting longer in a queue fails clearly).
BLOB_TTL_SECONDS = 600
_REF = re.compile(r"^blob:[0-9a-f]{32}$")


def is_blob_ref(ref: str | None) -> bool:
    """True for a ref made by :func:`put`."""
    return ref is not None and bool(_REF.fullmatch(ref))


def put(redis: Any, data: bytes, ttl_seconds: int = BLOB_TTL_SECONDS) -> str:
    """Store ``data``; returns its ref."""
    ref = f"blob:{secrets.token_hex(16)}"
    redis.set(keys.PREFIX + ref, data, ex=ttl_seconds)
    return ref


def take(redis: Any, ref: str) -> bytes:
    """The bytes of ``ref``, deleted as they are read.

    Raises:
        InvalidRequest: not a blob ref.
        NotFound: taken already, or expired (``BLOB_TTL_SECONDS``).
    """
    if not is_blob_ref(ref):
        raise InvalidRequest(f"ref: {ref!r} is not a file reference this system made")
    data = redis.getdel(keys.PREFIX + ref)
    if data is None:
        raise NotFound(f"ref: {ref} expired or was used already (it lives {BLOB_TTL_SECONDS} s)")
    return bytes(data)
