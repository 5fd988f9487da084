"""The Docker engine connection and the single point where docker-py errors are translated.

Only modules of this package call docker-py, and every call runs inside
:func:`docker_errors`, so no ``docker.errors`` or ``requests`` type escapes
``orchestrator/``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    DockerError,
    DockerUnavailable,
    ImageBuildFailed,
    ImageNotFound,
)
from orchestrator.settings import Settings

__all__ = ["connect", "docker_errors", "is_not_found"]

_TRANSIENT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    ConnectionError,
    FileNotFoundError,
)


def connect(settings: Settings, environ: dict[str, str] | None = None) -> Any:
    """Open a docker-py client from ``DOCKER_HOST`` & co, sized for the worker's threads.

    Raises:
        DockerUnavailable: the engine does not answer.
    """
    with docker_errors("connect to the Docker engine"):
        kwargs: dict[str, Any] = {
            "timeout": settings.docker_timeout_seconds,
            "max_pool_size": settings.worker_concurrency + 8,
        }
        if environ is not None:
            kwargs["environment"] = environ
        return docker.from_env(**kwargs)


def is_not_found(exc: BaseException) -> bool:
    """True when a docker-py error is a 404 (the object is gone)."""
    return isinstance(exc, docker.errors.NotFound)


@contextlib.contextmanager
def docker_errors(action: str) -> Iterator[None]:
    """Translate docker-py and transport errors raised while doing ``action``.

    Raises:
        DockerUnavailable: the engine could not be reached.
        ContainerNotFound / ImageNotFound: a 404 from the engine.
        ContainerConflict: a 409 (a name already in use).
        ImageBuildFailed: a build error.
        DockerError: any other engine error.
    """
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageNotFound(f"{action}: {_explain(exc)}") from exc
    except docker.errors.NotFound as exc:
        raise ContainerNotFound(f"{action}: {_explain(exc)}") from exc
    except docker.errors.BuildError as exc:
        raise ImageBuildFailed(f"{action}: {exc.msg}") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise ContainerConflict(f"{action}: {_explain(exc)}") from exc
        raise DockerError(f"{action}: {_explain(exc)}") from exc
    except docker.errors.DockerException as exc:
        if isinstance(exc.__cause__ or exc.__context__, _TRANSIENT):
            raise DockerUnavailable(f"{action}: Docker engine unreachable: {exc}") from exc
        raise DockerError(f"{action}: {exc}") from exc
    except _TRANSIENT as exc:
        raise DockerUnavailable(f"{action}: Docker engine unreachable: {exc}") from exc


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)
