"""Behaviour of :mod:`orchestrator.engine.translate`: docker-py and transport errors become
ours, and a slow answer (a read timeout) is told apart from an engine that is not there."""

from __future__ import annotations

from types import SimpleNamespace

import docker
import docker.errors
import pytest
import requests.exceptions
import urllib3.exceptions

from orchestrator import errors
from orchestrator.engine.docker_engine import DockerEngine
from orchestrator.engine.translate import docker_errors, is_read_timeout


def response(status_code: int, reason: str = "Reason") -> SimpleNamespace:
    """What docker-py's APIError reads from a requests Response."""
    return SimpleNamespace(
        status_code=status_code, reason=reason, url="http+docker://localhost/v1.45/x"
    )


def api_error(cls: type, status: int, explanation: str | None = "engine says no") -> Exception:
    return cls("msg", response=response(status), explanation=explanation)


def docker_exception_from(cause: BaseException, *, explicit: bool) -> docker.errors.DockerException:
    """A DockerException raised while handling ``cause`` (``raise ... from`` or implicitly)."""
    try:
        try:
            raise cause
        except BaseException as inner:
            if explicit:
                raise docker.errors.DockerException(f"wrapped: {inner}") from inner
            raise docker.errors.DockerException(f"wrapped: {inner}")  # noqa: B904
    except docker.errors.DockerException as outer:
        return outer


CASES = [
    pytest.param(
        api_error(docker.errors.ImageNotFound, 404, "No such image: nope:latest"),
        errors.ImageNotFound,
        "pull image: No such image: nope:latest",
        id="image_not_found",
    ),
    pytest.param(
        api_error(docker.errors.NotFound, 404, "No such container: abc"),
        errors.ContainerNotFound,
        "pull image: No such container: abc",
        id="not_found",
    ),
    pytest.param(
        api_error(docker.errors.APIError, 409, 'Conflict. The container name "/x" is in use'),
        errors.ContainerConflict,
        'pull image: Conflict. The container name "/x" is in use',
        id="conflict_409",
    ),
    pytest.param(
        api_error(docker.errors.APIError, 500, "driver failed"),
        errors.DockerError,
        "pull image: driver failed",
        id="server_error_500",
    ),
    pytest.param(
        api_error(docker.errors.APIError, 400, "invalid mount config"),
        errors.DockerError,
        "pull image: invalid mount config",
        id="client_error_400",
    ),
    pytest.param(
        docker.errors.APIError("plain failure"),
        errors.DockerError,
        "pull image: plain failure",
        id="api_error_without_response",
    ),
    pytest.param(
        docker.errors.BuildError("The command '/bin/sh -c false' returned 1", build_log=[]),
        errors.ImageBuildFailed,
        "pull image: The command '/bin/sh -c false' returned 1",
        id="build_error",
    ),
    pytest.param(
        requests.exceptions.ConnectionError("connection refused"),
        errors.DockerUnavailable,
        "pull image: Docker engine unreachable: connection refused",
        id="requests_connection_error",
    ),
    pytest.param(
        requests.exceptions.ReadTimeout("read timed out"),
        errors.DockerUnavailable,
        "pull image: Docker engine unreachable: read timed out",
        id="requests_timeout",
    ),
    pytest.param(
        FileNotFoundError(2, "No such file or directory"),
        errors.DockerUnavailable,
        "pull image: Docker engine unreachable: [Errno 2] No such file or directory",
        id="socket_missing",
    ),
    pytest.param(
        ConnectionRefusedError("refused"),
        errors.DockerUnavailable,
        "pull image: Docker engine unreachable: refused",
        id="builtin_connection_error",
    ),
    pytest.param(
        docker_exception_from(requests.exceptions.ConnectionError("refused"), explicit=True),
        errors.DockerUnavailable,
        "pull image: Docker engine unreachable: wrapped: refused",
        id="docker_exception_caused_by_connection_error",
    ),
    pytest.param(
        docker_exception_from(requests.exceptions.ConnectionError("refused"), explicit=False),
        errors.DockerUnavailable,
        "pull image: Docker engine unreachable: wrapped: refused",
        id="docker_exception_during_connection_error",
    ),
    pytest.param(
        docker_exception_from(ValueError("bad tls config"), explicit=True),
        errors.DockerError,
        "pull image: wrapped: bad tls config",
        id="docker_exception_other_cause",
    ),
    pytest.param(
        docker.errors.DockerException("no cause"),
        errors.DockerError,
        "pull image: no cause",
        id="bare_docker_exception",
    ),
]


