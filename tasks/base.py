"""The base of the tasks whose requests carry secret parameters (tool runs, relic starts).

Whoever sent the task (the orchestrator's client, Flower's HTTP API, a plain Celery client
with plain-text secrets and no ``argsrepr``), what the worker reports and stores about it
holds no secret value:

- :class:`RedactingRequest`, the worker's view of a received message, computes
  ``argsrepr`` / ``kwargsrepr`` from the parsed arguments with every ``secret_parameters``
  value replaced by ``***`` (bounded in length), instead of taking the sender's header.
  The ``task-received`` event (Flower's task page), ``inspect active`` and the failures the
  worker's main process records (revoked, worker lost) use them.
- :meth:`SecretTask.before_start` masks the arguments of the running task's context, which
  Celery's extended results store in ``celery-task-meta-<id>`` with every state update
  (progress, retry, failure, success); the real arguments stay in memory for a retry.
- :meth:`SecretTask.apply_async` (retries, forwards to the session's host, Flower's
  ``async-apply``) encrypts plain-text secret values when a key is configured, and always
  sends a masked ``argsrepr``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task
from celery.app.task import Context
from celery.worker.request import Request
from kombu.utils.objects import cached_property

from orchestrator.core import redaction, secrets
from tasks.runtime import get_runtime

__all__ = ["RedactingRequest", "SecretTask", "seal_call"]

#: Where the real arguments of a running task are kept (in memory, on its context).
WIRE_ARGUMENTS = "orchestrator_wire_arguments"
SECRETS_FIELD = "secret_parameters"


class RedactingRequest(Request):
    """A received task whose arguments are shown and stored with secret values masked."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The sender's argsrepr header is not trusted: a plain client sends the secrets in it.
        self._argsrepr, self._kwargsrepr = redaction.call_repr(self._args, self._kwargs)

    @cached_property
    def _context(self) -> Context:
        """The context the main process records revoked and lost tasks with: masked.

        (Celery's ``task_retry_on_worker_lost`` would re-send these masked arguments; the
        orchestrator leaves it off: a lost run is redelivered from the broker instead.)
        """
        context: Context = Request._context.func(self)
        context.args, context.kwargs = redaction.redact_call(context.args, context.kwargs)
        return context

    def info(self, safe: bool = False) -> dict[str, Any]:
        """What ``celery inspect active|reserved`` replies: arguments masked either way."""
        info: dict[str, Any] = super().info(safe)
        if not safe:
            info["args"], info["kwargs"] = redaction.redact_call(self._args, self._kwargs)
        return info


def seal_call(args: Any, kwargs: Any, ring: secrets.Keyring | None) -> tuple[Any, Any]:
    """A call's arguments with every plain secret value encrypted (when there is a key).

    The request may be the first positional argument, the ``request`` keyword, or its
    fields as keywords; a plain-text value is kept as is when there is no key (a plain
    Celery client's choice, honoured for compatibility).
    """
    if ring is None:
        return args, kwargs
    if isinstance(args, list | tuple):
        args = [_seal(item, ring) for item in args]
    if isinstance(kwargs, dict):
        kwargs = _seal(kwargs, ring)
        if isinstance(kwargs.get("request"), dict):
            kwargs = {**kwargs, "request": _seal(kwargs["request"], ring)}
    return args, kwargs


def _seal(value: Any, ring: secrets.Keyring) -> Any:
    if isinstance(value, dict) and isinstance(value.get(SECRETS_FIELD), dict):
        return secrets.seal_payload(value, ring, allow_plaintext=True)
    return value


def _keyring() -> secrets.Keyring | None:
    return secrets.settings_keyring(get_runtime().settings)


class SecretTask(Task):
    """A task whose arguments may hold secret parameters: never stored, shown or re-sent
    in plain text by the worker."""

    Request = "tasks.base:RedactingRequest"

    def before_start(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Mask the arguments Celery stores with every state update of this run.

        The task body gets the real arguments anyway (Celery passes them apart from its
        context); :meth:`retry` re-sends them.
        """
        request = self.request
        if getattr(request, WIRE_ARGUMENTS, None) is None:
            setattr(request, WIRE_ARGUMENTS, (request.args, request.kwargs))
            request.args, request.kwargs = _bounded(
                *redaction.redact_call(request.args, request.kwargs)
            )

    def wire_arguments(self) -> tuple[Any, Any]:
        """The running task's real arguments (as received: secrets encrypted or plain)."""
        request = self.request
        stored = getattr(request, WIRE_ARGUMENTS, None)
        return stored if stored is not None else (request.args, request.kwargs)

    def retry(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        """Celery's retry (the ``DockerUnavailable`` autoretry too), with the real arguments:
        the context holds masked ones. They are encrypted on the way (:meth:`apply_async`)."""
        if args is None and kwargs is None:
            args, kwargs = self.wire_arguments()
        return super().retry(args, kwargs, *rest, **options)

    def apply_async(self, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Send this task: plain secret values encrypted when a key is set, ``argsrepr``
        and ``kwargsrepr`` masked and bounded whatever the caller passed."""
        args, kwargs = seal_call(args, kwargs, _keyring())
        options["argsrepr"], options["kwargsrepr"] = redaction.call_repr(args or [], kwargs or {})
        return super().apply_async(args, kwargs, **options)

    @contextmanager
    def containing_errors(self) -> Iterator[None]:
        """Errors of a call that carries secrets leave without their chained exceptions.

        Celery stores a failure's traceback text, chained exceptions included (a pydantic
        error quotes the request it refused); the worker code masks secret values in the
        messages themselves.
        """
        try:
            yield
        except Exception as exc:
            if redaction.carries_secrets(*self.wire_arguments()):
                redaction.redact_exception(exc, [])
            raise


#: Largest arguments kept in the result backend with a run's state (JSON bytes); bigger
#: ones (a refused 10 MB request, say) are replaced by a note, so they cannot fill Redis.
STORED_ARGUMENTS_MAX_BYTES = 16 * 1024


def _bounded(args: Any, kwargs: Any) -> tuple[Any, Any]:
    """The arguments to store, or a note of their size when they are too big to keep."""
    size = len(json.dumps([args, kwargs], default=str))
    if size <= STORED_ARGUMENTS_MAX_BYTES:
        return args, kwargs
    return [f"<arguments of {size} bytes, not stored>"], {}
