"""The single point where docker-py and transport errors become orchestrator errors.

Only :mod:`orchestrator.engine` uses it: every Engine method runs its docker-py calls
inside :func:`docker_errors`, so no ``docker.errors`` or ``requests`` type escapes.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator

import docker
import docker.errors
import requests.exceptions
import urllib3.exceptions

from orchestrator.errors import (
    ContainerConflict,
    ContainerNotFound,
    DockerError,
    DockerUnavailable,
    ImageBuildFailed,
    ImageNotFound,
    OrchestratorError,
)

__all__ = ["docker_errors", "is_read_timeout"]

_TRANSIENT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    # A response cut short because the engine went away mid-stream (logs, stats, wait).
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    ConnectionError,
    FileNotFoundError,
    socket.timeout,
)


def is_read_timeout(exc: BaseException) -> bool:
    """True when ``exc`` is an HTTP *read* timeout (the engine is there, just slow to
    answer), as opposed to a connect timeout or a refused connection (it is not there).

    docker-py over a unix socket reports a read timeout as a ``ConnectionError`` wrapping
    urllib3's ``ReadTimeoutError``; over TCP as ``requests``' ``ReadTimeout``.
    """
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    if isinstance(exc, requests.exceptions.ReadTimeout | urllib3.exceptions.ReadTimeoutError):
        return True
    if isinstance(exc, socket.timeout):
        return True
    for inner in exc.args:
        if isinstance(inner, urllib3.exceptions.MaxRetryError):
            inner = inner.reason
        if isinstance(inner, urllib3.exceptions.ReadTimeoutError):
            return True
    return False


@contextlib.contextmanager
def docker_errors(
    action: str,
    not_found: type[OrchestratorError] | None = None,
    conflict: type[OrchestratorError] = ContainerConflict,
) -> Iterator[None]:
    """Translate docker-py and transport errors raised while doing ``action``.

    Args:
        action: what was being done, first in every message.
        not_found: the error a 404 means here (default ``ContainerNotFound``; an image
            the engine reports as missing is always ``ImageNotFound``).
        conflict: the error a 409 means here (default ``ContainerConflict``, a name in
            use; ``DockerError`` where a 409 is a state, e.g. "container is not running").

    Raises:
        DockerUnavailable: the engine could not be reached.
        ContainerNotFound / NetworkNotFound / VolumeNotFound / ImageNotFound: a 404.
        ContainerConflict: a 409 (a name already in use), unless ``conflict`` says otherwise.
        ImageBuildFailed: a build error.
        DockerError: any other engine error.
    """
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        if not_found is None or not_found is ImageNotFound:
            raise ImageNotFound(f"{action}: {_explain(exc)}") from exc
        raise not_found(f"{action}: {_explain(exc)}") from exc
    except docker.errors.NotFound as exc:
        raise (not_found or ContainerNotFound)(f"{action}: {_explain(exc)}") from exc
    except docker.errors.BuildError as exc:
        raise ImageBuildFailed(f"{action}: {exc.msg}") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise conflict(f"{action}: {_explain(exc)}") from exc
        raise DockerError(f"{action}: {_explain(exc)}") from exc
    except docker.errors.DockerException as exc:
        if isinstance(exc.__cause__ or exc.__context__, _TRANSIENT):
            raise DockerUnavailable(f"{action}: Docker engine unreachable: {exc}") from exc
        raise DockerError(f"{action}: {exc}") from exc
    except _TRANSIENT as exc:
        raise DockerUnavailable(f"{action}: Docker engine unreachable: {exc}") from exc


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)