@pytest.mark.parametrize(("original", "expected_type", "message"), CASES)
def test_docker_error_is_translated_and_chained(original, expected_type, message):
    with pytest.raises(errors.OrchestratorError) as info:
        with docker_errors("pull image"):
            raise original

    assert type(info.value) is expected_type
    assert str(info.value) == message
    assert info.value.__cause__ is original


@pytest.mark.parametrize(("original", "expected_type", "message"), CASES)
def test_no_docker_py_or_requests_type_escapes(original, expected_type, message):
    with pytest.raises(errors.OrchestratorError) as info:
        with docker_errors("pull image"):
            raise original

    assert not isinstance(info.value, docker.errors.DockerException)
    assert not isinstance(info.value, requests.exceptions.RequestException)
    assert isinstance(info.value, errors.DockerError | errors.NotFound)


def test_api_error_without_explanation_falls_back_to_docker_py_text():
    original = api_error(docker.errors.APIError, 500, explanation=None)

    with pytest.raises(errors.DockerError) as info:
        with docker_errors("start"):
            raise original

    assert str(info.value) == "start: 500 Server Error for http+docker://localhost/v1.45/x: Reason"


def test_unrelated_exceptions_pass_through_untouched():
    with pytest.raises(KeyError):
        with docker_errors("inspect"):
            raise KeyError("not a docker error")


def test_block_without_error_runs_normally():
    done = []
    with docker_errors("noop"):
        done.append(True)

    assert done == [True]


def read_timeout_error() -> urllib3.exceptions.ReadTimeoutError:
    return urllib3.exceptions.ReadTimeoutError(None, "/containers/x/wait", "Read timed out.")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        pytest.param(requests.exceptions.ReadTimeout("read timed out"), True, id="tcp"),
        pytest.param(read_timeout_error(), True, id="urllib3"),
        pytest.param(TimeoutError("timed out"), True, id="socket"),
        pytest.param(
            requests.exceptions.ConnectionError(read_timeout_error()), True, id="unix_socket"
        ),
        pytest.param(
            requests.exceptions.ConnectionError(
                urllib3.exceptions.MaxRetryError(None, "/x", reason=read_timeout_error())
            ),
            True,
            id="unix_socket_after_retries",
        ),
        pytest.param(requests.exceptions.ConnectTimeout("connect timed out"), False, id="connect"),
        pytest.param(
            requests.exceptions.ConnectionError("Connection refused"), False, id="refused"
        ),
        pytest.param(
            requests.exceptions.ConnectionError("Read timed out. (read timeout=0.05)"),
            False,
            id="said_in_words_only",  # the kind of error decides, never its text
        ),
    ],
)
def test_a_read_timeout_is_told_apart_from_an_unreachable_engine(exc, expected):
    assert is_read_timeout(exc) is expected


@pytest.mark.parametrize(
    ("base_url", "reads_proxy_variables"),
    [("unix:///var/run/docker.sock", False), ("tcp://127.0.0.1:2375", True)],
)
def test_only_an_engine_over_tcp_reads_the_proxy_variables(base_url, reads_proxy_variables):
    engine = DockerEngine(docker.DockerClient(base_url=base_url, version="1.41"))
    try:
        assert engine.api.trust_env is reads_proxy_variables
    finally:
        engine.close()


def test_a_local_engine_socket_keeps_one_connection_pool_for_every_url():
    engine = DockerEngine(
        docker.DockerClient(base_url="unix:///var/run/docker.sock", version="1.41")
    )
    try:
        adapter = engine.api.get_adapter(engine.api.base_url)
        first = adapter.get_connection(engine.api._url("/containers/{0}/json", "a"))
        second = adapter.get_connection(engine.api._url("/containers/{0}/wait", "b"))
        assert first is second  # docker-py alone makes one per URL, each connecting anew
    finally:
        engine.close()
